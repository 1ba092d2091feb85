"""datamodules.extract.video_backbone: local weights -> [T, 2048] frame features.

Random weights only (nothing is downloaded); small images keep the CNNs fast on a CPU.
"""

from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn.functional as F
import torchvision

from datamodules.errors import DataError
from datamodules.extract.video_backbone import (
    BACKBONES,
    DEFAULT_IMAGE_SIZE,
    FEATURE_DIM,
    load_frame_encoder,
)

SIZE = 64  # resnet50 test resolution (the pooled feature is 2048-d at any size)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: these tiny forward passes gain nothing from more, and on a shared
    2-core machine a busy neighbour makes OpenMP's spinning threads several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _randomise_batchnorm(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial running statistics, so eval-mode BatchNorm is not the identity."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    _randomise_batchnorm(model, 1)
    path = tmp_path_factory.mktemp("w") / "resnet50.pth"
    torch.save(model.state_dict(), path)
    return path, model.state_dict()


@pytest.fixture(scope="module")
def inception_state():
    torch.manual_seed(2)
    model = torchvision.models.inception_v3(weights=None, init_weights=False, aux_logits=True)
    for m in model.modules():  # PyTorch's default init makes the features vanish (~1e-8)
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    _randomise_batchnorm(model, 3)
    return model.state_dict()


def _frames(t: int, h: int = 50, w: int = 70, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (t, 3, h, w), dtype=torch.uint8, generator=g)


def _reference(state: dict, frames: torch.Tensor, size: int) -> torch.Tensor:
    """Independent computation: torchvision resnet50, fc removed, resize + normalise by hand."""
    model = torchvision.models.resnet50(weights=None)
    model.load_state_dict(state)
    model.fc = torch.nn.Identity()
    model.eval()
    x = frames.float() / 255.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        return model((x - mean) / std)


def test_constants():
    assert BACKBONES == ("inception_v3", "resnet50", "clip_vit_b32")
    assert FEATURE_DIM == 2048
    assert DEFAULT_IMAGE_SIZE == {"inception_v3": 299, "resnet50": 224}


def test_resnet50_matches_independent_computation(resnet):
    path, state = resnet
    frames = _frames(5)
    enc = load_frame_encoder("resnet50", path, device="cpu", image_size=SIZE)
    got = enc.encode(frames, batch_size=5)
    assert got.shape == (5, FEATURE_DIM) and got.dtype == torch.float32
    assert got.device.type == "cpu"
    want = _reference(state, frames, SIZE)
    assert want.abs().max() > 1e-3  # not a degenerate all-zero network
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for bs in (1, 3, 64):  # the batch size changes nothing
        torch.testing.assert_close(enc.encode(frames, batch_size=bs), got, rtol=1e-5, atol=1e-5)
    assert enc.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert enc.image_size == SIZE and not enc.model.training


def test_resnet50_checkpoint_wrappers_and_optional_fc(resnet, tmp_path):
    path, state = resnet
    frames = _frames(2, seed=3)
    want = load_frame_encoder("resnet50", path, device="cpu", image_size=SIZE).encode(frames)
    no_fc = {k: v for k, v in state.items() if not k.startswith("fc.")}
    old = {k: v for k, v in no_fc.items() if not k.endswith("num_batches_tracked")}
    variants = {
        "ddp": {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3},
        "model": {"model": no_fc},
        "old": old,  # old torchvision files have no BatchNorm counters
    }
    for name, obj in variants.items():
        p = tmp_path / f"{name}.pt"
        torch.save(obj, p)
        got = load_frame_encoder("resnet50", p, device="cpu", image_size=SIZE).encode(frames)
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)


def test_already_sized_frames_are_not_resampled(resnet):
    path, state = resnet
    frames = _frames(2, SIZE, SIZE, seed=4)
    got = load_frame_encoder("resnet50", path, device="cpu", image_size=SIZE).encode(frames)
    torch.testing.assert_close(got, _reference(state, frames, SIZE), rtol=1e-5, atol=1e-5)


def test_empty_input(resnet):
    enc = load_frame_encoder("resnet50", resnet[0], device="cpu", image_size=SIZE)
    out = enc.encode(torch.zeros((0, 3, 10, 10), dtype=torch.uint8))
    assert out.shape == (0, FEATURE_DIM) and out.dtype == torch.float32


def test_bad_frames_rejected(resnet):
    enc = load_frame_encoder("resnet50", resnet[0], device="cpu", image_size=SIZE)
    with pytest.raises(ValueError, match=r"uint8 \[T, 3, H, W\]"):
        enc.encode(torch.zeros((2, 3, 10, 10)))
    with pytest.raises(ValueError, match=r"uint8 \[T, 3, H, W\]"):
        enc.encode(torch.zeros((2, 10, 10, 3), dtype=torch.uint8))


@pytest.mark.parametrize("aux", [True, False])
def test_inception_with_and_without_aux_logits(inception_state, tmp_path, aux):
    state = inception_state if aux else {
        k: v for k, v in inception_state.items() if not k.startswith("AuxLogits.")}
    assert any(k.startswith("AuxLogits.") for k in state) == aux
    path = tmp_path / "inception.pth"
    torch.save(state, path)
    enc = load_frame_encoder("inception_v3", path, device="cpu", image_size=75)  # its minimum
    frames = _frames(2, 40, 90, seed=5)
    got = enc.encode(frames)
    assert got.shape == (2, FEATURE_DIM) and got.dtype == torch.float32
    # torchvision's pretrained pipeline: ImageNet normalisation, then transform_input.
    model = torchvision.models.inception_v3(weights=None, init_weights=False, aux_logits=True,
                                            transform_input=True)
    model.load_state_dict(inception_state)
    model.fc = torch.nn.Identity()
    x = F.interpolate(frames.float() / 255, size=(75, 75), mode="bilinear", antialias=True)
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        want = model.eval()(x)
    assert want.abs().max() > 1e-2  # not a vanishing network
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ----- errors: one line that names the file and the reason


def _error(backbone: str, path, **kw) -> str:
    with pytest.raises(DataError) as info:
        load_frame_encoder(backbone, path, device="cpu", **kw)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_missing_file(tmp_path):
    p = tmp_path / "nope.pth"
    assert _error("resnet50", p) == f"{p}: weights file not found"


def test_text_file(tmp_path):
    p = tmp_path / "weights.pth"
    p.write_text("these are not weights\n")
    assert _error("resnet50", p) == (f"{p}: not a loadable torch weights file "
                                     "(not a torch.save file)")


def test_truncated_file(resnet, tmp_path):
    p = tmp_path / "cut.pth"
    p.write_bytes(resnet[0].read_bytes()[:100_000])
    assert _error("resnet50", p) == (f"{p}: not a loadable torch weights file "
                                     "(corrupt or truncated archive)")


def test_not_a_state_dict(tmp_path):
    p = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], p)
    assert _error("resnet50", p).startswith(f"{p}: not a state dict (")
    torch.save({"epoch": 3, "net": {"a": torch.zeros(1)}}, p)
    assert _error("resnet50", p).endswith("got a dict with keys 'epoch', 'net')")


def test_resnet18_for_resnet50(tmp_path):
    p = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), p)
    msg = _error("resnet50", p)
    assert msg.startswith(f"{p}: does not fit torchvision resnet50: ")
    # resnet18's basic blocks lack conv3/bn3 and it has fewer blocks; all its keys exist in 50.
    assert msg == (f"{p}: does not fit torchvision resnet50: 165 missing keys (e.g. "
                   "layer1.0.conv3.weight, layer1.0.bn3.weight, layer1.0.bn3.bias), "
                   "0 unexpected keys")


def test_extra_keys_named(resnet, tmp_path):
    p = tmp_path / "extra.pth"
    torch.save({**resnet[1], "head.weight": torch.zeros(3)}, p)
    assert _error("resnet50", p) == (f"{p}: does not fit torchvision resnet50: 0 missing keys, "
                                     "1 unexpected keys (e.g. head.weight)")


def test_shape_mismatch_named(resnet, tmp_path):
    state = dict(resnet[1])
    state["layer2.0.conv1.weight"] = state["layer2.0.conv1.weight"].reshape(64, 512, 1, 1)
    p = tmp_path / "reshaped.pth"
    torch.save(state, p)
    assert _error("resnet50", p) == (
        f"{p}: does not fit torchvision resnet50: layer2.0.conv1.weight has shape "
        "[64, 512, 1, 1] in the file, the model expects [128, 256, 1, 1]")


def test_unknown_backbone(resnet):
    assert _error("vgg16", resnet[0]) == (
        "unknown video backbone 'vgg16'; choices: inception_v3, resnet50, clip_vit_b32")


def test_image_size_too_small(tmp_path):
    assert _error("inception_v3", tmp_path / "x.pth", image_size=74) == (
        "image_size=74 is too small for inception_v3 (at least 75)")
