"""report.html: self-contained, escaped, rendered by headless Chromium without console errors,
with the worst and best queries and players for a dataset built from raw media."""

from __future__ import annotations

import re
import shutil
import subprocess
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from media import make_audio, make_video

from datamodules.atomic import write_json
from datamodules.extract.specs import record
from lightning_app.per_query import QueryTable, concat_draws
from lightning_app.report_html import media_files, render_report, write_report
from lightning_app.report_svg import rank_bins, recall_curve

EVIL = '<script>document.title="pwned"</script>&"'


def chromium(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium")
    if exe is None:
        raise RuntimeError("chromium not found: `make system-deps` installs it")
    return subprocess.run([exe, "--headless", "--disable-gpu", "--no-sandbox",
                           "--enable-logging=stderr", "--v=0", *args],
                          capture_output=True, text=True, timeout=120)


def console_lines(stderr: str) -> list[str]:
    """Messages the page wrote to the console (errors, uncaught exceptions)."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def table(direction: str, n: int, seed: int = 0) -> QueryTable:
    """n queries, query i has rank i + 1; its positive sits at that rank when it is top-5."""
    q_prefix, g_prefix = ("vid", "song") if direction == "v2m" else ("song", "vid")
    rng = np.random.default_rng(seed)
    ids, positives, tops = [], [], []
    for i in range(n):
        ids.append(EVIL if i == n - 1 else f"{q_prefix}_{i}")
        positive = f"{g_prefix}_{i}"
        top = [f"{g_prefix}_{(i + j + 1) % n}" for j in range(5)]
        if i < 5:
            top[i] = positive
        positives.append([positive])
        tops.append(top)
    scores = -np.sort(-rng.random((n, 5)).astype(np.float32), axis=1)
    return QueryTable(ids, np.arange(1, n + 1, dtype=np.int64), positives, tops, scores)


def report_args(tables, **extra):
    metrics = {}
    for d in tables:
        metrics.update({f"test/{d}/R@1": 0.25, f"test/{d}/R@5": 0.5, f"test/{d}/MdR": 3.0,
                        f"test/{d}/MnR": 7.5})
    return {"title": "demo <report>", "facts": [("data", "/x/<y>")], "metrics": metrics,
            "stage": "test", "ks": [1, 5], "tables": tables, "curve_max_k": 20, **extra}


class _Rows(HTMLParser):
    """Collects each query table's rows (data-query-id) and every src/href attribute."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[str]] = {}
        self.current = None
        self.links: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        if tag == "table" and "queries" in (a.get("class") or ""):
            self.current = a["id"]
            self.tables[self.current] = []
        if tag == "tr" and "data-query-id" in a and self.current:
            self.tables[self.current].append(a["data-query-id"])
        self.links += [v for k, v in attrs if k in ("src", "href")]


def test_page_is_self_contained_escaped_and_lists_worst_and_best(tmp_path):
    tables = {"v2m": table("v2m", 25), "m2v": table("m2v", 25, seed=1)}
    text = render_report(page_dir=tmp_path, **report_args(tables))
    parser = _Rows()
    parser.feed(text)
    assert parser.tables["worst-v2m"][0] == EVIL and len(parser.tables["worst-v2m"]) == 10
    assert parser.tables["best-v2m"] == [f"vid_{i}" for i in range(10)]
    assert parser.tables["worst-m2v"][:2] == [EVIL, "song_23"]
    assert "script" not in parser.tags and "link" not in parser.tags
    assert parser.links == []  # no media for this dataset, nothing else referenced
    assert "&lt;script&gt;document.title" in text and "demo &lt;report&gt;" in text
    # Positives among the top-k are highlighted: the 5 best queries of each direction.
    assert len(re.findall(r'<li class="pos">', text)) == 10


def test_chart_helpers():
    assert recall_curve(np.array([1, 2, 2, 9]), 3).tolist() == [0.25, 0.75, 0.75]
    assert rank_bins(1) == [(1, 1)]
    assert rank_bins(130) == [(1, 1), (2, 2), (3, 5), (6, 10), (11, 20), (21, 50), (51, 100),
                              (101, 200)]


@pytest.fixture
def built_dataset(tmp_path):
    """A dataset root whose extractor.json names a folder of real clips (ids = stems)."""
    videos = tmp_path / "clips"
    videos.mkdir()
    for i in range(3):
        make_video(videos / f"vid_{i}.mp4", seconds=1.0, color=("red", "green", "blue")[i])
        make_audio(videos / f"song_{i}.wav", seconds=1.0, tone_hz=300.0 + 100 * i)
    root = tmp_path / "dataset"
    write_json(root / "extractor.json", record(None, None, layout="mvd", videos=str(videos)))
    return root, videos


def test_media_files_map_ids_to_the_recorded_folder(built_dataset, tmp_path):
    root, videos = built_dataset
    found = media_files(root)
    assert found == {f"vid_{i}": videos / f"vid_{i}.mp4" for i in range(3)} | {
        f"song_{i}": videos / f"song_{i}.wav" for i in range(3)}
    assert media_files(tmp_path / "nothing_here") is None
    shutil.move(videos, tmp_path / "moved")
    assert media_files(root) is None


def test_chromium_renders_the_report_with_players_and_no_console_error(built_dataset,
                                                                      tmp_path):
    root, _ = built_dataset
    tables = concat_draws([{"v2m": table("v2m", 12), "m2v": table("m2v", 12, seed=2)}] * 2)
    page = write_report(tmp_path / "run" / "eval" / "report.html",
                        **report_args(tables, media=media_files(root)))
    # The harness sees console errors: a page with one fails this check.
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><p>x</p><script>undefinedFunction()</script>")
    assert any("Uncaught" in line for line in console_lines(chromium("--dump-dom",
                                                                     bad.as_uri()).stderr))

    done = chromium("--dump-dom", page.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    assert console_lines(done.stderr) == []
    dom = _Rows()
    dom.feed(done.stdout)
    assert dom.tables["worst-v2m"][0] == EVIL and len(dom.tables["worst-v2m"]) == 10
    assert dom.tables["best-m2v"][:3] == ["song_0", "song_1", "song_2"]
    assert "Random galleries" in done.stdout and "from draw 0" in done.stdout
    # Players for the ids that have files, each pointing at an existing file.
    assert {"video", "audio"} <= dom.tags and dom.links
    for src in dom.links:
        target = (page.parent / urllib.parse.unquote(src)).resolve()
        assert target.is_file() and target.stem in {f"vid_{i}" for i in range(3)} | {
            f"song_{i}" for i in range(3)}, src
    shot = tmp_path / "shot.png"
    done = chromium("--hide-scrollbars", "--window-size=1280,1800", f"--screenshot={shot}",
                    page.as_uri())
    assert done.returncode == 0 and shot.stat().st_size > 10_000
    assert Path(shot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
