"""Batch extraction jobs: skip existing outputs, keep going past bad files, parallel = serial."""

from __future__ import annotations

import numpy as np
import pytest
from media import make_audio, make_corrupt, make_empty, make_video

from datamodules.errors import DataError
from datamodules.extract.folders import extract_audio
from datamodules.extract.jobs import Task, list_media, media_id, plan_tasks, run_jobs
from datamodules.extract.specs import AudioSpec


def _mean_of_file(path):
    """A cheap stand-in extractor: the bytes' mean, or a failure for files named bad*."""
    data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    if path.name.startswith("bad"):
        raise DataError(f"{path}: cannot decode (test)")
    return np.array([data.mean(), len(data)], dtype=np.float32)


def _nan(_path):
    return np.array([np.nan], dtype=np.float32)


def _write_files(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(names):
        (folder / n).write_bytes(bytes(range(i, i + 10)))
    return sorted(folder / n for n in names)


def test_media_id_keeps_only_safe_characters():
    from pathlib import Path

    assert media_id(Path("a/My Song (live).mp3")) == "My_Song_live"
    assert media_id(Path("x/abc-DEF_1.mp4")) == "abc-DEF_1"
    assert media_id(Path("x/@@@.mp4")) == "_"


def test_plan_tasks_names_both_files_of_a_colliding_id(tmp_path):
    files = _write_files(tmp_path / "in", ["a b.wav", "a_b.wav"])
    with pytest.raises(DataError, match=r"a_b\.wav: its id 'a_b' is also the id of .*a b\.wav"):
        plan_tasks(files, tmp_path / "out")


def test_list_media_takes_media_names_probes_the_rest_and_skips_hidden_folders(tmp_path):
    _write_files(tmp_path, ["x.mp4", "y.txt", "z.WAV"])
    _write_files(tmp_path / ".vmr-cache", ["c.mp4"])
    _write_files(tmp_path / "sub", ["w.mp3"])
    # y.txt is probed by content (not media); files named as media are decoded later
    assert [p.name for p in list_media(tmp_path)] == ["w.mp3", "x.mp4", "z.WAV"]
    with pytest.raises(DataError, match="none: no such file or folder"):
        list_media(tmp_path / "none")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"empty: no media files \(the folder holds no files\)"):
        list_media(empty)
    (empty / "notes.txt").write_text("not a song")
    with pytest.raises(DataError, match=r"none of its 1 files holds audio or video \(e\.g\. "
                       r".*notes\.txt: cannot decode \(not in any audio or video format"):
        list_media(empty)


def test_run_jobs_records_failures_and_continues(tmp_path):
    files = _write_files(tmp_path / "in", ["a.wav", "bad.wav", "c.wav"])
    tasks = plan_tasks(files, tmp_path / "out")
    summary = run_jobs(tasks, _mean_of_file, progress=False)
    assert summary.done == ["a", "c"]
    assert summary.failed == [(str(files[1]), f"{files[1]}: cannot decode (test)")]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.npy", "c.npy"]
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "a.npy"), _mean_of_file(files[0]))
    assert "2 done, 0 skipped (output exists), 1 failed" in summary.line()
    assert "failed: " in summary.report() and "bad.wav" in summary.report()


def test_run_jobs_skips_existing_outputs_so_a_job_resumes(tmp_path):
    files = _write_files(tmp_path / "in", ["a.wav", "b.wav"])
    tasks = plan_tasks(files, tmp_path / "out")
    (tmp_path / "out").mkdir()
    np.save(tmp_path / "out" / "a.npy", np.array([-1.0], dtype=np.float32))  # "done before"
    summary = run_jobs(tasks, _mean_of_file, progress=False)
    assert summary.skipped == ["a"] and summary.done == ["b"]
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "a.npy"), [-1.0])  # untouched
    again = run_jobs(tasks, _mean_of_file, progress=False)
    assert again.skipped == ["a", "b"] and again.done == []


def test_non_finite_output_is_a_failure_and_nothing_is_written(tmp_path):
    files = _write_files(tmp_path / "in", ["a.wav"])
    summary = run_jobs(plan_tasks(files, tmp_path / "out"), _nan, progress=False)
    assert summary.done == [] and "features contain NaN or inf" in summary.failed[0][1]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_failing_finish_step_leaves_no_partial_file(tmp_path):
    files = _write_files(tmp_path / "in", ["a.wav"])

    def finish(_):
        raise DataError("finish failed")

    summary = run_jobs([Task("a", files[0], tmp_path / "out" / "a.npy")], _mean_of_file,
                       finish=finish, progress=False)
    assert summary.failed == [(str(files[0]), "finish failed")]
    assert not (tmp_path / "out" / "a.npy").exists()


@pytest.fixture(scope="module")
def media_folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    make_video(d / "v1.mp4", seconds=2.0, tone_hz=330)
    make_audio(d / "t2.wav", seconds=2.5, tone_hz=880)
    make_video(d / "silent.mp4", seconds=2.0, audio=False)
    make_corrupt(d / "broken.mp4")
    make_empty(d / "empty.mp3")
    return d


def test_extract_audio_logmel_on_real_files_lists_each_bad_file_with_its_reason(
        media_folder, tmp_path):
    summary = extract_audio(media_folder, tmp_path / "out", AudioSpec("logmel"),
                            device=None, progress=False)
    assert summary.done == ["t2", "v1"]
    reasons = {f.rsplit("/", 1)[1]: r for f, r in summary.failed}
    assert set(reasons) == {"broken.mp4", "empty.mp3", "silent.mp4"}
    assert "no audio stream" in reasons["silent.mp4"]
    assert reasons["empty.mp3"].endswith("empty.mp3: empty file (0 bytes)")
    assert "cannot decode" in reasons["broken.mp4"]
    # 2.5 s -> 3 rows: a trailing half second counts as a second (logmel.n_rows)
    assert np.load(tmp_path / "out" / "t2.npy").shape == (3, 128)
    assert np.load(tmp_path / "out" / "v1.npy").shape == (2, 128)


def test_parallel_workers_write_the_same_features_as_one_process(media_folder, tmp_path,
                                                                  monkeypatch):
    import datamodules.extract.jobs as jobs

    monkeypatch.setattr(jobs, "MIN_TASKS_PER_WORKER", 0)  # two workers even for five files
    serial = extract_audio(media_folder, tmp_path / "serial", AudioSpec("logmel"), workers=0,
                           progress=False)
    parallel = extract_audio(media_folder, tmp_path / "parallel", AudioSpec("logmel"),
                             workers=2, progress=False)
    assert parallel.done == serial.done
    assert [r for _, r in parallel.failed] == [r for _, r in serial.failed]
    for name in serial.done:
        np.testing.assert_allclose(np.load(tmp_path / "parallel" / f"{name}.npy"),
                                   np.load(tmp_path / "serial" / f"{name}.npy"), rtol=1e-5,
                                   atol=1e-5)


def test_short_jobs_run_in_this_process(tmp_path, monkeypatch):
    """Starting workers costs seconds; fewer than 4 tasks per worker stay in-process."""
    import datamodules.extract.jobs as jobs

    seen = []
    monkeypatch.setattr(jobs, "DataLoader", lambda *a, **kw: seen.append(kw["num_workers"]) or [])
    files = _write_files(tmp_path / "in", [f"{i}.wav" for i in range(7)])
    run_jobs(plan_tasks(files, tmp_path / "out"), _mean_of_file, workers=2, progress=False)
    files = _write_files(tmp_path / "in2", [f"{i}.wav" for i in range(8)])
    run_jobs(plan_tasks(files, tmp_path / "out2"), _mean_of_file, workers=2, progress=False)
    assert seen == [0, 2]
