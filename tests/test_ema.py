"""ema.*: checkpoints hold, and evaluation uses, the moving average of the weights.

The weights after every optimizer step are recorded, and the average is recomputed here in
float64 (avg = w at step start_step + 1, then avg <- d avg + (1 - d) w; before that it is the
weights themselves). Test metrics are recomputed by brute force from the recomputed average.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_app.callbacks import RecallAtK
from lightning_app.config import load_config
from lightning_app.train import train

DECAY, START = 0.8, 2


def config(tmp_path, *extra):
    return load_config("quickstart", [
        f"data.root={tmp_path.parent / 'ema_data'}", f"run_dir={tmp_path / 'runs'}",
        "data.synthetic.pairs=300", "data.synthetic.val=50", "data.synthetic.test=50",
        "data.batch_size=50", "data.eval_batch_size=50", "model.vmnet.music_hidden=[64]",
        "model.vmnet.video_hidden=[64]", "model.vmnet.embed_dim=32", "loss.structure_k=20",
        "loss.num_negatives=20", "trainer.max_epochs=2", "trainer.enable_progress_bar=false",
        "logger.wandb.mode=disabled", "ema.enabled=true", f"ema.decay={DECAY}",
        f"ema.start_step={START}", *extra,
    ])


def load(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def independent_ema(steps: list[dict[str, np.ndarray]], upto: int) -> dict[str, np.ndarray]:
    """The average after optimizer step `upto` (1-based) from the recorded weights."""
    avg = None
    for step in range(1, upto + 1):
        w = steps[step - 1]
        if step <= START:
            continue
        avg = dict(w) if avg is None else {k: DECAY * avg[k] + (1 - DECAY) * w[k] for k in w}
    return dict(steps[upto - 1]) if avg is None else avg


def brute_force_metrics(video: np.ndarray, music: np.ndarray) -> dict[str, float]:
    out = {}
    for direction, (q, g) in {"v2m": (video, music), "m2v": (music, video)}.items():
        s = q @ g.T
        pos = np.diag(s)[:, None]
        others = ~np.eye(len(s), dtype=bool)
        ranks = 1 + ((s >= pos) & others).sum(1)  # ties with negatives count against
        for k in (1, 5, 10):
            out[f"test/{direction}/R@{k}"] = float((ranks <= k).mean())
        out[f"test/{direction}/MdR"] = float(np.median(ranks))
        out[f"test/{direction}/MnR"] = float(ranks.mean())
    return out


@pytest.fixture
def record_steps(monkeypatch):
    steps: list[dict[str, np.ndarray]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        steps.append({k: v.detach().double().numpy().copy()
                      for k, v in pl_module.state_dict().items() if v.is_floating_point()})

    monkeypatch.setattr(RecallAtK, "on_train_batch_end", on_train_batch_end, raising=False)
    return steps


def assert_state_close(state: dict, want: dict[str, np.ndarray]) -> None:
    assert want.keys() <= state.keys()
    for k, v in want.items():
        np.testing.assert_allclose(state[k].double().numpy(), v, rtol=0, atol=2e-6, err_msg=k)


def test_checkpoints_and_test_metrics_use_the_average(tmp_path, record_steps):
    torch.manual_seed(0)
    metrics, objects = train(config(tmp_path))
    steps, run_dir = record_steps, objects["run_dir"]
    assert len(steps) == 8 and objects["trainer"].global_step == 8
    last = load(run_dir / "checkpoints" / "last.ckpt")
    assert_state_close(last["state_dict"], independent_ema(steps, 8))
    assert_state_close(last["current_model_state"], steps[-1])  # training weights, to resume
    assert not np.allclose(independent_ema(steps, 8)["music_net.0.weight"],
                           steps[-1]["music_net.0.weight"], atol=1e-4)

    best_path = objects["trainer"].checkpoint_callback.best_model_path
    best = load(best_path)
    average = independent_ema(steps, best["global_step"])
    assert_state_close(best["state_dict"], average)

    # The test ran on the best checkpoint's average: recompute its metrics by brute force.
    model, dm = objects["model"], objects["datamodule"]
    model.load_state_dict({k: torch.as_tensor(average[k], dtype=t.dtype) if k in average else t
                           for k, t in model.state_dict().items()})
    model.eval()
    videos, musics = [], []
    with torch.no_grad():
        for batch in dm.test_dataloader():
            videos.append(model.encode_video(batch).double().numpy())
            musics.append(model.encode_music(batch).double().numpy())
    want = brute_force_metrics(np.concatenate(videos), np.concatenate(musics))
    for key, value in want.items():
        assert metrics[key] == pytest.approx(value, abs=1e-12), key


@pytest.mark.slow  # three runs
def test_resume_continues_the_same_average(tmp_path, record_steps):
    torch.manual_seed(0)
    _, straight = train(config(tmp_path / "a"))
    torch.manual_seed(0)
    _, first = train(config(tmp_path / "b", "trainer.max_epochs=1"))
    torch.manual_seed(0)
    _, resumed = train(config(tmp_path / "b", f"resume={first['run_dir']}"))
    assert resumed["run_dir"] == first["run_dir"]
    a = load(straight["run_dir"] / "checkpoints" / "last.ckpt")
    b = load(resumed["run_dir"] / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 8
    for part in ("state_dict", "current_model_state"):
        for k, v in a[part].items():
            torch.testing.assert_close(b[part][k], v, rtol=0, atol=0, msg=f"{part}: {k}")
    assert int(b["averaging_state"]["n_averaged"]) == 8 - START
