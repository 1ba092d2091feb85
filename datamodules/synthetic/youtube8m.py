"""Write the planted benchmark as YouTube-8M frame-level TFRecords (what `datamodules.youtube8m`
prepares).

    <out>/frame/{train,validate,test}XXXX.tfrecord   SequenceExamples: context id, labels,
                                                     optional text and text_emb; feature
                                                     lists rgb (1024 uint8 per second),
                                                     audio (128)
    <out>/vocabulary.csv                             the YouTube-8M vocabulary format
    <out>/truth.tsv, <out>/synth.json                hidden truth and the generator settings

Every planted pair is a music video: its labels are MUSIC_VIDEO_LABEL ("Music video") plus
1-3 random other labels; its `rgb` sequence is the planted video and its `audio` sequence
the planted (possibly noisy) music. A further `non_music` fraction of records carries only
other labels; `datamodules.youtube8m` must filter them out. Lengths vary per video: most
are full length, some shorter, a few only 1-2 seconds. A fraction `missing` of pairs is
written without the `audio` list, as happens in real files. With `shared_songs` several
records carry one song's audio (same content, their own per-frame noise); truth.tsv says
which. Training pairs left out by `spec.train_pairs` are not written.

Quantisation: YouTube-8M stores PCA-whitened features as uint8 codes of values clipped to
[-2, 2]. The planted features have arbitrary per-dimension scales and offsets, so each
dimension is first standardised to mean 0 and standard deviation 0.5 (statistics of a fixed
sample of pairs) and then quantised: q = round((x - 4/512 + 2) * 255/4), clipped to 0..255.

Text embeddings: with text, each planted pair also gets a `text_emb` context feature (floats,
`text_emb_dim` of them; 0 leaves it out), a deterministic stand-in for a sentence encoder
(see `text_embeddings`): the record's bag of hashed tokens (CRC-32 of the lower-cased
alphanumeric runs, as `models.text.hash_tokens`, in TEXT_EMB_BUCKETS buckets) times a fixed
Gaussian projection drawn from the generator seed `[spec.seed, 89]`, L2-normalised. Same seed
and text, same vectors; texts of one style share tokens, so their embeddings correlate.
"""

from __future__ import annotations

import dataclasses
import re
import zlib
from pathlib import Path

import numpy as np

from datamodules.atomic import atomic_directory
from datamodules.extract.pca import quantize
from datamodules.progress import progress_bar
from datamodules.synthetic.ensure import refuse_other_data, write_marker
from datamodules.synthetic.planted import PlantedBenchmark, PlantedSpec
from datamodules.synthetic.truth import TRUTH_FILE, truth_tsv
from datamodules.tfrecord import encode_sequence_example, frame_record

MUSIC_VIDEO_LABEL = 23
# A small vocabulary in the YouTube-8M format; "Music video" sits at MUSIC_VIDEO_LABEL.
LABEL_NAMES = (
    "Game", "Video game", "Vehicle", "Concert", "Musician", "Cartoon", "Performance art", "Car",
    "Dance", "Guitar", "String instrument", "Food", "Association football", "Musical ensemble",
    "Animation", "Animal", "Fashion", "Racing", "Motorsport", "Outdoor recreation", "Drummer",
    "Cooking", "Piano", "Music video", "Toy", "Pet", "Recipe", "Sports car", "Smartphone",
    "Orchestra", "Choir", "Festival", "Cosmetics", "Dog", "Cat", "Aircraft", "Fishing", "Horse",
    "Basketball", "Skateboarding",
)
VOCAB_HEADER = ("Index,TrainVideoCount,KnowledgeGraphId,Name,WikiUrl,Vertical1,Vertical2,"
                "Vertical3,WikiDescription")
SPLIT_PREFIX = {"train": "train", "val": "validate", "test": "test"}
CHUNK = 256
_STD = 0.5
TEXT_EMB_BUCKETS = 4096
_TOKEN = re.compile(r"[0-9a-z]+")


def vocabulary_csv() -> str:
    rows = [VOCAB_HEADER]
    for i, name in enumerate(LABEL_NAMES):
        wiki = f"https://en.wikipedia.org/wiki/{name.replace(' ', '_')}"
        rows.append(f'{i},{1000 - 10 * i},/m/0{i:04x},{name},{wiki},Arts & Entertainment,,,'
                    f'"{name}, a synthetic label."')
    return "\n".join(rows) + "\n"


def text_embeddings(texts: list[str], dim: int, seed: int) -> np.ndarray:
    """float32 [len(texts), dim]: unit-norm random projections of bags of hashed tokens.

    The stand-in for a sentence encoder (module docstring); a text without tokens gives the
    zero vector.
    """
    if dim < 1:
        raise ValueError(f"text_emb_dim={dim} must be >= 1")
    proj = np.random.default_rng([seed, 89]).standard_normal((TEXT_EMB_BUCKETS, dim))
    emb = np.zeros((len(texts), dim))
    for row, text in enumerate(texts):
        # bag of tokens @ proj: the projection rows of the tokens' buckets, repeats counted
        buckets = [zlib.crc32(t.encode()) % TEXT_EMB_BUCKETS for t in _TOKEN.findall(text.lower())]
        if buckets:
            emb[row] = proj[buckets].sum(axis=0)
    norm = np.linalg.norm(emb, axis=1, keepdims=True)
    return (emb / np.maximum(norm, 1e-12)).astype(np.float32)


def _lengths(rng: np.random.Generator, n: int, full: int) -> np.ndarray:
    """Per-video lengths: 80 % full, 17 % half to full, 3 % only 1-2 frames."""
    u = rng.random(n)
    length = np.full(n, full)
    some = (u >= 0.8) & (u < 0.97)
    length[some] = np.ceil(rng.uniform(0.5, 1.0, some.sum()) * full)
    tiny = u >= 0.97
    length[tiny] = rng.integers(1, 3, tiny.sum())
    return np.clip(length, 1, full).astype(np.int64)


def _other_labels(rng: np.random.Generator) -> list[int]:
    others = [i for i in range(len(LABEL_NAMES)) if i != MUSIC_VIDEO_LABEL]
    return [int(v) for v in rng.choice(others, rng.integers(1, 4), replace=False)]


def write_youtube8m(
    spec: PlantedSpec,
    out: str | Path,
    shards: int = 4,
    text: bool = False,
    progress: bool = True,
    non_music: float = 0.25,
    missing: float = 0.0,
    text_emb_dim: int = 64,
    shared_songs: float = 0.0,
) -> Path:
    """Write `spec` as YouTube-8M frame-level files under `out` (atomically); returns `out`.

    With text, `text_emb_dim` > 0 also writes each pair's `text_emb` (module docstring).
    """
    if spec.music_dim != 128 or spec.video_dim != 1024:
        spec = dataclasses.replace(spec, music_dim=128, video_dim=1024)
    if text and not spec.text:
        spec = dataclasses.replace(spec, text=True)
    if shards < 1:
        raise ValueError(f"shards={shards} must be >= 1")
    if spec.min_frames:
        raise ValueError(f"min_frames={spec.min_frames}: the youtube8m writer draws its own "
                         "video lengths; use 0")
    if non_music < 0.0 or not 0.0 <= missing < 1.0:
        raise ValueError(f"non_music={non_music} must be >= 0 and missing={missing} in [0, 1)")
    if text_emb_dim < 0:
        raise ValueError(f"text_emb_dim={text_emb_dim} must be >= 0 (0: no text embeddings)")
    out = Path(out)
    refuse_other_data(out)
    bench = PlantedBenchmark(spec, shared_songs=shared_songs)
    n = spec.pairs
    text_emb = None
    if bench.text is not None and text_emb_dim > 0:
        text_emb = text_embeddings(bench.text, text_emb_dim, spec.seed)
    rng = np.random.default_rng([spec.seed, 88])
    # rgb and audio are both 1 Hz in YouTube-8M: one length per video, scaled per modality.
    video_len = _lengths(rng, n, spec.video_frames)
    music_len = np.ceil(video_len * spec.music_frames / spec.video_frames).astype(np.int64)
    lengths = {"video": video_len, "music": np.clip(music_len, 1, spec.music_frames)}
    no_audio = rng.random(n) < missing
    labels = [sorted([MUSIC_VIDEO_LABEL, *_other_labels(rng)]) for _ in range(n)]
    # Standardisation statistics from a fixed sample of pairs (see the module docstring).
    sample = np.arange(min(n, CHUNK))
    stats = {}
    for name, frames in (("video", bench.video_frames), ("music", bench.music_frames)):
        x = frames(sample).reshape(-1, spec.video_dim if name == "video" else spec.music_dim)
        stats[name] = (x.mean(axis=0), x.std(axis=0) / _STD + 1e-6)
    # Non-music records: other ids, other labels, random codes.
    n_other = int(round(non_music * n))
    other_ids = [f"x{k:06d}" for k in range(n_other)]
    other_split = rng.choice(["train", "val", "test"], n_other, p=[0.8, 0.1, 0.1])
    other_len = rng.integers(1, spec.video_frames + 1, n_other)
    other_at = rng.integers(0, n + 1, n_other)  # interleave before pair `other_at`

    def records(split: str):
        members = np.flatnonzero(bench.split == split)
        others = [k for k in np.argsort(other_at, kind="stable") if other_split[k] == split]
        o = 0
        for start in range(0, len(members), CHUNK):
            idx = members[start : start + CHUNK]
            video = quantize((bench.video_frames(idx) - stats["video"][0]) / stats["video"][1])
            music = quantize((bench.music_frames(idx) - stats["music"][0]) / stats["music"][1])
            for row, i in enumerate(idx):
                while o < len(others) and other_at[others[o]] <= i:
                    yield _other_record(rng, other_ids[others[o]], int(other_len[others[o]]))
                    o += 1
                ctx = {"id": bench.ids[i], "labels": labels[i]}
                if bench.text is not None:
                    ctx["text"] = bench.text[i]
                if text_emb is not None:
                    ctx["text_emb"] = text_emb[i]
                lists = {"rgb": list(video[row, : lengths["video"][i]])}
                if not no_audio[i]:
                    lists["audio"] = list(music[row, : lengths["music"][i]])
                yield encode_sequence_example(ctx, {k: [r.tobytes() for r in v]
                                                    for k, v in lists.items()})
                bar.update(1)
        for k in others[o:]:
            yield _other_record(rng, other_ids[k], int(other_len[k]))

    with atomic_directory(out) as tmp:
        (tmp / "frame").mkdir()
        bar = progress_bar(progress, total=n, desc=f"synth youtube8m -> {out}", unit="pair")
        for split, prefix in SPLIT_PREFIX.items():
            total = int((bench.split == split).sum() + (other_split == split).sum())
            per = -(-total // shards)  # records per file; the last files may hold fewer
            files = [open(tmp / "frame" / f"{prefix}{s:04d}.tfrecord", "wb")
                     for s in range(shards)]
            try:
                for k, payload in enumerate(records(split)):
                    files[k // per].write(frame_record(payload))
            finally:
                for f in files:
                    f.close()
        bar.close()
        (tmp / "vocabulary.csv").write_text(vocabulary_csv())
        (tmp / TRUTH_FILE).write_text(truth_tsv(bench))
        settings = {"dataset": "youtube8m", "shards": shards, "non_music": non_music,
                    "missing": missing, "shared_songs": shared_songs,
                    **dataclasses.asdict(spec)}
        if text_emb is not None:  # absent otherwise, as in files written before text_emb
            settings["text_emb_dim"] = text_emb_dim
        write_marker(tmp, settings)
    return out


def _other_record(rng: np.random.Generator, vid: str, length: int) -> bytes:
    rgb = rng.integers(0, 256, (length, 1024), dtype=np.uint8)
    audio = rng.integers(0, 256, (length, 128), dtype=np.uint8)
    return encode_sequence_example(
        {"id": vid, "labels": sorted(_other_labels(rng))},
        {"rgb": [r.tobytes() for r in rgb], "audio": [r.tobytes() for r in audio]},
    )
