"""Two real processes preparing the same store: one builds, the other waits and uses it, or
gives up after VMR_STORE_LOCK_TIMEOUT_S with one line; the store is never mixed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from datamodules.himv200k import pack_himv200k
from datamodules.store_check import verify_store

PROJECT = Path(__file__).resolve().parent.parent

# Holds the store's lock, says so, waits for `go`, then writes the store from a reference
# packed from the same source (the lock is re-entrant, so write_store inside it does not
# wait for itself). Only the light store modules are imported: the holder starts quickly.
HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from datamodules.feature_store import ModalitySpec, StoreSplit, read_meta, write_store
    from datamodules.store_lock import store_lock
    store, ready, go, ref = map(Path, sys.argv[1:5])
    with store_lock(store):
        ready.touch()
        while not go.exists():
            time.sleep(0.05)
        if ref.name:
            meta = read_meta(ref)
            modalities = {m: ModalitySpec(v["dim"], v["dtype"])
                          for m, v in meta["modalities"].items()}
            write_store(store, {s: StoreSplit(ref, s).iter_items() for s in meta["splits"]},
                        modalities, meta["source"])
""")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMR_")}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


def _holder(store: Path, tmp_path: Path, ref: Path | None = None
            ) -> tuple[subprocess.Popen, Path]:
    ready, go = tmp_path / "ready", tmp_path / "go"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(store), str(ready), str(go),
                             str(ref or "")], cwd=PROJECT, env=_env())
    _wait_for(ready.exists, proc, "the holder to take the lock")
    return proc, go


def _prepare(root: Path, log: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lightning_app", "prepare", "--dataset", "himv200k", "--src",
         str(root)], cwd=PROJECT, env=_env(**env), stdout=open(log, "w"),
        stderr=open(log.with_suffix(".err"), "w"))


def _wait_for(condition, proc: subprocess.Popen, what: str, limit: float = 60.0) -> None:
    start = time.monotonic()
    while not condition():
        if proc.poll() is not None or time.monotonic() - start > limit:
            raise AssertionError(f"gave up waiting for {what} (exit code {proc.poll()})")
        time.sleep(0.05)


def test_second_builder_waits_and_uses_the_store_the_first_built(himv_root, tmp_path):
    ref = pack_himv200k(himv_root, tmp_path / "ref")  # what the first builder writes
    holder, go = _holder(himv_root / "store", tmp_path, ref)
    log = tmp_path / "second.log"
    second = _prepare(himv_root, log)
    _wait_for(lambda: "waiting" in log.read_text(), second, "the second builder to wait")
    assert not (himv_root / "store").exists()  # nothing written while it waits
    go.touch()
    assert holder.wait(timeout=120) == 0
    built = (himv_root / "store" / "meta.json").stat().st_ino
    assert second.wait(timeout=120) == 0, log.with_suffix(".err").read_text()
    out = log.read_text()
    assert "is being built by pid" in out and f"pid {holder.pid} on " in out
    assert f"{himv_root / 'store'} was built from the same source by another process; " \
           "using it" in out
    assert (himv_root / "store" / "meta.json").stat().st_ino == built  # not written again
    assert verify_store(himv_root / "store") == ([], 9)
    assert sorted(p.name for p in himv_root.iterdir() if p.name.startswith(".")) == []


def test_waiting_builder_gives_up_after_the_timeout_in_one_line(himv_root, tmp_path):
    holder, go = _holder(himv_root / "store", tmp_path)
    log = tmp_path / "second.log"
    try:
        second = _prepare(himv_root, log, VMR_STORE_LOCK_TIMEOUT_S="1")
        assert second.wait(timeout=120) == 2
    finally:
        go.touch()
        holder.wait(timeout=120)
    err = log.with_suffix(".err").read_text().splitlines()
    lock = himv_root / ".store.lock"
    assert len(err) == 1 and err[0].startswith(
        f"vmr: error: {lock}: gave up after 1 s waiting for pid {holder.pid} on "), err
    assert err[0].endswith("to finish building the store (VMR_STORE_LOCK_TIMEOUT_S sets the "
                           "limit)")
    assert not (himv_root / "store").exists() and not lock.exists()


@pytest.mark.slow
def test_two_builders_started_together_both_succeed_with_one_whole_store(himv_root, tmp_path):
    logs = [tmp_path / f"p{i}.log" for i in range(2)]
    procs = [_prepare(himv_root, log) for log in logs]
    codes = [p.wait(timeout=180) for p in procs]
    assert codes == [0, 0], [log.with_suffix(".err").read_text() for log in logs]
    assert verify_store(himv_root / "store") == ([], 9)
    leftovers = [p.name for p in himv_root.iterdir() if p.name.startswith(".")]
    assert leftovers == []


@pytest.mark.slow
def test_two_training_runs_on_fresh_synthetic_data_generate_and_pack_it_once(tmp_path):
    root = tmp_path / "data"
    logs = [tmp_path / f"train{i}.log" for i in range(2)]
    procs = [subprocess.Popen(
        [sys.executable, "-m", "lightning_app", "train", "quickstart", f"data.root={root}",
         f"run_dir={tmp_path / f'runs{i}'}", "data.synthetic.pairs=400",
         "data.synthetic.val=100", "data.synthetic.test=100", "data.batch_size=100",
         "data.eval_batch_size=100", "trainer.fast_dev_run=true",
         "trainer.enable_progress_bar=false", "logger.wandb.mode=disabled"],
        cwd=PROJECT, env=_env(), stdout=open(log, "w"), stderr=subprocess.STDOUT)
        for i, log in enumerate(logs)]
    codes = [p.wait(timeout=300) for p in procs]
    text = [log.read_text() for log in logs]
    assert codes == [0, 0], text
    # One generated the data and packed it; the other waited (or came after) and packed nothing.
    assert sum(t.count("packing") for t in text) == 1, text
    assert verify_store(root / "store") == ([], 9)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
