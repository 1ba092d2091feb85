"""CLIP frame features (`vmr extract video --backbone clip_vit_b32`) against transformers run
directly on the same local weights and frames."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from media import make_video
from tiny_models import CLIP_DIM, CLIP_IMAGE, save_tiny_clip

from datamodules.errors import DataError
from datamodules.extract.clip_video import load_clip_encoder, resize_and_crop
from datamodules.extract.decode import decode_video_frames
from lightning_app.cli import main


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


def _reference(clip_dir, frames: torch.Tensor) -> np.ndarray:
    """transformers' own preprocessing and model, as a user would call them."""
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    processor = CLIPImageProcessor(size={"shortest_edge": CLIP_IMAGE},
                                   crop_size={"height": CLIP_IMAGE, "width": CLIP_IMAGE})
    model = CLIPVisionModelWithProjection.from_pretrained(clip_dir, local_files_only=True)
    pixels = processor(images=list(frames), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return model.eval()(pixel_values=pixels).image_embeds.numpy()


def test_features_equal_transformers_on_the_same_weights_and_frames(clip_dir):
    frames = torch.randint(0, 256, (5, 3, 48, 80), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    encoder = load_clip_encoder(clip_dir, device="cpu")
    ours = encoder.encode(frames, batch_size=2).numpy()
    assert ours.shape == (5, CLIP_DIM) and encoder.dim == CLIP_DIM
    np.testing.assert_allclose(ours, _reference(clip_dir, frames), rtol=1e-5, atol=1e-5)
    # The worker's uint8 resize + crop is the processor's (landscape and portrait frames).
    assert resize_and_crop(frames, CLIP_IMAGE).shape == (5, 3, CLIP_IMAGE, CLIP_IMAGE)
    tall = frames.transpose(2, 3).contiguous()
    np.testing.assert_allclose(encoder.encode(tall).numpy(), _reference(clip_dir, tall),
                               rtol=1e-5, atol=1e-5)


def test_extract_video_cli_writes_one_row_per_second(clip_dir, tmp_path, capsys):
    src = tmp_path / "videos"
    src.mkdir()
    make_video(src / "a.mp4", seconds=3.0, size=(80, 48))
    make_video(src / "b.mp4", seconds=2.0, size=(48, 64), color="blue")
    out = tmp_path / "out"
    assert main(["extract", "video", "--input", str(src), "--out", str(out),
                 "--backbone", "clip_vit_b32", "--weights", str(clip_dir), "--workers", "0",
                 "--device", "cpu"]) == 0
    assert "video clip_vit_b32: 2 done" in capsys.readouterr().out
    a = np.load(out / "a.npy")
    assert a.shape == (3, CLIP_DIM) and a.dtype == np.float32
    frames = decode_video_frames(src / "a.mp4", fps=1.0)
    np.testing.assert_allclose(a, _reference(clip_dir, frames), rtol=1e-4, atol=1e-4)
    assert np.load(out / "b.npy").shape == (2, CLIP_DIM)
    assert not (out / "pca.npz").exists()  # CLIP features are kept as they are


def test_weights_that_do_not_fit_give_one_line(clip_dir, tmp_path):
    path = tmp_path / "partial"
    path.mkdir()
    shutil.copy(clip_dir / "config.json", path / "config.json")
    torch.save({"vision_model.post_layernorm.weight": torch.zeros(32)},
               path / "pytorch_model.bin")
    with pytest.raises(DataError, match=r"partial: does not fit CLIP's image tower: \d+ missing"):
        load_clip_encoder(path, device="cpu")
    with pytest.raises(DataError, match=r"nowhere: weights file or folder not found"):
        load_clip_encoder(tmp_path / "nowhere", device="cpu")


@pytest.mark.slow
def test_a_single_state_dict_file_gets_vit_b32_sizes(tmp_path):
    """No config.json: ViT-B/32 (224 px, patch 32, 512-d), from a DDP-prefixed state dict."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    reference = CLIPVisionModelWithProjection(CLIPVisionConfig()).eval()
    torch.save({f"module.{k}": v for k, v in reference.state_dict().items()},
               tmp_path / "vit_b32.pth")
    encoder = load_clip_encoder(tmp_path / "vit_b32.pth", device="cpu")
    frames = torch.randint(0, 256, (2, 3, 240, 320), dtype=torch.uint8)
    assert (encoder.image_size, encoder.dim) == (224, 512)
    with torch.no_grad():
        expected = reference(pixel_values=encoder.pixel_values(frames)).image_embeds
    np.testing.assert_allclose(encoder.encode(frames).numpy(), expected.numpy(), atol=1e-5)
