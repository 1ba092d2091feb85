"""Compatible and multi-positive recall: brute-force references and hand-built truth."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lightning_app.callbacks.recall_at_k import RecallAtK
from lightning_app.retrieval import metrics_from_ranks, paired_retrieval_ranks
from lightning_app.truth_metrics import label_ranks, paired_label_ranks, shared_key_labels
from lightning_app.truth_recall import TruthRecall


def reference_ranks(q: np.ndarray, g: np.ndarray, q_lab: np.ndarray, g_lab: np.ndarray
                    ) -> np.ndarray:
    """Sort each query's gallery by score, other-label items first among ties (pessimistic);
    the rank is the position of the first same-label item."""
    out = []
    for i in range(len(q)):
        scores = g @ q[i]
        same = g_lab == q_lab[i]
        order = np.lexsort((same, -scores))  # by score descending, then False before True
        out.append(int(np.flatnonzero(same[order])[0]) + 1)
    return np.array(out)


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_label_ranks_match_the_argsort_reference_with_ties(chunk):
    rng = np.random.default_rng(0)
    # Coarse embeddings make many exact ties, so the tie rule is exercised.
    q = rng.integers(-2, 3, (40, 4)).astype(np.float32)
    g = rng.integers(-2, 3, (60, 4)).astype(np.float32)
    g_lab = rng.integers(0, 7, 60)
    q_lab = g_lab[rng.integers(0, 60, 40)]  # every query label occurs in the gallery
    got = label_ranks(torch.from_numpy(q), torch.from_numpy(g), torch.from_numpy(q_lab),
                      torch.from_numpy(g_lab), chunk_size=chunk)
    np.testing.assert_array_equal(got.numpy(), reference_ranks(q, g, q_lab, g_lab))


def test_label_ranks_errors():
    q, g = torch.eye(2), torch.eye(2)
    with pytest.raises(ValueError, match=r"query 1 \(label 5\) has no gallery item"):
        label_ranks(q, g, torch.tensor([0, 5]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="gallery labels must be a 1-D tensor with 2 entries"):
        label_ranks(q, g, torch.tensor([0, 1]), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="query labels must be integers"):
        label_ranks(q, g, torch.tensor([0.0, 1.0]), torch.tensor([0, 1]))


# Hand-built: four pairs, unit vectors along axes. Styles: pairs 0, 1 style A; 2, 3 style B.
# Video i is closest to music (i + 1) % 4, then to its own music i.
ANGLES = np.deg2rad([0, 90, 180, 270])
MUSIC = np.stack([np.cos(ANGLES), np.sin(ANGLES)], 1).astype(np.float32)
VIDEO = np.stack([np.cos(ANGLES + 1.0), np.sin(ANGLES + 1.0)], 1).astype(np.float32)


def test_paired_label_ranks_hand_built():
    keys = torch.arange(4)
    style = torch.tensor([0, 0, 1, 1])
    ranks = paired_label_ranks(torch.from_numpy(VIDEO), torch.from_numpy(MUSIC), keys, keys,
                               style, style)
    exact = paired_retrieval_ranks(torch.from_numpy(VIDEO), torch.from_numpy(MUSIC), keys, keys)
    # Video 0's nearest music is 1 (same style): compatible rank 1, exact rank 2. Video 1's
    # nearest is music 2 (other style), then music 1 (its own): rank 2 either way.
    assert exact["v2m"].tolist() == [2, 2, 2, 2]
    assert ranks["v2m"].tolist() == [1, 2, 1, 2]
    # Music 1's nearest video is video 0 (33 degrees away, same style): rank 1.
    assert ranks["m2v"].tolist() == [2, 1, 2, 1]


def test_paired_label_ranks_deduplicate_like_exact_recall():
    # Rows 0 and 1 name one song (music key 7): one gallery item, the first row's embedding.
    video = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    music = torch.tensor([[0.0, 1.0], [5.0, 5.0], [-1.0, 0.0]])
    v_keys, m_keys = torch.tensor([0, 1, 2]), torch.tensor([7, 7, 3])
    labels = torch.tensor([0, 0, 1])
    got = paired_label_ranks(video, music, v_keys, m_keys, labels, labels)
    exact = paired_retrieval_ranks(video, music, v_keys, m_keys)
    assert got["v2m"].numel() == 3 and got["m2v"].numel() == 2
    # Labels that equal the pairing reproduce exact recall.
    for d in ("v2m", "m2v"):
        assert got[d].tolist() == exact[d].tolist()


def test_shared_key_labels_join_videos_of_one_song():
    labels = shared_key_labels(torch.tensor([0, 1, 2, 3]), torch.tensor([5, 5, 6, 7]))
    assert labels[0] == labels[1] and len(set(labels.tolist())) == 3


# ----------------------------------------------------------------------- TruthRecall extra


def _truth_file(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return path


def _rows(video, music, video_keys, music_keys):
    return {"video": torch.as_tensor(video), "music": torch.as_tensor(music),
            "video_key": torch.as_tensor(video_keys), "music_key": torch.as_tensor(music_keys),
            "index": torch.arange(len(video))}


def test_truth_recall_hand_built(tmp_path):
    ids = ["a", "b", "c", "d"]
    # HIMV-style naming: music id = pair id. Pair b takes a's song (shared song); d is a near
    # copy of c (group c). Styles: a, b: 0; c, d: 1.
    truth = _truth_file(tmp_path / "truth.tsv", [
        {"id": "a", "style": 0, "true_music_id": "a", "written_music_id": "a", "group": "a"},
        {"id": "b", "style": 0, "true_music_id": "a", "written_music_id": "a", "group": "a"},
        {"id": "c", "style": 1, "true_music_id": "c", "written_music_id": "c", "group": "c"},
        {"id": "d", "style": 1, "true_music_id": "d", "written_music_id": "d", "group": "c"},
    ])
    dataset = SimpleNamespace(ids=ids, music_ids=ids)
    extra = TruthRecall(SimpleNamespace(datasets={"test": dataset}), ks=(1, 2), truth_path=truth)
    keys = torch.arange(4)
    out = extra("test", _rows(VIDEO, MUSIC, keys, keys))
    # Style and group coincide here, so compat == multi == the hand-computed ranks above.
    for name in ("compat", "multi"):
        assert out[f"test/v2m/{name}/R@1"] == 0.5 and out[f"test/v2m/{name}/R@2"] == 1.0
        assert out[f"test/m2v/{name}/MdR"] == 1.5
    assert set(out) == {f"test/{d}/{n}/{m}" for d in ("v2m", "m2v") for n in ("compat", "multi")
                        for m in ("R@1", "R@2", "MdR", "MnR")}
    assert extra("val", _rows(VIDEO, MUSIC, keys, keys)) == {}  # no such dataset


def test_truth_recall_groups_differ_from_styles(tmp_path):
    rng = np.random.default_rng(3)
    n = 30
    ids = [f"p{i}" for i in range(n)]
    style = rng.integers(0, 3, n)
    group = np.arange(n)
    group[1::3] = group[0::3][: len(group[1::3])]  # pairs 3k and 3k+1 share a group
    style[1::3] = style[0::3][: len(style[1::3])]
    rows = [{"id": ids[i], "style": int(style[i]), "true_music_id": ids[i],
             "written_music_id": ids[i], "group": ids[group[i]]} for i in range(n)]
    truth = _truth_file(tmp_path / "truth.tsv", rows)
    # The store lists pairs in another order than the truth file.
    order = rng.permutation(n)
    dataset = SimpleNamespace(ids=[ids[i] for i in order], music_ids=[ids[i] for i in order])
    video = rng.normal(size=(n, 5)).astype(np.float32)
    music = rng.normal(size=(n, 5)).astype(np.float32)
    keys = torch.arange(n)
    extra = TruthRecall(SimpleNamespace(datasets={"val": dataset}), ks=(1, 5), truth_path=truth)
    out = extra("val", _rows(video, music, keys, keys))
    for name, lab in (("compat", style), ("multi", group)):
        row_lab = lab[order]
        for d, (q, g) in (("v2m", (video, music)), ("m2v", (music, video))):
            ref = metrics_from_ranks(torch.from_numpy(reference_ranks(q, g, row_lab, row_lab)),
                                     (1, 5))
            for k, v in ref.items():
                assert out[f"val/{d}/{name}/{k}"] == pytest.approx(v), (name, d, k)


def test_truth_recall_without_truth_uses_shared_music_ids():
    ids = ["v0", "v1", "v2"]
    dataset = SimpleNamespace(ids=ids, music_ids=["s0", "s0", "s1"])
    extra = TruthRecall(SimpleNamespace(datasets={"test": dataset}), ks=(1,))
    video = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    music = torch.tensor([[0.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])
    out = extra("test", _rows(video, music, [0, 1, 2], [0, 0, 1]))
    exact = paired_retrieval_ranks(video, music, torch.tensor([0, 1, 2]), torch.tensor([0, 0, 1]))
    assert out["test/m2v/multi/R@1"] == metrics_from_ranks(exact["m2v"], (1,))["R@1"]
    assert "test/v2m/compat/R@1" not in out
    # Every music id used once: nothing beyond exact recall, so nothing logged.
    assert extra("test", _rows(video, music, [0, 1, 2], [0, 1, 2])) == {}


def test_truth_recall_warns_and_skips_ids_without_truth(tmp_path, caplog):
    truth = _truth_file(tmp_path / "truth.tsv", [
        {"id": "a", "style": 0, "true_music_id": "a", "written_music_id": "a", "group": "a"}])
    dataset = SimpleNamespace(ids=["a", "zz"], music_ids=["a", "zz"])
    extra = TruthRecall(SimpleNamespace(datasets={"test": dataset}), truth_path=truth)
    with caplog.at_level("WARNING", logger="vmr"):
        out = extra("test", _rows(torch.eye(2), torch.eye(2), [0, 1], [0, 1]))
    assert out == {} and "no truth for 1 evaluated ids (e.g. zz)" in caplog.text


def test_recall_callback_merges_extra_metrics():
    calls = []

    def extra(stage, rows):
        calls.append((stage, sorted(rows)))
        return {f"{stage}/v2m/extra/R@1": 0.25}

    cb = RecallAtK(ks=(1,), extras=[extra])
    keys = torch.arange(4)
    cb._outputs = [{"video": torch.from_numpy(VIDEO), "music": torch.from_numpy(MUSIC),
                    "index": keys, "video_key": keys, "music_key": keys}]
    logged = {}
    module = SimpleNamespace(all_gather=lambda x: x, log_dict=lambda m, **_: logged.update(m))
    trainer = SimpleNamespace(world_size=1, sanity_checking=True, is_global_zero=True)
    cb._finish(trainer, module, "val")
    assert calls == [("val", ["index", "music", "music_key", "video", "video_key"])]
    assert cb.last_metrics["val"]["val/v2m/extra/R@1"] == 0.25 == logged["val/v2m/extra/R@1"]
    assert cb.last_metrics["val"]["val/v2m/R@1"] == 0.0


# ------------------------------------------------------------------------- train() end to end


def test_metrics_json_has_compatible_and_multi_positive_recall(tmp_path):
    from lightning_app.config import load_config
    from lightning_app.train import train

    cfg = load_config("quickstart", [
        f"data.root={tmp_path / 'data'}", f"run_dir={tmp_path / 'runs'}",
        "data.synthetic.pairs=400", "data.synthetic.val=100", "data.synthetic.test=100",
        "data.synthetic.shared_songs=0.2", "data.synthetic.near_duplicates=0.1",
        "data.batch_size=100", "data.eval_batch_size=100", "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false", "logger.wandb.mode=disabled",
        "loss.structure_k=20", "eval.ks=[1,10]",
    ])
    metrics, objects = train(cfg)
    saved = json.loads((objects["run_dir"] / "metrics.json").read_text())
    for d in ("v2m", "m2v"):
        for name in ("compat", "multi"):
            for m in ("R@1", "R@10", "MdR"):
                assert saved[f"test/{d}/{name}/{m}"] == metrics[f"test/{d}/{name}/{m}"]
        # More items count as hits: never below exact recall, compatible above multi.
        assert saved[f"test/{d}/multi/R@10"] >= saved[f"test/{d}/R@10"]
        assert saved[f"test/{d}/compat/R@10"] >= saved[f"test/{d}/multi/R@10"]
        # Shared songs and near copies are separate HIMV music ids: exact recall counts
        # them as misses, multi-positive recall does not.
        assert saved[f"test/{d}/multi/R@1"] > saved[f"test/{d}/R@1"]
    assert "val/v2m/compat/R@10" in objects["recall"].last_metrics["val"]
