"""Randomly initialised models saved locally for the extractor tests (never downloaded).

Not a test module: tests import it (`from tiny_models import save_tiny_clip`). CLIP and AST
get tiny configurations (one layer, small widths) so a forward pass takes milliseconds;
VGGish's architecture has no size knobs, so it is the real one with random weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

CLIP_IMAGE = 32
CLIP_DIM = 16
AST_DIM = 32


def save_tiny_clip(folder: Path, seed: int = 0, dim: int = CLIP_DIM) -> Path:
    """A full CLIP model (text tower too, as published checkpoints are) via save_pretrained;
    `dim`: the image embedding's size (512 as ViT-B/32's for the MGSV-EC layout)."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    config = CLIPConfig(text_config=dict(small, projection_dim=dim),
                        vision_config=dict(small, image_size=CLIP_IMAGE, patch_size=16,
                                           projection_dim=dim),
                        projection_dim=dim)
    CLIPModel(config).save_pretrained(folder)
    return folder


def save_tiny_ast(folder: Path, seed: int = 0, classifier: bool = True,
                  dim: int = AST_DIM) -> Path:
    """An AST audio classifier (as AudioSet checkpoints are), 1024 frames x 128 mel bins;
    `dim`: the embedding's size (768 as AST-base's for the MGSV-EC layout)."""
    from transformers import ASTConfig, ASTForAudioClassification, ASTModel

    torch.manual_seed(seed)
    config = ASTConfig(hidden_size=dim, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, frequency_stride=16, time_stride=16,
                       num_labels=3)
    (ASTForAudioClassification if classifier else ASTModel)(config).save_pretrained(folder)
    return folder


def save_random_vggish(path: Path, seed: int = 0) -> Path:
    """VGGish with random weights under torchaudio's parameter names, biases non-zero."""
    from datamodules.extract.vggish import VGGishNetwork

    torch.manual_seed(seed)
    model = VGGishNetwork()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                # Variance-preserving, so the 128-d output is not all zeros after 9 ReLUs.
                fan_in = m.weight[0].numel()
                m.weight.normal_(0.0, (2.0 / fan_in) ** 0.5)
                m.bias.uniform_(-0.05, 0.05)
    torch.save(model.state_dict(), path)
    return path
