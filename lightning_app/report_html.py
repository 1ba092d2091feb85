"""report.html: one self-contained page per evaluation (a run's final test, a `vmr eval`).

It shows the metrics, recall@K curves and a histogram of ranks (inline SVG,
lightning_app.report_svg), and the worst and best queries of each direction with their
top-k gallery items, positives highlighted. When the dataset was built from raw media by
`vmr build-dataset` (its `extractor.json` names the source folder), the query and its
results can be played in place: `<video>` / `<audio>` elements point at the source files
by paths relative to the page. Nothing else is referenced (no scripts, styles or fonts from
elsewhere). Every id is HTML-escaped. Plain string templates, no templating library.
"""

from __future__ import annotations

import html
import os
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from datamodules.atomic import write_text
from datamodules.errors import DataError
from lightning_app.per_query import QueryTable
from lightning_app.report_svg import LABELS, rank_histogram_svg, recall_curves_svg

QUERY_SIDE = {"v2m": "video", "m2v": "music"}  # the gallery is the other side
MARK = '<span class="mark">✓</span>'  # a positive among the top-k

STYLE = """
body { font-family: sans-serif; margin: 24px auto; max-width: 1200px; color: #222;
       padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 32px; }
h3 { font-size: 15px; margin-top: 20px; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 2px 12px;
           font-size: 13px; color: #444; }
dl.facts dt { font-weight: bold; } dl.facts dd { margin: 0; word-break: break-all; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 4px 8px; vertical-align: top; text-align: left; }
th { background: #f3f3f3; }
table.metrics td { text-align: right; font-variant-numeric: tabular-nums; }
.charts, .pair { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.charts figure { margin: 0; } figcaption { font-size: 13px; color: #555; }
td.rank { text-align: right; font-weight: bold; }
ol.topk { margin: 0; padding-left: 22px; }
ol.topk li { padding: 1px 4px; margin: 1px 0; }
li.pos { background: #d9f2d9; outline: 1px solid #5cb85c; }
span.score { color: #777; font-variant-numeric: tabular-nums; margin-left: 6px; }
span.mark { color: #2e7d32; font-weight: bold; margin-left: 4px; }
.id { font-family: monospace; }
video { width: 200px; display: block; margin-top: 4px; }
li video { width: 140px; margin: 2px 0 4px; }
li audio { width: 190px; height: 26px; vertical-align: middle; margin-left: 8px; }
td.qid audio { width: 220px; height: 30px; display: block; margin-top: 4px; }
p.note { font-size: 13px; color: #555; }
"""


def media_files(data_root: str | Path) -> dict[str, Path] | None:
    """id -> source media file of a dataset built by `vmr build-dataset`, else None.

    The build records its source folder in `<root>/extractor.json` (`videos`); an id is the
    file's stem as datamodules.extract.jobs.media_id makes it. None when the record, the
    folder or a readable file list is missing (the report then shows ids only).
    """
    from datamodules.extract.jobs import list_media, plan_tasks
    from datamodules.extract.specs import dataset_extractor

    try:
        record = dataset_extractor(data_root)
        folder = Path(record["videos"]) if record and record.get("videos") else None
        if folder is None or not folder.is_dir():
            return None
        return {t.name: t.source for t in plan_tasks(list_media(folder), Path("."))}
    except (DataError, OSError):
        return None


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _player(side: str, item_id: str, media: dict[str, Path] | None, page_dir: Path) -> str:
    source = media.get(item_id) if media else None
    if source is None:
        return ""
    src = urllib.parse.quote(Path(os.path.relpath(source, page_dir)).as_posix())
    tag = "video" if side == "video" else "audio"
    return f'<{tag} controls preload="none" src="{_e(src)}"></{tag}>'


def _metric_cell(metrics: dict[str, float], key: str, percent: bool) -> str:
    if key not in metrics:
        return "<td>–</td>"
    scale = 100.0 if percent else 1.0
    text = f"{metrics[key] * scale:.2f}" if percent else f"{metrics[key]:.1f}"
    std = metrics.get(f"{key}/std")
    if std is not None:
        text += f" ± {std * scale:.2f}" if percent else f" ± {std:.1f}"
    return f"<td>{text}</td>"


def _metrics_table(metrics: dict[str, float], stage: str, ks: Sequence[int],
                   directions: Sequence[str]) -> str:
    head = "".join(f"<th>R@{int(k)} (%)</th>" for k in ks) + "<th>MdR</th><th>MnR</th>"
    rows = []
    for d in directions:
        cells = [_metric_cell(metrics, f"{stage}/{d}/R@{int(k)}", True) for k in ks]
        cells += [_metric_cell(metrics, f"{stage}/{d}/{m}", False) for m in ("MdR", "MnR")]
        rows.append(f'<tr><th>{_e(LABELS.get(d, d))}</th>{"".join(cells)}</tr>')
    return (f'<table class="metrics" id="metrics"><tr><th>direction</th>{head}</tr>'
            f'{"".join(rows)}</table>')


def _query_row(table: QueryTable, i: int, direction: str, media: dict[str, Path] | None,
               page_dir: Path) -> str:
    q_side = QUERY_SIDE[direction]
    g_side = "music" if q_side == "video" else "video"
    qid = table.query_id[i]
    positives = set(table.positive_ids[i])
    items = []
    for gid, score in zip(table.topk_ids[i], table.topk_scores[i]):
        hit = gid in positives
        items.append(f'<li class="{"pos" if hit else "neg"}"><span class="id">{_e(gid)}</span>'
                     f'{MARK if hit else ""}'
                     f'<span class="score">{float(score):.3f}</span>'
                     f'{_player(g_side, gid, media, page_dir)}</li>')
    pos = ", ".join(f'<span class="id">{_e(p)}</span>' for p in table.positive_ids[i])
    return (f'<tr class="query" data-query-id="{_e(qid)}"><td class="qid">'
            f'<span class="id">{_e(qid)}</span>{_player(q_side, qid, media, page_dir)}</td>'
            f'<td class="rank">{int(table.rank[i])}</td><td>{pos}</td>'
            f'<td><ol class="topk">{"".join(items)}</ol></td></tr>')


def _queries(table: QueryTable, direction: str, kind: str, count: int,
             media: dict[str, Path] | None, page_dir: Path) -> str:
    rows = range(len(table)) if table.draw is None else np.flatnonzero(table.draw == 0)
    sign = -1 if kind == "worst" else 1
    order = sorted(rows, key=lambda i: (sign * int(table.rank[i]), table.query_id[i]))[:count]
    k = len(table.topk_ids[0]) if len(table) else 0
    body = "".join(_query_row(table, i, direction, media, page_dir) for i in order)
    noun = "query" if len(order) == 1 else "queries"
    return (f'<h3>{kind} {len(order)} {noun}</h3>'
            f'<table class="queries" id="{kind}-{direction}"><tr><th>query</th><th>rank</th>'
            f'<th>positive</th><th>top {k} (score)</th></tr>{body}</table>')


def render_report(*, title: str, facts: Sequence[tuple[str, str]], metrics: dict[str, float],
                  stage: str, ks: Sequence[int], tables: dict[str, QueryTable],
                  curve_max_k: int, page_dir: Path, media: dict[str, Path] | None = None,
                  count: int = 10) -> str:
    """The page as one string; `page_dir` is where it will live (media paths are relative)."""
    ranks = {d: t.rank for d, t in tables.items()}
    # Recall is 100 % from K = the gallery size on: one direction's gallery is the other's
    # queries (per draw).
    per_draw = [len(t) if t.draw is None else int((t.draw == 0).sum()) for t in tables.values()]
    curve_max_k = max(1, min(int(curve_max_k), max(per_draw)))
    fact_rows = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts)
    draws = {int(x) for t in tables.values() if t.draw is not None for x in np.unique(t.draw)}
    note = ""
    if draws:
        note = (f'<p class="note">Random galleries: charts pool the queries of all '
                f'{len(draws)} draws; the query lists below are from draw 0.</p>')
    if media is None:
        note += ('<p class="note">No media players: the dataset does not record its source '
                 'files (built without <code>vmr build-dataset</code>, or the folder moved).</p>')
    sections = []
    for d, table in tables.items():
        sections.append(f'<section class="direction" id="queries-{d}"><h2>'
                        f'{_e(LABELS.get(d, d))} ({len(table)} queries)</h2><div class="pair">'
                        f'<div>{_queries(table, d, "worst", count, media, page_dir)}</div>'
                        f'<div>{_queries(table, d, "best", count, media, page_dir)}</div>'
                        '</div></section>')
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{_e(title)}</title>
<style>{STYLE}</style>
</head>
<body>
<h1>{_e(title)}</h1>
<dl class="facts">{fact_rows}<dt>written</dt><dd>{_e(time.strftime("%Y-%m-%d %H:%M:%S"))}</dd></dl>
<h2>Metrics</h2>
{_metrics_table(metrics, stage, ks, list(tables))}
{note}
<div class="charts">
<figure id="recall-curves">{recall_curves_svg(ranks, curve_max_k)}
<figcaption>Recall@K for K = 1..{int(curve_max_k)}</figcaption></figure>
<figure id="rank-histogram">{rank_histogram_svg(ranks)}
<figcaption>Where the correct item ranks (share of queries per rank bin)</figcaption></figure>
</div>
{"".join(sections)}
</body>
</html>
"""


def write_report(path: str | Path, **kwargs) -> Path:
    """render_report(..., page_dir=path's folder) written atomically to `path`."""
    path = Path(path)
    write_text(path, render_report(page_dir=path.parent.resolve(), **kwargs))
    return path
