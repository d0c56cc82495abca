"""The surrogate fit (python/ffnskip/surrogate.py) against direct numpy least squares
on the data matrices, and the sidecar file round trip."""
from __future__ import annotations

import numpy as np
import pytest

from ffnskip import surrogate as sg

D = 24


def _data(n: int, rng: np.random.Generator, true_rank: int = D, noise: float = 0.0):
    u = rng.standard_normal((n, D)) * rng.uniform(0.5, 2.0, D) + rng.standard_normal(D)
    a = rng.standard_normal((D, true_rank)) @ rng.standard_normal((true_rank, D)) / D
    b = rng.standard_normal(D)
    f = u @ a.T + b + noise * rng.standard_normal((n, D))
    return u, f


def _stats(u, f):
    s = sg.FfnStats(D)
    s.add(u, f)
    return s


def test_full_rank_without_ridge_is_ordinary_least_squares():
    rng = np.random.default_rng(1)
    u, f = _data(400, rng, noise=0.3)
    s = sg.fit(_stats(u, f), rank=None, ridge=0.0)
    x = np.hstack([u, np.ones((len(u), 1))])
    coef = np.linalg.lstsq(x, f, rcond=None)[0]           # (D + 1, D)
    np.testing.assert_allclose(s(u), x @ coef, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(s.linear(), coef[:D].T, rtol=1e-8, atol=1e-9)


def test_reduced_rank_equals_projection_of_fitted_values():
    rng = np.random.default_rng(2)
    u, f = _data(500, rng, noise=0.5)
    x = np.hstack([u, np.ones((len(u), 1))])
    fitted = x @ np.linalg.lstsq(x, f, rcond=None)[0]
    centred = fitted - fitted.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    for rank in (1, 5, 12):
        p = vt[:rank].T @ vt[:rank]
        expected = fitted.mean(axis=0) + centred @ p
        s = sg.fit(_stats(u, f), rank=rank, ridge=0.0)
        assert s.rank == rank and s.up.shape == (rank, D) and s.down.shape == (D, rank)
        np.testing.assert_allclose(s(u), expected, rtol=1e-7, atol=1e-7)
        # No rank-r affine map of the same family does better: a random rank-r one is worse.
        err = np.sum((f - s(u)) ** 2)
        other = sg.Surrogate(bias=s.bias, up=rng.standard_normal((rank, D)) * 0.1, down=s.down)
        assert np.sum((f - other(u)) ** 2) > err


def test_exactly_low_rank_data_is_fitted_exactly():
    rng = np.random.default_rng(3)
    u, f = _data(300, rng, true_rank=4)
    s = sg.fit(_stats(u, f), rank=4, ridge=0.0)
    assert sg.relative_error(s, _stats(u, f)) < 1e-12
    np.testing.assert_allclose(s(u), f, rtol=1e-8, atol=1e-8)
    assert sg.relative_error(sg.fit(_stats(u, f), rank=3, ridge=0.0), _stats(u, f)) > 1e-4


def test_rank_zero_is_the_mean_output():
    rng = np.random.default_rng(4)
    u, f = _data(100, rng)
    s = sg.fit(_stats(u, f), rank=0)
    assert s.rank == 0
    np.testing.assert_allclose(s(u[:3]), np.tile(f.mean(axis=0), (3, 1)), rtol=1e-12)


def test_error_from_statistics_equals_error_on_the_data():
    rng = np.random.default_rng(5)
    u, f = _data(200, rng, noise=1.0)
    held_u, held_f = _data(150, np.random.default_rng(6), noise=1.0)
    for rank, ridge in ((None, 0.0), (7, 0.1), (0, 0.0)):
        s = sg.fit(_stats(u, f), rank=rank, ridge=ridge)
        direct = float(np.sum((held_f - s(held_u)) ** 2))
        assert sg.squared_error(s, _stats(held_u, held_f)) == pytest.approx(direct, rel=1e-9)
        assert sg.relative_error(s, _stats(held_u, held_f)) == pytest.approx(direct / np.sum(held_f ** 2), rel=1e-9)


def test_ridge_is_chosen_by_held_out_error():
    rng = np.random.default_rng(7)
    # Few noisy pairs: some ridge must beat none on held-out data.
    u, f = _data(40, rng, noise=2.0)
    hu, hf = _data(400, rng, noise=2.0)
    grid = (0.0, 1e-2, 1e-1, 1.0, 10.0)
    best = sg.fit_best(_stats(u, f), _stats(hu, hf), rank=None, ridges=grid)
    errors = {r: float(np.sum((hf - sg.fit(_stats(u, f), None, r)(hu)) ** 2)) / float(np.sum(hf ** 2)) for r in grid}
    assert best.ridge == min(errors, key=errors.get)
    assert best.held_out_error == pytest.approx(min(errors.values()), rel=1e-9)
    assert best.ridge > 0


def test_sink_positions_are_left_out():
    rng = np.random.default_rng(8)
    u, f = _data(10, rng)
    f[0] *= 1000.0                                       # an attention-sink-like outlier
    stats = sg.FfnStats(D)
    kept = sg.accumulate(stats, u, f, positions=range(10))
    assert kept == 10 - sg.SINK_POSITIONS and stats.n == kept
    np.testing.assert_allclose(stats.sum_f, f[sg.SINK_POSITIONS:].sum(axis=0))
    with pytest.raises(ValueError, match="positions"):
        sg.accumulate(stats, u, f, positions=range(9))


def test_merge_equals_one_pass():
    rng = np.random.default_rng(9)
    u, f = _data(60, rng)
    a, b = _stats(u[:25], f[:25]), _stats(u[25:], f[25:])
    a.merge(b)
    whole = _stats(u, f)
    for name in ("sum_u", "sum_f", "uu", "uf"):
        np.testing.assert_allclose(getattr(a, name), getattr(whole, name), rtol=1e-12)
    assert a.n == whole.n and a.ff == pytest.approx(whole.ff)


@pytest.mark.parametrize("bad", [
    lambda s: sg.fit(s, rank=D + 1),
    lambda s: sg.fit(s, rank=-1),
    lambda s: sg.fit(s, rank=2, ridge=-1.0),
    lambda s: sg.fit(sg.FfnStats(D), rank=2),
    lambda s: s.add(np.zeros((2, D)), np.zeros((2, D + 1))),
    lambda s: s.add(np.full((2, D), np.nan), np.zeros((2, D))),
    lambda s: sg.fit_best(s, s, rank=2, ridges=()),
])
def test_bad_arguments_are_value_errors(bad):
    u, f = _data(20, np.random.default_rng(10))
    with pytest.raises(ValueError):
        bad(_stats(u, f))


@pytest.mark.parametrize("dtype,tol", [("f32", 1e-6), ("f16", 2e-3)])
def test_sidecar_round_trip(tmp_path, dtype, tol):
    rng = np.random.default_rng(11)
    u, f = _data(200, rng, noise=0.1)
    sur = {2: sg.fit(_stats(u, f), rank=8), 5: sg.fit(_stats(u, f), rank=0)}
    path = tmp_path / "m.surrogates.gguf"
    sg.save(path, sur, n_embd=D, n_layer=6, meta={"rank": 8, "text": "calib.txt", "tokens": 200}, dtype=dtype)
    loaded, meta = sg.load(path, n_embd=D, n_layer=6)
    assert sorted(loaded) == [2, 5]
    assert meta["rank"] == 8 and meta["text"] == "calib.txt" and meta["n_layer"] == 6
    assert loaded[5].rank == 0 and loaded[2].rank == 8
    for layer, s in sur.items():
        np.testing.assert_allclose(loaded[layer](u[:5]), s(u[:5]), rtol=tol, atol=tol * np.abs(s(u[:5])).max())
    assert not list(tmp_path.glob("*.tmp*"))


def test_sidecar_mismatch_and_damage_are_clear_errors(tmp_path):
    rng = np.random.default_rng(12)
    u, f = _data(50, rng)
    path = tmp_path / "s.gguf"
    sg.save(path, {1: sg.fit(_stats(u, f), rank=3)}, n_embd=D, n_layer=4)
    with pytest.raises(ValueError, match="n_embd"):
        sg.load(path, n_embd=D + 8)
    with pytest.raises(ValueError, match="n_layer"):
        sg.load(path, n_layer=30)
    with pytest.raises(FileNotFoundError):
        sg.load(tmp_path / "missing.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(ValueError, match="junk.gguf"):
        sg.load(tmp_path / "junk.gguf")
    with pytest.raises(ValueError, match="layer 9"):
        sg.save(tmp_path / "x.gguf", {9: sg.fit(_stats(u, f), rank=3)}, n_embd=D, n_layer=4)
    assert not (tmp_path / "x.gguf").exists()
