"""Per-query retrieval results: each query's rank, its positives and its top-k gallery items.

Made from the rows an evaluation gathered (one per pair of the split: embeddings, integer id
keys, dataset index; see lightning_app.callbacks.RecallAtK). Queries and galleries are
de-duplicated by id exactly as the metrics are (lightning_app.retrieval.paired_retrieval_ranks),
so a query's `rank` here is the rank its metrics were computed from, ties counted against it.

One table per direction (v2m: video queries over the music gallery; m2v: the reverse),
written as `per_query_v2m.parquet` / `per_query_m2v.parquet` with the columns

    query_id      str          the query's id (video id for v2m, music id for m2v)
    rank          int64        1-based rank of its best positive
    positive_ids  list<str>    its positives (the items it is paired with in the split)
    topk_ids      list<str>    the top-k gallery ids, best first (k = eval.topk, at most G)
    topk_scores   list<float>  their scores (dot products of the L2-normalised embeddings)
    draw          int32        only for random-gallery evaluation: the gallery draw
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from datamodules.atomic import atomic_file, save_npy, write_json
from lightning_app.retrieval import dedupe_by_key, paired_retrieval_ranks
from lightning_app.search import topk_search

DIRECTIONS = ("v2m", "m2v")


@dataclasses.dataclass
class QueryTable:
    query_id: list[str]
    rank: np.ndarray  # int64 [Q]
    positive_ids: list[list[str]]
    topk_ids: list[list[str]]
    topk_scores: np.ndarray  # float32 [Q, k]
    draw: np.ndarray | None = None  # int32 [Q] for random-gallery evaluation

    def __len__(self) -> int:
        return len(self.query_id)

    def columns(self) -> dict[str, list]:
        """Plain Python columns (for Arrow, W&B and the HTML report)."""
        cols = {} if self.draw is None else {"draw": self.draw.tolist()}
        cols.update(query_id=list(self.query_id), rank=self.rank.tolist(),
                    positive_ids=[list(p) for p in self.positive_ids],
                    topk_ids=[list(t) for t in self.topk_ids],
                    topk_scores=self.topk_scores.tolist())
        return cols


def query_tables(rows: dict[str, torch.Tensor], video_ids: Sequence[str],
                 music_ids: Sequence[str], topk: int, chunk_size: int = 4096,
                 ranks: dict[str, torch.Tensor] | None = None) -> dict[str, QueryTable]:
    """{"v2m": QueryTable, "m2v": QueryTable} for the pairs in `rows`.

    `rows`: video, music [N, E]; video_key, music_key, index [N] (row n is the pair at
    dataset row index[n]). `video_ids[i]` / `music_ids[i]`: the id strings of dataset row i.
    `ranks`: the ranks the metrics were computed from, when the caller has them (so the
    table cannot disagree with the metrics); otherwise computed here by the same function.
    """
    if ranks is None:
        ranks = paired_retrieval_ranks(rows["video"], rows["music"], rows["video_key"],
                                       rows["music_key"], chunk_size=chunk_size)
    device = rows["video"].device
    index = rows["index"].cpu().numpy()
    # The same de-duplication as paired_retrieval_ranks: unique ids in key order.
    _, v_first, v_inv = dedupe_by_key(rows["video_key"].to(device=device, dtype=torch.long))
    _, m_first, m_inv = dedupe_by_key(rows["music_key"].to(device=device, dtype=torch.long))
    v_names = [str(video_ids[i]) for i in index[v_first.cpu().numpy()]]
    m_names = [str(music_ids[i]) for i in index[m_first.cpu().numpy()]]
    videos, music = rows["video"][v_first], rows["music"].to(device)[m_first]
    v_inv, m_inv = v_inv.cpu().numpy(), m_inv.cpu().numpy()
    sides = {"v2m": (videos, music, v_names, m_names, v_inv, m_inv),
             "m2v": (music, videos, m_names, v_names, m_inv, v_inv)}
    tables = {}
    for direction, (queries, gallery, q_names, g_names, q_inv, g_inv) in sides.items():
        k = min(topk, len(g_names))
        scores, top = topk_search(queries, gallery, k, chunk_size=chunk_size)
        positives: list[set[str]] = [set() for _ in q_names]
        for q, g in zip(q_inv.tolist(), g_inv.tolist()):
            positives[q].add(g_names[g])
        tables[direction] = QueryTable(
            query_id=q_names,
            rank=ranks[direction].cpu().numpy().astype(np.int64),
            positive_ids=[sorted(p) for p in positives],
            topk_ids=[[g_names[j] for j in row] for row in top.cpu().tolist()],
            topk_scores=scores.cpu().numpy().astype(np.float32),
        )
    return tables


def concat_draws(per_draw: Sequence[dict[str, QueryTable]]) -> dict[str, QueryTable]:
    """One table per direction from the tables of several gallery draws (adds `draw`)."""
    out = {}
    for direction in DIRECTIONS:
        parts = [t[direction] for t in per_draw]
        out[direction] = QueryTable(
            query_id=[q for p in parts for q in p.query_id],
            rank=np.concatenate([p.rank for p in parts]),
            positive_ids=[x for p in parts for x in p.positive_ids],
            topk_ids=[x for p in parts for x in p.topk_ids],
            topk_scores=np.concatenate([p.topk_scores for p in parts]),
            draw=np.concatenate([np.full(len(p), d, np.int32) for d, p in enumerate(parts)]),
        )
    return out


def to_arrow(table: QueryTable):
    import pyarrow as pa

    types = {"draw": pa.int32(), "query_id": pa.string(), "rank": pa.int64(),
             "positive_ids": pa.list_(pa.string()), "topk_ids": pa.list_(pa.string()),
             "topk_scores": pa.list_(pa.float32())}
    cols = table.columns()
    return pa.table({name: pa.array(values, type=types[name]) for name, values in cols.items()})


def write_tables(tables: dict[str, QueryTable], out_dir: Path) -> list[Path]:
    """`per_query_<direction>.parquet` in `out_dir`, each written atomically."""
    import pyarrow.parquet as pq

    paths = []
    for direction, table in tables.items():
        path = Path(out_dir) / f"per_query_{direction}.parquet"
        with atomic_file(path, suffix=".parquet") as tmp:
            pq.write_table(to_arrow(table), tmp)
        paths.append(path)
    return paths


def save_embeddings(rows: dict[str, torch.Tensor], video_ids: Sequence[str],
                    music_ids: Sequence[str], out_dir: Path) -> None:
    """embeddings_{video,music}.npy (float32 [N, E], row n = pair n of the split, in dataset
    order) and embeddings_ids.json ({"video_id": [N], "music_id": [N]})."""
    out_dir = Path(out_dir)
    index = rows["index"].cpu().numpy()
    save_npy(out_dir / "embeddings_video.npy", rows["video"].float().cpu().numpy())
    save_npy(out_dir / "embeddings_music.npy", rows["music"].float().cpu().numpy())
    write_json(out_dir / "embeddings_ids.json",
               {"video_id": [str(video_ids[i]) for i in index],
                "music_id": [str(music_ids[i]) for i in index]})


def log_wandb_tables(loggers: Sequence, tables: dict[str, QueryTable], stage: str,
                     step: int) -> None:
    """The tables as wandb.Table `<stage>/per_query_<direction>` on every WandbLogger.

    W&B shows at most wandb.Table.MAX_ROWS rows per table: larger tables keep the worst
    queries (highest rank) first, so the cut drops the best-retrieved ones.
    """
    from pytorch_lightning.loggers import WandbLogger

    wandb_loggers = [lg for lg in loggers if isinstance(lg, WandbLogger)]
    if not wandb_loggers:
        return
    import wandb

    for direction, table in tables.items():
        cols = table.columns()
        names = list(cols)
        order = sorted(range(len(table)), key=lambda i: (-cols["rank"][i], cols["query_id"][i]))
        data = [[cols[n][i] for n in names] for i in order[:wandb.Table.MAX_ROWS]]
        for lg in wandb_loggers:
            lg.log_table(f"{stage}/per_query_{direction}", columns=names, data=data, step=step)
