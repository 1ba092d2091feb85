"""`vmr eval`: a trained checkpoint scored again, on other splits, data and random galleries."""

from __future__ import annotations

import json
import shutil
import statistics

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from lightning_app.cli import main
from lightning_app.config import to_dict
from lightning_app.evaluate import evaluate
from lightning_app.galleries import draw_galleries
from lightning_app.retrieval import metrics_from_ranks, paired_retrieval_ranks


@pytest.fixture(scope="module")
def run(tiny_run):
    saved = json.loads((tiny_run["run"] / "metrics.json").read_text())
    return {"cfg": tiny_run["cfg"], "run": tiny_run["run"], "saved": saved,
            "ckpt": saved["best_checkpoint"], "dataset": tiny_run["datasets"]}


def _ranks(folder, direction):
    return torch.tensor(pq.read_table(folder / f"per_query_{direction}.parquet")
                        .column("rank").to_pylist())


def test_without_overrides_it_equals_the_training_test_exactly(run):
    metrics, out = evaluate(run["ckpt"])
    assert out.parent == run["run"] / "eval"
    saved = run["saved"]
    test_keys = sorted(k for k in saved if k.startswith("test/"))
    assert sorted(metrics) == test_keys and "test/loss" in test_keys
    for key in test_keys:
        assert metrics[key] == saved[key], key  # the same floats, not approximately
    written = json.loads((out / "metrics.json").read_text())
    assert all(written[k] == saved[k] for k in test_keys)
    assert written["split"] == "test" and written["checkpoint"] == run["ckpt"]
    assert yaml.safe_load((out / "config.yaml").read_text()) == to_dict(run["cfg"])
    for direction in ("v2m", "m2v"):
        recomputed = metrics_from_ranks(_ranks(out, direction), run["cfg"].eval.ks)
        assert recomputed["R@10"] == saved[f"test/{direction}/R@10"]
    assert (out / "report.html").is_file()
    assert not (out / "embeddings_video.npy").exists()


def test_cli_other_split_topk_and_embeddings(run, tmp_path, capsys):
    out = tmp_path / "val_eval"
    assert main(["eval", run["ckpt"], "eval.split=val", "eval.topk=3",
                 "eval.save_embeddings=true", "--out", str(out)]) == 0
    assert "val metrics" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "val" and metrics["val/gallery_size"] == 100
    assert not any(k.startswith("test/") for k in metrics)
    table = pq.read_table(out / "per_query_v2m.parquet")
    assert sorted(table.column("query_id").to_pylist()) == sorted(run["dataset"]["val"].ids)
    assert all(len(x) == 3 for x in table.column("topk_ids").to_pylist())
    # The saved embeddings give back the file's ranks (and so the metrics).
    video = torch.from_numpy(np.load(out / "embeddings_video.npy"))
    music = torch.from_numpy(np.load(out / "embeddings_music.npy"))
    ids = json.loads((out / "embeddings_ids.json").read_text())
    assert ids["video_id"] == run["dataset"]["val"].ids
    keys = [torch.from_numpy(np.unique(ids[s], return_inverse=True)[1])
            for s in ("video_id", "music_id")]
    ranks = paired_retrieval_ranks(video, music, *keys)
    by_id = dict(zip(table.column("query_id").to_pylist(), table.column("rank").to_pylist()))
    assert [by_id[i] for i in sorted(ids["video_id"])] == ranks["v2m"].tolist()
    assert metrics_from_ranks(ranks["v2m"], [10])["R@10"] == metrics["val/v2m/R@10"]


def test_random_galleries_report_mean_and_std_over_draws(run, tmp_path):
    metrics, out = evaluate(run["ckpt"], ["eval.gallery_size=40", "eval.draws=3", "seed=5"],
                            out=tmp_path / "draws")
    assert metrics["test/gallery_size"] == 40
    test_ids = run["dataset"]["test"].ids
    for direction in ("v2m", "m2v"):
        table = pq.read_table(out / f"per_query_{direction}.parquet")
        draws = np.array(table.column("draw").to_pylist())
        ranks = np.array(table.column("rank").to_pylist())
        assert sorted(set(draws.tolist())) == [0, 1, 2] and len(ranks) == 120
        r10 = [float((ranks[draws == d] <= 10).mean()) for d in range(3)]
        assert metrics[f"test/{direction}/R@10"] == pytest.approx(statistics.fmean(r10), abs=1e-12)
        assert metrics[f"test/{direction}/R@10/std"] == pytest.approx(statistics.stdev(r10),
                                                                      abs=1e-12)
        assert ranks.max() <= 40
    # Draw d's queries are the pairs the seeded draw picked.
    table = pq.read_table(out / "per_query_v2m.parquet")
    queries = np.array(table.column("query_id").to_pylist())
    draws = np.array(table.column("draw").to_pylist())
    for d, positions in enumerate(draw_galleries(100, 40, 3, seed=5)):
        assert sorted(queries[draws == d]) == sorted(test_ids[p] for p in positions)
    # Compatible / multi-positive recall (the data has a truth file) per draw too.
    assert "test/v2m/compat/R@10" in metrics and "test/v2m/compat/R@10/std" in metrics
    # Smaller galleries are easier than the whole split.
    assert metrics["test/v2m/R@1"] > run["saved"]["test/v2m/R@1"]


def test_another_data_root_of_the_same_dimensions(run, tmp_path):
    other = tmp_path / "other"
    metrics, out = evaluate(run["ckpt"], [f"data.root={other}", "data.synthetic.seed=3",
                                          "data.synthetic.pairs=300", "data.synthetic.val=50",
                                          "data.synthetic.test=80"], out=tmp_path / "o")
    assert metrics["test/gallery_size"] == 80
    table = pq.read_table(out / "per_query_v2m.parquet")
    listed = (other / "splits" / "test.txt").read_text().split()
    assert sorted(table.column("query_id").to_pylist()) == sorted(listed)


def test_older_checkpoint_without_a_record_uses_the_run_config(run, tmp_path):
    copy = tmp_path / "old_run"
    (copy / "checkpoints").mkdir(parents=True)
    shutil.copy(run["run"] / "config.yaml", copy / "config.yaml")
    ckpt = torch.load(run["ckpt"], map_location="cpu", weights_only=True)
    del ckpt["vmr"]
    torch.save(ckpt, copy / "checkpoints" / "old.ckpt")
    metrics, out = evaluate(copy / "checkpoints" / "old.ckpt")
    assert out.parent == copy / "eval"
    assert metrics["test/v2m/R@10"] == run["saved"]["test/v2m/R@10"]


def _bad_dims_checkpoint(run, tmp_path):
    ckpt = torch.load(run["ckpt"], map_location="cpu", weights_only=True)
    ckpt["vmr"]["config"]["model"]["vmnet"]["video_dim"] = 512
    path = tmp_path / "run" / "checkpoints" / "dims.ckpt"
    path.parent.mkdir(parents=True)
    torch.save(ckpt, path)
    return path


def test_errors_are_one_line_exit_2_and_write_nothing(run, tmp_path, capsys):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint at all")
    cases = [
        ([str(tmp_path / "missing.ckpt")], "missing.ckpt: checkpoint not found"),
        ([str(junk)], "junk.ckpt: not a readable checkpoint"),
        ([str(_bad_dims_checkpoint(run, tmp_path))],
         "takes 512-d video and 1140-d music features, but the himv200k data at"),
        ([run["ckpt"], "eval.gallery_size=101"],
         "eval.gallery_size=101 is larger than the test split (100 pairs)"),
        ([run["ckpt"], "eval.gallery_size=101", "eval.split=train"], None),
        ([run["ckpt"], "eval.galery_size=5"], "unknown key 'eval.galery_size'"),
        ([run["ckpt"], "eval.split=dev"], "'eval.split' has unknown value 'dev'"),
    ]
    evals = run["run"] / "eval"
    before = sorted(evals.iterdir()) if evals.exists() else []
    for args, message in cases:
        out = tmp_path / "out"
        code = main(["eval", *args, "--out", str(out)])
        err = capsys.readouterr().err.strip()
        if message is None:  # the train split (400 pairs) holds 101: no error
            assert code == 0 and out.is_dir(), err
            shutil.rmtree(out)
            continue
        assert code == 2 and len(err.splitlines()) == 1 and message in err, (args, err)
        assert not out.exists(), args
    assert (sorted(evals.iterdir()) if evals.exists() else []) == before


@pytest.mark.slow
def test_two_processes_give_the_one_process_metrics(run, tmp_path):
    """torchrun, 2 CPU processes (gloo): the gathered metrics equal 1 process's with the same
    per-process batch, and only rank 0 writes."""
    import os
    import subprocess
    from pathlib import Path

    single, _ = evaluate(run["ckpt"], ["data.eval_batch_size=50"], out=tmp_path / "one")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "TORCHELASTIC_")) and k not in (
               "RANK", "LOCAL_RANK", "WORLD_SIZE", "VMR_RUN_DIR")}
    env.update(OMP_NUM_THREADS="1", MASTER_PORT=str(29600 + os.getpid() % 1000))
    project = Path(__file__).resolve().parent.parent
    before = _listing(run["run"] / "eval")
    done = subprocess.run(
        [str(project / ".venv" / "bin" / "torchrun"), "--standalone", "--nproc-per-node=2",
         "-m", "lightning_app", "eval", run["ckpt"], "trainer.accelerator=cpu",
         "trainer.devices=2", "trainer.strategy=ddp", "data.eval_batch_size=100",
         "--out", str(tmp_path / "two")],
        cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    for key, value in single.items():
        if key != "test/loss":  # batches differ (DistributedSampler interleaves rows)
            assert two[key] == value, key
    assert pq.read_table(tmp_path / "two" / "per_query_v2m.parquet").num_rows == 100
    assert _listing(run["run"] / "eval") == before  # rank 1 made no folder of its own


def _listing(folder):
    return sorted(folder.iterdir()) if folder.exists() else []
