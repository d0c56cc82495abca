"""Block formats against independent oracles.

- Decoding: every type against `gguf.quants.dequantize` (the numpy decoder of the gguf
  package), bit for bit. Q8_1 and Q8_K have no gguf decoder; they are rebuilt here in
  numpy from the raw bytes (d * q).
- Activation quantizers: Q8_0 against `gguf.quants.quantize`, BF16 against gguf, F16
  against numpy's float16 cast, Q8_1 / Q8_K against numpy versions of llama.cpp's
  reference quantizers written out below.
- Dot products: SIMD and scalar paths against a float64 numpy dot of the decoded weight
  row and the activation row rebuilt from its raw bytes. Each SIMD path (avx2, avx512) is
  forced in turn where this CPU runs it, skipped where it does not.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf import quants as gq  # noqa: E402

from ffnskip import _core as core  # noqa: E402

QK_K = 256

SIMD_PATHS = ["avx2", "avx512"]


@contextlib.contextmanager
def simd_path(level: str):
    """Runs the block with the kernels of `level`; skips where this CPU cannot run it."""
    if level not in core._simd_levels():
        pytest.skip(f"this CPU or build has no {level} path")
    prev = core._set_simd_level(level)
    try:
        yield
    finally:
        core._set_simd_level(prev)

ALL_TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1",
             "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K"]

# Block size and bytes per block as ggml defines them (ggml-common.h).
BLOCK = {"F32": (1, 4), "F16": (1, 2), "BF16": (1, 2), "Q4_0": (32, 18), "Q4_1": (32, 20),
         "Q5_0": (32, 22), "Q5_1": (32, 24), "Q8_0": (32, 34), "Q8_1": (32, 36),
         "Q2_K": (256, 84), "Q3_K": (256, 110), "Q4_K": (256, 144), "Q5_K": (256, 176),
         "Q6_K": (256, 210), "Q8_K": (256, 292)}

# llama.cpp's CPU backend: the activation format each weight type is multiplied with.
VEC_DOT_TYPE = {"F32": "F32", "F16": "F16", "BF16": "BF16",
                "Q4_0": "Q8_0", "Q5_0": "Q8_0", "Q8_0": "Q8_0",
                "Q4_1": "Q8_1", "Q5_1": "Q8_1", "Q8_1": "Q8_1",
                "Q2_K": "Q8_K", "Q3_K": "Q8_K", "Q4_K": "Q8_K", "Q5_K": "Q8_K", "Q6_K": "Q8_K",
                "Q8_K": "Q8_K"}

# Byte offsets of the fp16 scale fields inside one block (ggml block structs; the same
# order gguf.quants splits the blocks in).
F16_FIELDS = {"Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0], "Q8_1": [0, 2],
              "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}

GGUF_QUANTIZABLE = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def sane_f16(rng: np.random.Generator, size: int) -> np.ndarray:
    """Finite fp16 scales over a wide range (a few subnormals, both signs)."""
    mag = 2.0 ** rng.uniform(-16, 3, size)
    sign = rng.choice([-1.0, 1.0], size)
    return (sign * mag).astype(np.float16)


def random_blocks(rng: np.random.Generator, tname: str, n_blocks: int) -> np.ndarray:
    """Random block bytes with the scale fields set to sane finite values."""
    bs, ts = BLOCK[tname]
    if tname == "F32":
        return rng.standard_normal(n_blocks).astype(np.float32).view(np.uint8)
    if tname == "F16":
        h = rng.integers(0, 1 << 16, n_blocks, dtype=np.uint32).astype(np.uint16)
        nan = (h & 0x7C00) == 0x7C00
        h[nan] &= 0x83FF   # no inf/NaN: the hardware conversion numpy uses quiets NaNs
        return h.view(np.uint8)
    if tname == "BF16":
        return rng.integers(0, 1 << 16, n_blocks, dtype=np.uint32).astype(np.uint16).view(np.uint8)
    raw = rng.integers(0, 256, (n_blocks, ts), dtype=np.uint16).astype(np.uint8)
    if tname == "Q8_K":
        d = (2.0 ** rng.uniform(-12, 0, n_blocks)).astype(np.float32)
        raw[:, 0:4] = d.reshape(-1, 1).view(np.uint8)
    else:
        for off in F16_FIELDS[tname]:
            raw[:, off:off + 2] = sane_f16(rng, n_blocks).reshape(-1, 1).view(np.uint8)
    return raw.reshape(-1)


def reference_dequantize(tname: str, data: np.ndarray) -> np.ndarray:
    """Oracle decoder: gguf where it has one, numpy d * q for the 8-bit activation formats."""
    if tname == "Q8_1":
        blk = data.reshape(-1, 36)
        d = blk[:, 0:2].copy().view(np.float16).astype(np.float32)
        return (blk[:, 4:].copy().view(np.int8).astype(np.float32) * d).reshape(-1)
    if tname == "Q8_K":
        blk = data.reshape(-1, 292)
        d = blk[:, 0:4].copy().view(np.float32)
        return (d * blk[:, 4:260].copy().view(np.int8).astype(np.float32)).reshape(-1)
    return np.asarray(gq.dequantize(data, T[tname]), dtype=np.float32).reshape(-1)


# ---- type table ----------------------------------------------------------------------

@pytest.mark.parametrize("tname", ALL_TYPES)
def test_type_info(tname):
    info = core._type_info(tname)
    assert (info["block_size"], info["type_size"]) == BLOCK[tname]
    assert info["vec_dot_type"] == VEC_DOT_TYPE[tname]
    if tname != "Q8_1":
        # gguf-py still lists the old 40-byte float layout of Q8_1; ggml's block is 36 bytes
        assert (info["block_size"], info["type_size"]) == gguf.GGML_QUANT_SIZES[T[tname]]
    assert core._type_info(tname.lower())["type_size"] == BLOCK[tname][1]


def test_type_names_cover_every_ggml_type():
    for member in T:
        assert core._type_name(int(member)) == member.name
    assert core._type_name(4) == "Q4_2"
    assert core._type_name(99) == "type 99"
    assert core._type_name(2**32 - 1) == f"type {2**32 - 1}"


# ---- decoding ------------------------------------------------------------------------

@pytest.mark.parametrize("tname", ALL_TYPES)
def test_dequantize_random_blocks_match_gguf(tname):
    rng = np.random.default_rng(1000 + ALL_TYPES.index(tname))
    bs, _ = BLOCK[tname]
    n_blocks = 64 if bs > 1 else 4096
    data = random_blocks(rng, tname, n_blocks)
    ours = core._dequantize(tname, data, n_blocks * bs)
    ref = reference_dequantize(tname, data)
    assert ours.dtype == np.float32 and ours.shape == (n_blocks * bs,)
    np.testing.assert_array_equal(bits(ours), bits(ref))


@pytest.mark.parametrize("tname", GGUF_QUANTIZABLE)
def test_dequantize_gguf_quantized_blocks(tname):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((8, 1024)) * rng.uniform(0.01, 10, (8, 1))).astype(np.float32)
    x[3, :32] = 0.0   # an all-zero block
    data = np.asarray(gq.quantize(x, T[tname]), dtype=np.uint8).reshape(-1)
    ours = core._dequantize(tname, data, x.size)
    ref = np.asarray(gq.dequantize(data, T[tname]), dtype=np.float32).reshape(-1)
    np.testing.assert_array_equal(bits(ours), bits(ref))
    assert np.max(np.abs(ours - x.reshape(-1))) < 0.2 * np.max(np.abs(x))


def test_dequantize_f16_every_value():
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    finite = (h & 0x7C00) != 0x7C00
    ours = core._dequantize("F16", h.view(np.uint8), h.size)
    ref = h.view(np.float16).astype(np.float32)
    np.testing.assert_array_equal(bits(ours[finite]), bits(ref[finite]))
    assert np.array_equal(np.isnan(ours), np.isnan(ref))
    assert np.array_equal(np.isinf(ours), np.isinf(ref)) and np.array_equal(ours[np.isinf(ours)], ref[np.isinf(ref)])


# ---- activation quantizers --------------------------------------------------------------

def activation_rows(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    rows = [rng.standard_normal(n).astype(np.float32) * np.float32(s) for s in (1e-3, 0.7, 40.0)]
    heavy = rng.standard_normal(n).astype(np.float32)
    heavy[rng.integers(0, n, 4)] = 300.0   # outliers, as in real activations
    rows.append(heavy)
    zeros = rng.standard_normal(n).astype(np.float32)
    zeros[:256] = 0.0   # a zero block for every block size
    rows.append(zeros)
    # exact halves with amax 127: every scaled value is a rounding tie
    ties = (rng.integers(-254, 255, n) / 2).astype(np.float32)
    ties[::32] = 127.0
    rows.append(ties)
    return rows


def test_quantize_q8_0_matches_gguf():
    rng = np.random.default_rng(3)
    for x in activation_rows(rng, 4096):
        ours = core._quantize("Q8_0", x)
        ref = np.asarray(gq.quantize(x, T.Q8_0), dtype=np.uint8).reshape(-1)
        np.testing.assert_array_equal(ours, ref)


def numpy_q8_1(x: np.ndarray) -> np.ndarray:
    """llama.cpp's quantize_row_q8_1_ref: Q8_0's d and q, plus s = fp16(float(sum q) * d)."""
    blk = x.reshape(-1, 32)
    d = (np.abs(blk).max(axis=1, keepdims=True) / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    v = (blk * inv).astype(np.float32)
    q = (np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))).astype(np.int8)   # roundf: ties away from 0
    s = (q.astype(np.int32).sum(axis=1, keepdims=True).astype(np.float32) * d).astype(np.float32)
    return np.concatenate([d.astype(np.float16).view(np.uint8), s.astype(np.float16).view(np.uint8),
                           q.view(np.uint8)], axis=1).reshape(-1)


def numpy_q8_K(x: np.ndarray) -> np.ndarray:
    """llama.cpp's quantize_row_q8_K_ref: scale by the largest-magnitude element (-> -127),
    round half to even, float d = 1 / iscale, int16 sums per 16."""
    out = []
    for blk in x.reshape(-1, QK_K):
        imax = int(np.argmax(np.abs(blk)))   # first of equal maxima, as the strict '>' loop
        if blk[imax] == 0:
            out.append(np.zeros(292, np.uint8))
            continue
        iscale = np.float32(-127.0) / blk[imax]
        q = np.minimum(np.rint((iscale * blk).astype(np.float32)), 127).astype(np.int8)
        bsums = q.reshape(16, 16).astype(np.int16).sum(axis=1).astype(np.int16)
        d = np.array([np.float32(1.0) / iscale], np.float32)
        out.append(np.concatenate([d.view(np.uint8), q.view(np.uint8), bsums.view(np.uint8)]))
    return np.concatenate(out)


def test_quantize_q8_1_matches_reference():
    rng = np.random.default_rng(4)
    for x in activation_rows(rng, 2048):
        np.testing.assert_array_equal(core._quantize("Q8_1", x), numpy_q8_1(x))


@pytest.mark.parametrize("tname", ["Q8_0", "Q8_1", "F16"])
def test_quantize_simd_matches_scalar(tname):
    """The SIMD converters give the scalar reference's bytes, ties and tiny values included."""
    rng = np.random.default_rng(6)
    rows = activation_rows(rng, 2048)
    near_ties = (rng.integers(-254, 255, 2048) / 2).astype(np.float32)
    near_ties[::32] = 127.0
    rows.append(np.nextafter(near_ties, np.float32(0)))   # just below each tie
    rows.append(np.nextafter(near_ties, np.float32(1000)))
    if tname == "F16":
        # every fp16 class: subnormals, overflow to inf, inf, NaN payloads, fp16 ties, odd tail
        bits32 = rng.integers(0, 2**32, 4096, dtype=np.uint64).astype(np.uint32)
        rows.append(bits32.view(np.float32))
        halves = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
        rows.append(halves)
        finite = halves[np.isfinite(halves)]
        rows.append((finite[:-1] + finite[1:]) / 2)   # midpoints: exact ties
        rows.append(np.float32([65519.0, 65520.0, -65520.0, 6e-8, 3e-8, 2.98e-8, np.inf, -np.inf, np.nan]))
    for x in rows:
        fast = core._quantize(tname, x)
        prev = core._set_force_scalar(True)
        try:
            slow = core._quantize(tname, x)
        finally:
            core._set_force_scalar(prev)
        np.testing.assert_array_equal(fast, slow)


def test_quantize_q8_K_matches_reference():
    rng = np.random.default_rng(5)
    for x in activation_rows(rng, 2048):
        ours = core._quantize("Q8_K", x)
        np.testing.assert_array_equal(ours, numpy_q8_K(x))
        blk = ours.reshape(-1, 292)
        q = blk[:, 4:260].copy().view(np.int8).astype(np.int32)
        assert np.array_equal(blk[:, 260:].copy().view(np.int16), q.reshape(-1, 16, 16).sum(axis=2))


def test_quantize_float_formats():
    rng = np.random.default_rng(6)
    x = rng.standard_normal(4096).astype(np.float32) * np.float32(1000)
    special = np.array([0.0, -0.0, 65504.0, 65519.99, 65520.0, 1e6, -1e6, np.inf, -np.inf,
                        6.1e-5, 5.96e-8, 2.98e-8, 2.99e-8, 1e-10, 3e38], np.float32)
    # values just around fp16 rounding ties
    ties = (rng.standard_normal(2048).astype(np.float16).astype(np.float32).view(np.uint32) + np.uint32(0x1000))
    x = np.concatenate([x, special, ties.view(np.float32), (x * np.float32(1e-6))])
    with np.errstate(over="ignore"):
        ref16 = x.astype(np.float16)
    np.testing.assert_array_equal(core._quantize("F16", x), ref16.view(np.uint8))
    np.testing.assert_array_equal(core._quantize("F32", x), x.view(np.uint8))
    xb = np.concatenate([x, np.array([np.nan, -np.nan], np.float32)])
    np.testing.assert_array_equal(core._quantize("BF16", xb),
                                  np.asarray(gq.quantize(xb, T.BF16), dtype=np.uint8).reshape(-1))


def test_fp16_bf16_helpers():
    rng = np.random.default_rng(8)
    f = rng.integers(0, 1 << 32, 200000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    f = f[~np.isnan(f)]
    with np.errstate(over="ignore"):
        ref = f.astype(np.float16)
    np.testing.assert_array_equal(core._fp32_to_fp16(f), ref.view(np.uint16))
    np.testing.assert_array_equal(core._fp32_to_bf16(f),
                                  np.asarray(gq.quantize(f, T.BF16), dtype=np.uint8).view(np.uint16))
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    ref16 = h.view(np.float16).astype(np.float32)
    ok = ~np.isnan(ref16)
    np.testing.assert_array_equal(bits(core._fp16_to_fp32(h))[ok], bits(ref16)[ok])
    np.testing.assert_array_equal(bits(core._bf16_to_fp32(h)), h.astype(np.uint32) << 16)
    assert np.isnan(core._fp32_to_fp16(np.array([np.nan], np.float32)).view(np.float16)[0])


# ---- dot products ------------------------------------------------------------------------

def lengths(tname: str) -> list[int]:
    bs = BLOCK[tname][0]
    if bs == QK_K:
        return [256, 512, 1536, 4096]
    if bs == 32:
        return [32, 96, 576, 1536, 4096]
    return [1, 7, 33, 576, 1000, 4096]


def activation_values(act: str, data: np.ndarray) -> np.ndarray:
    if act == "F32":
        return data.view(np.float32).astype(np.float64)
    if act == "F16":
        return data.view(np.float16).astype(np.float64)
    return reference_dequantize(act, data).astype(np.float64)


@pytest.mark.parametrize("level", SIMD_PATHS)
@pytest.mark.parametrize("tname", ALL_TYPES)
def test_vec_dot_paths_agree_with_float64(tname, level):
    with simd_path(level):
        check_vec_dot_paths(tname)


def check_vec_dot_paths(tname):
    rng = np.random.default_rng(2000 + ALL_TYPES.index(tname))
    act = VEC_DOT_TYPE[tname]
    bs, _ = BLOCK[tname]
    for n in lengths(tname):
        for row in range(12):
            if tname in GGUF_QUANTIZABLE and row % 2 == 0:
                w = np.asarray(gq.quantize(rng.standard_normal(n).astype(np.float32), T[tname]),
                               dtype=np.uint8).reshape(-1)
            elif tname == "BF16":   # finite values: random bf16 bits include inf and NaN
                w = np.asarray(gq.quantize(rng.standard_normal(n).astype(np.float32), T.BF16),
                               dtype=np.uint8).reshape(-1)
            else:
                w = random_blocks(rng, tname, n // bs)
            x = rng.standard_normal(n).astype(np.float32) * np.float32(rng.uniform(0.1, 5))
            a = core._quantize(act, x)
            wv = reference_dequantize(tname, w).astype(np.float64)
            av = activation_values(act, a)
            exact = float(np.dot(wv, av))
            if tname in ("Q4_1", "Q5_1"):
                # Q4_1/Q5_1 (d*q + m) take the block sum of the activations from the stored
                # fp16 s, not from the quants: sum(m * a) over a block is m * s by definition
                m = w.reshape(-1, BLOCK[tname][1])[:, 2:4].copy().view(np.float16).astype(np.float64)
                s_stored = a.reshape(-1, 36)[:, 2:4].copy().view(np.float16).astype(np.float64)
                exact += float(np.sum(m[:, 0] * (s_stored[:, 0] - av.reshape(-1, 32).sum(axis=1))))
            scale = float(np.dot(np.abs(wv), np.abs(av))) + 1e-30
            simd = core._vec_dot(tname, w, a, n)
            ref = core._vec_dot(tname, w, a, n, reference=True)
            assert abs(ref - exact) <= 2e-5 * scale, (n, row, ref, exact)
            assert abs(simd - exact) <= 2e-5 * scale, (n, row, simd, exact)
            assert abs(simd - ref) <= 2e-5 * scale, (n, row, simd, ref)


TILED = ["F16", "Q4_0", "Q4_1", "Q5_0", "Q8_0", "Q4_K", "Q6_K", "F32"]


@pytest.mark.parametrize("level", SIMD_PATHS)
@pytest.mark.parametrize("tname", TILED)
def test_matmul_tiles_equal_single_dot_products(tname, level):
    """Every output of a matrix product, whatever tile computed it (full tiles, the
    narrower ones at the edges, one token), has exactly the bits of the single dot product
    of its row and token, and is close to float64 (the scalar reference's tolerance)."""
    with simd_path(level):
        check_matmul_tiles(tname)


def check_matmul_tiles(tname):
    rng = np.random.default_rng(3000 + ALL_TYPES.index(tname))
    act = VEC_DOT_TYPE[tname]
    bs, _ = BLOCK[tname]
    n = 512 if bs == QK_K else 96
    for n_rows, n_tok in [(1, 1), (11, 1), (3, 4), (7, 9), (13, 5), (2, 3)]:
        w = np.concatenate([random_blocks(rng, tname, n // bs) for _ in range(n_rows)])
        x = (rng.standard_normal((n_tok, n)) * rng.uniform(0.1, 5, (n_tok, 1))).astype(np.float32)
        y = core._matmul(tname, w, n_rows, x)
        assert y.shape == (n_tok, n_rows)
        row_bytes = len(w) // n_rows
        wv = reference_dequantize(tname, w).astype(np.float64).reshape(n_rows, n)
        for t in range(n_tok):
            a = core._quantize(act, x[t])
            av = activation_values(act, a)
            for r in range(n_rows):
                wr = w[r * row_bytes:(r + 1) * row_bytes]
                assert bits(y[t, r : r + 1]) == bits(np.float32([core._vec_dot(tname, wr, a, n)])), (n_rows, n_tok, t, r)
            if tname not in ("Q4_1",):   # Q4_1's stored block sums: see the dot product test
                exact = wv @ av
                scale = np.abs(wv) @ np.abs(av) + 1e-30
                assert np.all(np.abs(y[t] - exact) <= 2e-5 * scale), (n_rows, n_tok, t)


def test_matmul_bad_arguments():
    w = np.zeros(2 * 34, np.uint8)
    with pytest.raises(ValueError, match="2 rows of 32 Q8_0 elements take 68 bytes, got 34"):
        core._matmul("Q8_0", w[:34], 2, np.zeros((1, 32), np.float32))
    with pytest.raises(ValueError, match=r"x must be \(n_tokens, n\)"):
        core._matmul("Q8_0", w, 2, np.zeros(32, np.float32))
    with pytest.raises(ValueError, match="multiple of the Q8_0 block size"):
        core._matmul("Q8_0", w, 2, np.zeros((1, 33), np.float32))


def test_vec_dot_extreme_quants():
    # weight quants at their extremes (-128 for Q8_0) against activations at +-127
    n = 1024
    w = np.zeros((n // 32, 34), np.uint8)
    w[:, 0:2] = np.array([1.0], np.float16).view(np.uint8)
    w[:, 2:] = np.array([-128, 127] * 16, np.int8).view(np.uint8)
    x = np.tile(np.array([-1.0, 1.0], np.float32), n // 2)
    a = core._quantize("Q8_0", x)
    exact = float(np.dot(reference_dequantize("Q8_0", w.reshape(-1)).astype(np.float64),
                         reference_dequantize("Q8_0", a).astype(np.float64)))
    assert core._vec_dot("Q8_0", w.reshape(-1), a, n) == pytest.approx(exact, rel=1e-6)
    assert core._vec_dot("Q8_0", w.reshape(-1), a, n, reference=True) == pytest.approx(exact, rel=1e-6)


def test_force_scalar_switches_path():
    rng = np.random.default_rng(9)
    n = 4096
    w = random_blocks(rng, "Q4_K", n // QK_K)
    a = core._quantize("Q8_K", rng.standard_normal(n).astype(np.float32))
    ref = core._vec_dot("Q4_K", w, a, n, reference=True)
    prev = core._set_force_scalar(True)
    try:
        assert core.simd_level() == "scalar"
        assert core._vec_dot("Q4_K", w, a, n) == ref   # the very same kernel
    finally:
        core._set_force_scalar(prev)
    assert core._set_force_scalar(prev) == prev


def test_simd_level_matches_cpu():
    """The best path is the best this CPU runs (the one in use unless FFNSKIP_CPU_SIMD
    asks for a lower one), and build_info() names the one in use."""
    names = ["scalar", "avx2", "avx512"]
    levels = core._simd_levels()
    best = levels[-1]
    assert levels == names[:names.index(best) + 1]
    assert core.simd_level() in levels
    assert f"cpu simd: {core.simd_level()}," in core.build_info()
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        pytest.skip("no /proc/cpuinfo to compare with")
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx2", "fma", "f16c"} <= set(flags):
        assert best == "avx512"
    elif {"avx2", "fma", "f16c"} <= set(flags):
        assert best == "avx2"
    elif flags:
        assert best == "scalar"


ROWS16 = ("Q4_1", "Q8_0", "Q4_K")   # AVX-512: 16 weight rows per register (quant-rows16-avx512.cpp)


@pytest.mark.parametrize("tname", TILED)
def test_avx512_products_have_the_avx2_bits(tname):
    """The AVX-512 matrix products (prompt batches) give, for every (row, token), the bits
    of the AVX2 dot product, on tile shapes with every kind of edge and on rows of many
    blocks (odd counts included). Q4_1, Q8_0 and Q4_K are the exception: their AVX-512 kernels
    put 16 rows in a register and sum each block in integers first, so they give the bits
    of the AVX-512 dot product (one arithmetic for a batch and for one token) and agree
    with the AVX2 kernel to rounding."""
    if "avx512" not in core._simd_levels():
        pytest.skip("this CPU or build has no avx512 path")
    rng = np.random.default_rng(4000 + ALL_TYPES.index(tname))
    act = VEC_DOT_TYPE[tname]
    bs, _ = BLOCK[tname]
    shapes = [(1, 1), (2, 1), (11, 1), (1, 2), (3, 8), (4, 16), (7, 9), (13, 5), (2, 3), (5, 17)]
    if tname in ROWS16:   # whole 16-row tiles, with and without rows left over
        shapes += [(16, 1), (16, 8), (32, 9), (35, 17), (48, 3)]
    for n in ([256, 1536] if bs == QK_K else [32, 96, 1536]):
        for n_rows, n_tok in shapes:
            w = np.concatenate([random_blocks(rng, tname, n // bs) for _ in range(n_rows)])
            x = (rng.standard_normal((n_tok, n)) * rng.uniform(0.1, 5, (n_tok, 1))).astype(np.float32)
            with simd_path("avx512"):
                y = core._matmul(tname, w, n_rows, x)
            row_bytes = len(w) // n_rows

            def dots():
                return np.float32([[core._vec_dot(tname, w[r * row_bytes:(r + 1) * row_bytes], core._quantize(act, x[t]), n)
                                    for r in range(n_rows)] for t in range(n_tok)])
            with simd_path("avx2"):
                want = dots()
            msg = f"{n} x {n_rows} rows x {n_tok} tokens"
            if tname in ROWS16:
                with simd_path("avx512"):
                    own = dots()
                np.testing.assert_array_equal(bits(y), bits(own), err_msg=msg)
                wv = reference_dequantize(tname, w).astype(np.float64).reshape(n_rows, n)
                scale = np.stack([np.abs(wv) @ np.abs(activation_values(act, core._quantize(act, x[t])))
                                  for t in range(n_tok)])
                assert np.all(np.abs(y - want) <= 1e-5 * scale), msg
            else:
                np.testing.assert_array_equal(bits(y), bits(want), err_msg=msg)


def test_set_simd_level_switches_and_refuses_bad_names():
    levels = core._simd_levels()
    start = core.simd_level()
    for level in levels:
        prev = core._set_simd_level(level)
        try:
            assert core.simd_level() == level
            assert f"cpu simd: {level}" in core.build_info()
        finally:
            assert core._set_simd_level(prev) == level
    assert core.simd_level() == start
    with pytest.raises(ValueError, match="unknown SIMD level 'avx1024'"):
        core._set_simd_level("avx1024")
    for missing in {"avx2", "avx512"} - set(levels):
        with pytest.raises(ValueError, match="not supported by this CPU"):
            core._set_simd_level(missing)
    assert core.simd_level() == start


@pytest.mark.parametrize("env", ["scalar", "avx2", "avx512", "sse9"])
def test_env_override_picks_the_path(env):
    """FFNSKIP_CPU_SIMD forces a lower path for A/B runs; a name it does not know, or a
    path the CPU cannot run, gets a note on stderr and the best path."""
    code = "from ffnskip import _core; print(_core.simd_level()); print(_core.build_info())"
    py_path = os.pathsep.join(p for p in sys.path if p)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "FFNSKIP_CPU_SIMD": env, "PYTHONPATH": py_path})
    assert out.returncode == 0, out.stderr
    level, info = out.stdout.split("\n")[:2]
    best = core._simd_levels()[-1]
    if env in core._simd_levels():
        assert level == env and out.stderr == ""
    else:
        assert level == best and "FFNSKIP_CPU_SIMD" in out.stderr
    assert f"cpu simd: {level}" in info


# ---- bad arguments -----------------------------------------------------------------------

def test_bad_arguments_raise_value_error():
    q = np.zeros(18, np.uint8)
    a = np.zeros(34, np.uint8)
    with pytest.raises(ValueError, match="unknown or unsupported"):
        core._dequantize("Q9_9", q, 32)
    with pytest.raises(ValueError, match="IQ2_XXS"):
        core._type_info("IQ2_XXS")
    with pytest.raises(ValueError, match="take 18 bytes, got 17"):
        core._dequantize("Q4_0", q[:17], 32)
    with pytest.raises(ValueError, match="multiple of the Q4_0 block size 32"):
        core._dequantize("Q4_0", q, 31)
    with pytest.raises(ValueError, match="positive"):
        core._dequantize("Q4_0", q, 0)
    with pytest.raises(ValueError, match="multiple of the Q8_K block size 256"):
        core._quantize("Q8_K", np.zeros(100, np.float32))
    with pytest.raises(ValueError, match="weight format"):
        core._quantize("Q4_0", np.zeros(32, np.float32))
    with pytest.raises(ValueError, match="activations"):
        core._vec_dot("Q4_0", q, a[:33], 32)
    with pytest.raises(ValueError, match="weights"):
        core._vec_dot("Q4_0", np.zeros(36, np.uint8), a, 32)
    with pytest.raises(ValueError, match="uint8"):
        core._dequantize("F32", np.zeros(8, np.float32), 8)
    with pytest.raises(ValueError, match="contiguous"):
        core._dequantize("Q4_0", np.zeros(36, np.uint8)[::2], 32)
    # bytes objects are accepted as well
    assert core._dequantize("F32", np.float32(1.5).tobytes(), 1)[0] == 1.5


# ---- real weights ------------------------------------------------------------------------

@pytest.mark.slow
def test_real_tensors_decode_and_dot(smollm2_q4_k_m):
    """Tensors of llama.cpp's Q4_K_M SmolLM2 (Q5_0, Q4_K, Q6_K, Q8_0, F32): exact decode
    against gguf, and dot products against float64."""
    reader = gguf.GGUFReader(str(smollm2_q4_k_m))
    rng = np.random.default_rng(11)
    seen = {}
    for t in reader.tensors:
        tname = T(int(t.tensor_type)).name
        if tname not in BLOCK or seen.get(tname, 0) >= 2:
            continue
        seen[tname] = seen.get(tname, 0) + 1
        n = int(t.shape[0])   # GGUF order: the row length comes first
        data = np.asarray(t.data).view(np.uint8).reshape(-1)
        row_bytes = n // BLOCK[tname][0] * BLOCK[tname][1]
        rows = min(8, data.size // row_bytes)
        for r in range(rows):
            w = data[r * row_bytes:(r + 1) * row_bytes]
            ours = core._dequantize(tname, w, n)
            ref = reference_dequantize(tname, w)
            np.testing.assert_array_equal(bits(ours), bits(ref))
            act = VEC_DOT_TYPE[tname]
            a = core._quantize(act, rng.standard_normal(n).astype(np.float32))
            av = activation_values(act, a)
            exact = float(np.dot(ref.astype(np.float64), av))
            scale = float(np.dot(np.abs(ref).astype(np.float64), np.abs(av))) + 1e-30
            assert abs(core._vec_dot(tname, w, a, n) - exact) <= 2e-5 * scale
            assert abs(core._vec_dot(tname, w, a, n, reference=True) - exact) <= 2e-5 * scale
    assert {"Q5_0", "Q4_K", "Q6_K", "Q8_0"} <= set(seen), seen
