"""Per-query results: the tables against a brute force, the parquet files, and a trained run's
files agreeing with its metrics (and reaching W&B offline)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from lightning_app.per_query import concat_draws, query_tables, save_embeddings, write_tables
from lightning_app.retrieval import metrics_from_ranks


def _rows(seed=0, n=40, dim=5):
    """Pairs with ids; every 4th video reuses the previous pair's song (a shared song)."""
    rng = np.random.default_rng(seed)
    video = rng.standard_normal((n, dim)).astype(np.float32)
    music = (video + rng.standard_normal((n, dim))).astype(np.float32)
    music_of = [i - 1 if i % 4 == 3 else i for i in range(n)]
    music = music[music_of]
    video_ids = [f"v{i:02d}<&>" for i in range(n)]  # odd characters on purpose
    music_ids = [f"m{j:02d}" for j in music_of]
    rows = {"video": torch.from_numpy(video), "music": torch.from_numpy(music),
            # Keys as PairDataset makes them: positions in the sorted unique ids.
            "video_key": torch.from_numpy(np.unique(video_ids, return_inverse=True)[1]),
            "music_key": torch.from_numpy(np.unique(music_ids, return_inverse=True)[1]),
            "index": torch.arange(n)}
    return rows, video_ids, music_ids


def _reference(rows, video_ids, music_ids, k):
    """Brute force per direction: {query id: (rank, sorted positives, top-k ids, scores)}."""
    out = {}
    v, m = rows["video"].numpy(), rows["music"].numpy()
    items = {"video": {}, "music": {}}
    for i, (a, b) in enumerate(zip(video_ids, music_ids)):
        items["video"].setdefault(a, v[i])
        items["music"].setdefault(b, m[i])
    pairs = set(zip(video_ids, music_ids))
    for direction, (qs, gs, flip) in {"v2m": ("video", "music", False),
                                      "m2v": ("music", "video", True)}.items():
        g_ids = sorted(items[gs])
        g_emb = np.stack([items[gs][g] for g in g_ids])
        table = {}
        for q, q_emb in items[qs].items():
            scores = g_emb @ q_emb
            pos = np.array([((g, q) if flip else (q, g)) in pairs for g in g_ids])
            best = scores[pos].max()
            rank = 1 + int(((scores >= best) & ~pos).sum())
            order = np.lexsort((np.arange(len(g_ids)), -scores))[:k]  # ties: lower id first
            table[q] = (rank, sorted(np.array(g_ids)[pos].tolist()),
                        [g_ids[j] for j in order], scores[order])
        out[direction] = table
    return out


def test_tables_equal_a_brute_force():
    rows, video_ids, music_ids = _rows()
    tables = query_tables(rows, video_ids, music_ids, topk=6, chunk_size=7)
    ref = _reference(rows, video_ids, music_ids, k=6)
    assert len(tables["v2m"]) == 40 and len(tables["m2v"]) == 30  # 10 songs are shared
    for direction, table in tables.items():
        assert sorted(table.query_id) == sorted(ref[direction])
        for i, q in enumerate(table.query_id):
            rank, positives, top, scores = ref[direction][q]
            assert int(table.rank[i]) == rank, (direction, q)
            assert table.positive_ids[i] == positives
            assert table.topk_ids[i] == top
            np.testing.assert_allclose(table.topk_scores[i], scores, rtol=1e-5, atol=1e-6)
    # A shared song has both its videos as positives.
    m2v = tables["m2v"]
    assert m2v.positive_ids[m2v.query_id.index("m02")] == ["v02<&>", "v03<&>"]


def test_topk_is_capped_by_the_gallery_and_ranks_can_be_passed_in():
    rows, video_ids, music_ids = _rows(n=8)
    fake = {"v2m": torch.arange(1, 9), "m2v": torch.arange(1, 7)}
    tables = query_tables(rows, video_ids, music_ids, topk=50, ranks=fake)
    assert all(len(t) == 6 for t in tables["v2m"].topk_ids)  # 6 distinct songs
    assert tables["v2m"].rank.tolist() == list(range(1, 9))


def test_parquet_files_load_in_one_line_with_list_columns(tmp_path):
    rows, video_ids, music_ids = _rows()
    tables = query_tables(rows, video_ids, music_ids, topk=4)
    write_tables(tables, tmp_path)
    t = pq.read_table(tmp_path / "per_query_v2m.parquet")
    assert t.column_names == ["query_id", "rank", "positive_ids", "topk_ids", "topk_scores"]
    assert t.schema.field("topk_ids").type.value_type == pa.string()
    assert t.schema.field("topk_scores").type.value_type == pa.float32()
    assert t.schema.field("rank").type == pa.int64()
    assert t.column("query_id").to_pylist() == tables["v2m"].query_id
    assert t.column("rank").to_pylist() == tables["v2m"].rank.tolist()
    assert t.column("topk_ids").to_pylist() == tables["v2m"].topk_ids
    both = concat_draws([tables, tables])
    write_tables(both, tmp_path)
    t = pq.read_table(tmp_path / "per_query_m2v.parquet")
    assert t.column_names[0] == "draw" and t.column("draw").to_pylist() == [0] * 30 + [1] * 30
    assert not list(tmp_path.glob(".*tmp*"))


def test_saved_embeddings_are_the_rows_with_their_ids(tmp_path):
    rows, video_ids, music_ids = _rows(n=10)
    save_embeddings(rows, video_ids, music_ids, tmp_path)
    assert np.array_equal(np.load(tmp_path / "embeddings_video.npy"), rows["video"].numpy())
    assert np.array_equal(np.load(tmp_path / "embeddings_music.npy"), rows["music"].numpy())
    ids = json.loads((tmp_path / "embeddings_ids.json").read_text())
    assert ids == {"video_id": video_ids, "music_id": music_ids}


# ----- a trained run ------------------------------------------------------------------------


def test_run_folder_ranks_agree_with_its_metrics(tiny_run):
    cfg, run = tiny_run["cfg"], tiny_run["run"]
    saved = json.loads((run / "metrics.json").read_text())
    for direction in ("v2m", "m2v"):
        t = pq.read_table(run / f"per_query_{direction}.parquet")
        ranks = torch.tensor(t.column("rank").to_pylist())
        recomputed = metrics_from_ranks(ranks, cfg.eval.ks)
        for name, value in recomputed.items():
            assert value == saved[f"test/{direction}/{name}"], (direction, name)
        assert t.num_rows == saved["test/gallery_size"] == 100
        assert all(len(x) == 7 for x in t.column("topk_ids").to_pylist())
        # A query whose rank is 1 has a positive first in its list.
        for rank, pos, top in zip(*(t.column(c).to_pylist()
                                    for c in ("rank", "positive_ids", "topk_ids"))):
            assert (rank == 1) == (top[0] in pos)
    assert (run / "report.html").is_file()


def test_per_query_table_reaches_the_offline_wandb_run(tiny_run):
    run = tiny_run["run"]
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    files = list((offline[0] / "files" / "media" / "table").rglob("*.table.json"))
    names = sorted(p.name for p in files)
    assert any("per_query_v2m" in n for n in names) and any("per_query_m2v" in n for n in names)
    v2m = json.loads(next(p for p in files if "per_query_v2m" in p.name).read_text())
    assert v2m["columns"] == ["query_id", "rank", "positive_ids", "topk_ids", "topk_scores"]
    parquet = pq.read_table(run / "per_query_v2m.parquet")
    worst = max(parquet.column("rank").to_pylist())
    assert len(v2m["data"]) == 100 and v2m["data"][0][1] == worst  # worst query first
    assert b"per_query_v2m" in next(offline[0].glob("run-*.wandb")).read_bytes()
