"""The CPU forward pass's elementwise and attention kernels, SIMD and scalar paths,
against numpy in float64."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest

from ffnskip import _core as core

PATHS = ["simd", "scalar"]


@contextlib.contextmanager
def path(name):
    prev = core._set_force_scalar(name == "scalar")
    try:
        yield
    finally:
        core._set_force_scalar(prev)


def ulp_distance(got, want):
    """Distance in float32 steps (both finite, same sign or zero)."""
    g = got.astype(np.float32).view(np.int32).astype(np.int64)
    w = want.astype(np.float32).view(np.int32).astype(np.int64)
    return np.abs(g - w)


# ---- exp ----------------------------------------------------------------------------

def exp_inputs():
    rng = np.random.default_rng(1)
    x = np.concatenate([
        np.linspace(-103.9, 88.72, 200001),      # whole range, denormal results included
        rng.uniform(-1, 1, 50000),              # around the reduction's small r
        rng.uniform(-0.35, 0.35, 50000),
        np.arange(-150, 128) * np.log(2),        # near the range reduction's ties
        np.array([0.0, -0.0, 1e-30, -1e-30, 88.7, -87.3, -100.0]),
    ]).astype(np.float32)
    return x


@pytest.mark.parametrize("p", PATHS)
def test_exp_within_two_ulp(p):
    x = exp_inputs()
    with path(p):
        got = core._vec_exp(x)
    want = np.exp(x.astype(np.float64))   # rounded to float32 in ulp_distance
    assert np.all(np.isfinite(got))
    assert ulp_distance(got, want).max() <= 2


@pytest.mark.parametrize("p", PATHS)
def test_exp_special_values(p):
    x = np.array([np.inf, -np.inf, np.nan, 89.0, 1000.0, -104.0, -1000.0, 0.0, -0.0, 88.72],
                 dtype=np.float32)
    with path(p):
        got = core._vec_exp(x)
    assert got[0] == np.inf and got[3] == np.inf and got[4] == np.inf
    assert got[1] == 0.0 and got[5] == 0.0 and got[6] == 0.0
    assert np.isnan(got[2])
    assert got[7] == 1.0 and got[8] == 1.0
    assert np.isfinite(got[9]) and got[9] > 3.3e38


def test_exp_does_not_depend_on_position():
    """The tail of an odd-length array takes the same arithmetic as the body."""
    x = exp_inputs()[:1003]
    whole = core._vec_exp(x)
    for shift in (1, 3, 7):
        np.testing.assert_array_equal(core._vec_exp(x[shift:]), whole[shift:])


# ---- swiglu -------------------------------------------------------------------------

def swiglu_ref(g, u):
    g = g.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        return g / (1.0 + np.exp(-g)) * u.astype(np.float64)


@pytest.mark.parametrize("p", PATHS)
def test_swiglu_matches_numpy(p):
    rng = np.random.default_rng(2)
    g = np.concatenate([rng.normal(0, 3, 20000), np.linspace(-100, 100, 4001),
                        [0.0, -0.0, 1e-20, -87.0, -89.0, -150.0, 150.0]]).astype(np.float32)
    u = rng.normal(0, 1, g.size).astype(np.float32)
    with path(p):
        got = core._swiglu(g, u)
    want = swiglu_ref(g, u)
    # exp within 2 ulp, then an add, a divide, a multiply: 5 ulp of the result. Below a
    # gate of -88.7 exp(-gate) overflows to inf and the result is -0 (as with std::exp)
    # where the true value is under 1.2e-36: compared absolutely.
    err = np.abs(got - want)
    assert np.all(err <= 5 * 2.0 ** -23 * np.abs(want) + 1.2e-36)


@pytest.mark.parametrize("p", PATHS)
def test_swiglu_special_values(p):
    g = np.array([np.inf, -np.inf, np.nan, 0.0, 1e30, -1e30], dtype=np.float32)
    u = np.array([2.0, 2.0, 2.0, 5.0, 1.0, 1.0], dtype=np.float32)
    with path(p):
        got = core._swiglu(g, u)
    # As std::exp gives them: silu(+inf) = inf, silu(-inf) = -inf / inf = nan,
    # silu(large negative) = -0.
    assert got[0] == np.inf
    assert np.isnan(got[1]) and np.isnan(got[2])
    assert got[3] == 0.0 and got[4] == np.float32(1e30) and got[5] == 0.0


def test_swiglu_simd_close_to_scalar_and_position_free():
    rng = np.random.default_rng(3)
    g = rng.normal(0, 4, 1001).astype(np.float32)
    u = rng.normal(0, 1, 1001).astype(np.float32)
    fast = core._swiglu(g, u)
    with path("scalar"):
        slow = core._swiglu(g, u)
    np.testing.assert_allclose(fast, slow, rtol=1e-6, atol=1e-30)
    np.testing.assert_array_equal(core._swiglu(g[5:], u[5:]), fast[5:])


# ---- rmsnorm ------------------------------------------------------------------------

@pytest.mark.parametrize("p", PATHS)
@pytest.mark.parametrize("n", [576, 1003, 5])
def test_rmsnorm_matches_numpy(p, n):
    rng = np.random.default_rng(n)
    x = (rng.normal(0, 1, n) * np.exp(rng.uniform(-6, 6, n))).astype(np.float32)
    w = rng.normal(0, 1, n).astype(np.float32)
    with path(p):
        got = core._rmsnorm(x, w, 1e-5)
    x64 = x.astype(np.float64)
    want = x64 / np.sqrt(np.mean(x64 * x64) + 1e-5) * w
    # The scale is rounded to float (1/sqrt in float), then two float products: 3 ulp.
    np.testing.assert_allclose(got, want, rtol=4 * 2.0 ** -23, atol=0)


# ---- attention ----------------------------------------------------------------------

def attend_ref(q, k, v, n_keys0):
    q, k, v = (a.astype(np.float64) for a in (q, k, v))
    out = np.empty_like(q)
    for i in range(q.shape[0]):
        n = n_keys0 + i
        s = k[:n] @ q[i] / np.sqrt(q.shape[1])
        p = np.exp(s - s.max())
        out[i] = (p / p.sum()) @ v[:n]
    return out


def fp16_values(rng, shape, scale):
    return (rng.normal(0, scale, shape)).astype(np.float16).astype(np.float32)


# head_dim 64 (SmolLM2), 128, 96 (a partial register block), 8, and 36 (scalar only).
@pytest.mark.parametrize("p", PATHS)
@pytest.mark.parametrize("hd,n_q,n_keys0", [(64, 1, 1), (64, 37, 1), (64, 16, 100), (128, 5, 70),
                                             (96, 9, 13), (8, 3, 200), (36, 4, 9)])
def test_attend_matches_numpy(p, hd, n_q, n_keys0):
    rng = np.random.default_rng(hd * 1000 + n_q)
    n_k = n_keys0 + n_q - 1
    q = fp16_values(rng, (n_q, hd), 1.0)
    k = fp16_values(rng, (n_k, hd), 1.0)
    v = fp16_values(rng, (n_k, hd), 2.0)
    q[0] *= 4   # a peaked softmax for the first query
    with path(p):
        got = core._attend(q, k, v, n_keys0)
    want = attend_ref(q, k, v, n_keys0)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.abs(v).max())


@pytest.mark.parametrize("p", PATHS)
def test_attend_query_alone_equals_batch(p):
    """A query's output is the same bits whether it runs alone or with others (the
    property that lets prompt batches and token-by-token decoding agree)."""
    rng = np.random.default_rng(7)
    hd, n_q, n_keys0 = 64, 21, 90
    q = fp16_values(rng, (n_q, hd), 1.0)
    k = fp16_values(rng, (n_keys0 + n_q + 5, hd), 1.0)
    v = fp16_values(rng, (n_keys0 + n_q + 5, hd), 1.0)
    with path(p):
        batch = core._attend(q, k, v, n_keys0)
        for i in (0, 5, 20):
            alone = core._attend(q[i:i + 1], k[:n_keys0 + i], v[:n_keys0 + i], n_keys0 + i)
            np.testing.assert_array_equal(alone[0], batch[i])
        tail = core._attend(q[7:], k, v, n_keys0 + 7)
        np.testing.assert_array_equal(tail, batch[7:])


def test_attend_simd_close_to_scalar():
    rng = np.random.default_rng(8)
    q = fp16_values(rng, (12, 64), 1.0)
    k = fp16_values(rng, (300, 64), 1.0)
    v = fp16_values(rng, (300, 64), 1.0)
    fast = core._attend(q, k, v, 289)
    with path("scalar"):
        slow = core._attend(q, k, v, 289)
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-5)


def test_attend_rejects_bad_shapes():
    q = np.zeros((2, 64), np.float32)
    k = np.zeros((5, 64), np.float32)
    with pytest.raises(ValueError, match="keys"):
        core._attend(q, k, k, 5)
    with pytest.raises(ValueError, match="head_dim"):
        core._attend(q, k[:, :32], k, 1)


# ---- a decode step's attention, through whole sessions --------------------------------
# One-token steps read the fp16 cache in place for all heads at once; these check
# them against the numpy reference forward (an F32 model, so attention is the only
# difference in arithmetic besides float rounding) and against the prompt path.

DECODE_SHAPES = [
    dict(n_embd=192, n_head=3, n_head_kv=1),    # head_dim 64, three queries per KV head
    dict(n_embd=180, n_head=9, n_head_kv=3),    # head_dim 20 -> scalar path (not a multiple of 8)
    dict(n_embd=160, n_head=4, n_head_kv=1),    # head_dim 40: a 32-dim slice and an 8-dim tail; 3 + 1 queries
    dict(n_embd=96, n_head=4, n_head_kv=2),     # head_dim 24: a 24-dim tail alone; 2 queries
    dict(n_embd=128, n_head=2, n_head_kv=2),    # head_dim 64, one query per KV head
]


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("shape", DECODE_SHAPES, ids=lambda s: f"{s['n_head']}x{s['n_embd'] // s['n_head']}/{s['n_head_kv']}")
def test_decode_steps_match_numpy(synthetic_model, shape, n_threads):
    import ffnskip
    from reference_forward import ReferenceModel

    path = synthetic_model(weight_type="F32", n_layer=2, n_ctx=128, seed=11, **shape)
    rng = np.random.default_rng(3)
    prompt = [int(t) for t in rng.integers(3, 300, 45)]
    steps = [int(t) for t in rng.integers(3, 300, 20)]   # 46..65 keys: partial and whole tiles
    ref = ReferenceModel(path, kv_f16=True)
    ref.forward(prompt, 0)
    want = np.stack([ref.forward([t])[0] for t in steps])

    session = ffnskip.Session(str(path), n_ctx=128, n_threads=n_threads)
    session.eval(prompt)
    got = np.stack([session.eval([t]) for t in steps])
    assert np.abs(got - want).max() / want.std() < 1e-3

    # The same tokens as one prompt give the same bits (the prompt path converts the
    # cache to float and batches queries; the step path must not change any sum).
    batch = ffnskip.Session(str(path), n_ctx=128, n_threads=n_threads).eval(prompt + steps, all_logits=True)
    np.testing.assert_array_equal(got, batch[len(prompt):])
