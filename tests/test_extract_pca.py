"""datamodules.extract.pca: PCA whitening (against an SVD reference), its file, row sampling,
and the YouTube-8M quantisation."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from datamodules.errors import DataError
from datamodules.extract.pca import FORMAT_VERSION, PCAWhitening, quantize, sample_rows
from datamodules.tfrecord import dequantize

N, D, K = 600, 48, 16
HALF_BIN = 4 / 255 / 2


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    """Correlated, offset, unevenly scaled frames with a clear eigenvalue gap structure."""
    rng = np.random.default_rng(0)
    scales = np.geomspace(10.0, 0.1, D)
    basis, _ = np.linalg.qr(rng.standard_normal((D, D)))
    return (rng.standard_normal((N, D)) * scales) @ basis.T + rng.uniform(-3, 3, D)


@pytest.fixture(scope="module")
def pca(data) -> PCAWhitening:
    return PCAWhitening.fit(data, dim=K, eps=1e-8)


def _svd_whitening(x: np.ndarray, k: int) -> np.ndarray:
    """Independent reference: SVD of the centred data, signs per the documented convention."""
    xc = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    v = vt[:k].T
    big = v[np.argmax(np.abs(v), axis=0), np.arange(k)]
    v = v * np.sign(big)
    return (xc @ v) / (s[:k] / np.sqrt(len(x) - 1))


def test_whitened_sample_has_identity_covariance(data, pca):
    y = pca.transform(data)
    assert y.shape == (N, K) and y.dtype == np.float32
    np.testing.assert_allclose(np.cov(y, rowvar=False), np.eye(K), atol=1e-3)
    np.testing.assert_allclose(y.mean(axis=0), 0, atol=1e-4)


def test_matches_svd_reference(data, pca):
    np.testing.assert_allclose(pca.transform(data), _svd_whitening(data, K), rtol=0, atol=1e-4)
    _, s, _ = np.linalg.svd(data - data.mean(axis=0), full_matrices=False)
    np.testing.assert_allclose(pca.eigenvalues, s[:K] ** 2 / (N - 1), rtol=1e-9)
    assert np.all(np.diff(pca.eigenvalues) <= 0)  # decreasing


def test_sign_convention_and_orthonormal(pca):
    c = pca.components
    biggest = c[np.argmax(np.abs(c), axis=0), np.arange(K)]
    assert np.all(biggest > 0)
    np.testing.assert_allclose(c.T @ c, np.eye(K), atol=1e-10)


def test_transform_is_the_formula(data, pca):
    x = data[:7].astype(np.float32)
    want = ((x - pca.mean) @ pca.components) / np.sqrt(pca.eigenvalues + pca.eps)
    np.testing.assert_allclose(pca.transform(x), want, rtol=1e-6, atol=1e-6)
    assert pca.input_dim == D and pca.output_dim == K


def test_fit_is_deterministic_and_accepts_uint8(data):
    a = PCAWhitening.fit(data, dim=K)
    b = PCAWhitening.fit(data.copy(), dim=K)
    np.testing.assert_array_equal(a.components, b.components)
    codes = np.random.default_rng(1).integers(0, 256, (100, 8), dtype=np.uint8)
    y = PCAWhitening.fit(codes, dim=4).transform(codes)
    assert y.shape == (100, 4) and np.isfinite(y).all()


def test_too_few_samples(data):
    with pytest.raises(DataError) as info:
        PCAWhitening.fit(data[:K], dim=K)
    assert str(info.value) == (f"PCA to {K} dimensions needs at least {K + 1} frames, got {K}: "
                               "lower the PCA dimension or sample more frames")
    PCAWhitening.fit(data[: K + 1], dim=K)  # exactly enough


def test_dimension_too_large(data):
    with pytest.raises(DataError, match=rf"needs features with at least {D + 1} dimensions, "
                                        rf"got {D}: lower the PCA dimension"):
        PCAWhitening.fit(data, dim=D + 1)


def test_non_finite_frames(data):
    bad = data.copy()
    bad[3, 2] = np.nan
    with pytest.raises(DataError, match="non-finite"):
        PCAWhitening.fit(bad, dim=K)


# ----- the file


def test_save_load_round_trip_is_exact(pca, data, tmp_path):
    path = tmp_path / "sub" / "pca.npz"
    pca.save(path)
    got = PCAWhitening.load(path)
    for name in ("mean", "components", "eigenvalues"):
        np.testing.assert_array_equal(getattr(got, name), getattr(pca, name))
        assert getattr(got, name).dtype == getattr(pca, name).dtype
    assert got.eps == pca.eps
    np.testing.assert_array_equal(got.transform(data), pca.transform(data))
    assert [p.name for p in path.parent.iterdir()] == ["pca.npz"]  # no temporary left behind


def _load_error(path) -> str:
    with pytest.raises(DataError) as info:
        PCAWhitening.load(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ")
    return msg


def _write(path, **arrays) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _arrays(pca: PCAWhitening) -> dict:
    return {"format_version": np.int64(FORMAT_VERSION), "mean": pca.mean,
            "components": pca.components, "eigenvalues": pca.eigenvalues,
            "eps": np.float64(pca.eps)}


def test_missing_file(tmp_path):
    assert _load_error(tmp_path / "none.npz") == f"{tmp_path / 'none.npz'}: PCA file not found"


def test_corrupt_files(pca, tmp_path):
    text = tmp_path / "text.npz"
    text.write_text("not a zip\n")
    assert _load_error(text) == f"{text}: not a PCA file (not an .npz archive)"
    cut = tmp_path / "cut.npz"
    pca.save(cut)
    cut.write_bytes(cut.read_bytes()[:-200])
    assert _load_error(cut) == f"{cut}: corrupt PCA file (File is not a zip file)"
    flipped = tmp_path / "flipped.npz"
    pca.save(flipped)
    raw = bytearray(flipped.read_bytes())
    with zipfile.ZipFile(flipped) as z:  # damage the middle of the components array
        info = z.getinfo("components.npy")
    raw[info.header_offset + 200 + info.compress_size // 2] ^= 0xFF
    flipped.write_bytes(bytes(raw))
    assert _load_error(flipped) == f"{flipped}: corrupt PCA file (Bad CRC-32 for file " \
                                   "'components.npy')"
    npy = tmp_path / "plain.npz"
    with open(npy, "wb") as f:
        np.save(f, np.zeros(3))
    assert _load_error(npy) == f"{npy}: not a PCA file (an .npy array, expected an .npz)"


def test_missing_arrays(pca, tmp_path):
    p = tmp_path / "partial.npz"
    arrays = _arrays(pca)
    del arrays["eps"], arrays["mean"]
    _write(p, **arrays)
    assert _load_error(p) == f"{p}: not a PCA file: missing arrays mean, eps"


def test_inconsistent_shapes(pca, tmp_path):
    p = tmp_path / "shapes.npz"
    _write(p, **{**_arrays(pca), "eigenvalues": pca.eigenvalues[:-1]})
    assert _load_error(p) == (
        f"{p}: bad PCA file: inconsistent shapes: mean [{D}], components [{D}, {K}], "
        f"eigenvalues [{K - 1}] (expected [D], [D, K], [K], K <= D)")


def test_non_finite_values(pca, tmp_path):
    p = tmp_path / "nan.npz"
    mean = pca.mean.copy()
    mean[0] = np.inf
    _write(p, **{**_arrays(pca), "mean": mean})
    assert _load_error(p) == f"{p}: bad PCA file: mean has non-finite values"


def test_other_format_version(pca, tmp_path):
    p = tmp_path / "v9.npz"
    _write(p, **{**_arrays(pca), "format_version": np.int64(9)})
    assert _load_error(p) == (f"{p}: PCA file format version 9, this code reads version "
                              f"{FORMAT_VERSION}")


# ----- sampling frames across videos


def test_sample_rows_deterministic_and_real():
    rng = np.random.default_rng(5)
    videos = [rng.standard_normal((n, 6)) for n in (30, 1, 0, 17, 52)]
    a = sample_rows(videos, 40, seed=7)
    assert a.shape == (40, 6)
    np.testing.assert_array_equal(a, sample_rows(videos, 40, seed=7))
    assert not np.array_equal(a, sample_rows(videos, 40, seed=8))
    everything = np.concatenate(videos)
    index = {row.tobytes(): i for i, row in enumerate(everything)}
    picked = [index[row.tobytes()] for row in a]  # every sampled row exists ...
    assert len(set(picked)) == 40 and picked == sorted(picked)  # ... once, in order
    np.testing.assert_array_equal(sample_rows(videos, 1000, seed=7), everything)


def test_sample_rows_is_uniform_over_frames():
    videos = [np.full((n, 1), i) for i, n in enumerate((10, 90))]
    counts = np.zeros(2)
    for seed in range(200):
        counts += np.bincount(sample_rows(videos, 10, seed)[:, 0], minlength=2)
    assert abs(counts[1] / counts.sum() - 0.9) < 0.02  # by frames, not by videos


def test_sample_rows_rejects_mixed_dims():
    with pytest.raises(ValueError, match="one D"):
        sample_rows([np.zeros((3, 4)), np.zeros((3, 5))], 2, seed=0)


# ----- quantisation (YouTube-8M: clip to [-2, 2], 256 codes)


def test_quantize_round_trip_within_half_a_bin():
    x = np.linspace(-2.5, 2.5, 100_001)
    q = quantize(x)
    assert q.dtype == np.uint8
    err = np.abs(dequantize(q).astype(np.float64) - np.clip(x, -2, 2))
    assert err.max() <= HALF_BIN + 1e-6


def test_quantize_boundaries_and_clipping():
    q = quantize(np.array([-2.0, 0.0, 2.0, -7.0, 7.0, -np.inf, np.inf]))
    # code k decodes to k*4/255 - 2 + 4/512, so x -> (x + 2 - 4/512) * 255/4 rounded:
    # -2 -> -0.498 -> 0, 0 -> 127.002 -> 127, 2 -> 254.502 -> 255; beyond +-2 clips.
    assert q.tolist() == [0, 127, 255, 0, 255, 0, 255]
    assert np.all(quantize(dequantize(np.arange(256, dtype=np.uint8))) == np.arange(256))


def test_quantize_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        quantize(np.array([0.0, np.nan]))


def test_one_quantize_in_the_project():
    from datamodules.synthetic import youtube8m

    assert youtube8m.quantize is quantize
