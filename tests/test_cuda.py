"""The CUDA backend against the numpy reference forward and the CPU backend, and a
compile check of it for CI.

GPU tests skip unless this build has the CUDA backend and a GPU answers.

Oracles and tolerances (max |logit difference| relative to max |logit|):
- the numpy reference forward (tests/reference_forward.py: weights de-quantized by the
  `gguf` package, float math, F16 KV cache): the GPU multiplies with float activations in
  decode steps (F16 for the block formats' staged x) and F16/BF16 activations in cuBLAS
  for prompts, so it stays close: REF_TOL below;
- the CPU backend: it multiplies the quantized formats with 8-bit activations, as
  llama.cpp does, which moves logits by a few percent on these random models, so the
  GPU-CPU tolerance for quantized weights is wider (CPU_TOL); on F32 weights both
  backends compute in float and agree to 1e-3.
"""
from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

import ffnskip

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
IDS = [5, 17, 200, 42, 99, 3, 150, 61, 8, 77, 120, 31]


def _gpu_reason(path) -> str | None:
    """None when a CUDA session can start, else why not."""
    if "cuda" not in ffnskip.available_backends():
        return "this build of ffnskip has no CUDA backend"
    try:
        ffnskip.Session(str(path), n_ctx=32, backend="cuda")
    except ffnskip.FfnskipError as e:
        return f"no usable GPU: {e}"
    return None


@pytest.fixture(scope="module")
def gpu(synthetic_model):
    reason = _gpu_reason(synthetic_model(n_embd=256, n_layer=2, n_head=4, weight_type="F16"))
    if reason:
        pytest.skip(reason)


REF_TOL = {"F32": 1e-3, "BF16": 2e-2}   # others: 5e-3
# With FFNSKIP_CUDA_Q8X=1 decode steps of Q4_K and Q8_0 multiply with 8-bit activations,
# as llama.cpp's GPU kernels (and the CPU backend) do: the CPU's class of error.
Q8X_TYPES = ("Q4_K", "Q8_0")
Q8X_TOL = 5e-2
CPU_TOL = {"F32": 1e-3, "F16": 2e-2, "BF16": 2e-2}   # others (8-bit activations on the CPU): 8e-2


def _tol(weight_type: str) -> float:
    return CPU_TOL.get(weight_type, 8e-2)


def _ref_tol(weight_type: str) -> float:
    return REF_TOL.get(weight_type, 5e-3)


def _close(got: np.ndarray, want: np.ndarray, rel: float, what: str = ""):
    scale = float(np.max(np.abs(want)))
    err = float(np.max(np.abs(got - want)))
    print(f"\nlogit error {what}: {err / scale:.2e} of max |logit| (tolerance {rel:.0e})")
    assert err <= rel * scale, f"{what}: max |diff| {err:.3g} > {rel} * {scale:.3g}"


# ---- without a GPU -------------------------------------------------------------------

def test_cuda_request_without_gpu_is_a_clear_error(synthetic_model):
    path = synthetic_model(n_embd=64, n_layer=2, weight_type="F32")
    if _gpu_reason(path) is None:
        pytest.skip("a GPU is present")
    with pytest.raises(ffnskip.FfnskipError, match="cuda"):
        ffnskip.Session(str(path), n_ctx=32, backend="cuda")
    assert ffnskip.Session(str(path), n_ctx=32, backend="auto").backend == "cpu"


# ---- with a GPU: the CPU backend is the oracle ------------------------------------------

TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q6_K"]


@pytest.mark.parametrize("weight_type", TYPES)
@pytest.mark.parametrize("ffn_norm", ["0", "1"])
def test_logits_match_reference(gpu, synthetic_model, monkeypatch, weight_type, ffn_norm):
    """Prompt and decode steps of every type; with FFNSKIP_CUDA_FUSE_FFN_NORM=1 the decode
    steps' gate/up products normalize x themselves (into shared memory for the dense types,
    while staging it as F16 for the block types)."""
    from reference_forward import ReferenceModel

    monkeypatch.setenv("FFNSKIP_CUDA_FUSE_FFN_NORM", ffn_norm)
    path = str(synthetic_model(n_embd=256, n_layer=3, n_head=4, n_head_kv=2, n_ff=512, weight_type=weight_type, seed=3))
    ref = ReferenceModel(path, kv_f16=True)
    gpu_s = ffnskip.Session(path, n_ctx=64, backend="cuda")
    _close(gpu_s.eval(IDS, all_logits=True), ref.forward(IDS), _ref_tol(weight_type), f"{weight_type} prompt vs reference")
    for t in (9, 44, 180):
        _close(gpu_s.eval([t]), ref.forward([t])[-1], _ref_tol(weight_type), f"{weight_type} decode vs reference")


# ---- decode settings that the benchmark compares (environment, read per session) ----------

@pytest.mark.parametrize("weight_type", Q8X_TYPES)
@pytest.mark.parametrize("ffn_norm", ["0", "1"])
def test_decode_with_8bit_activations_matches_reference_and_cpu(gpu, synthetic_model, monkeypatch, weight_type,
                                                                ffn_norm):
    """FFNSKIP_CUDA_Q8X=1: x quantized per 32 values and dp4a products, with a vocabulary
    (389) that leaves the last block of rows partly empty; and with the FFN's RMSNorm
    applied while x is quantized (FFNSKIP_CUDA_FUSE_FFN_NORM=1)."""
    from reference_forward import ReferenceModel

    monkeypatch.setenv("FFNSKIP_CUDA_Q8X", "1")
    monkeypatch.setenv("FFNSKIP_CUDA_FUSE_FFN_NORM", ffn_norm)
    path = str(synthetic_model(n_embd=256, n_layer=3, n_head=4, n_ff=768, n_vocab=389, weight_type=weight_type, seed=3))
    ref = ReferenceModel(path, kv_f16=True)
    cpu = ffnskip.Session(path, n_ctx=64, backend="cpu")
    gpu_s = ffnskip.Session(path, n_ctx=64, backend="cuda")
    _close(gpu_s.eval(IDS, all_logits=True), ref.forward(IDS), _ref_tol(weight_type), f"{weight_type} prompt vs reference")
    cpu.eval(IDS)
    for t in (9, 44, 388):
        got = gpu_s.eval([t])
        _close(got, ref.forward([t])[-1], Q8X_TOL, f"{weight_type} decode (8-bit activations) vs reference")
        _close(got, cpu.eval([t]), _tol(weight_type), f"{weight_type} decode (8-bit activations) vs CPU")


@pytest.mark.parametrize("weight_type", ["F16", "Q4_1", "Q8_0", "Q4_K"])
@pytest.mark.parametrize("setting", ["FFNSKIP_CUDA_MV_ROWS=4", "FFNSKIP_CUDA_PDL=1", "FFNSKIP_CUDA_FUSE_NORM=1",
                                     "FFNSKIP_CUDA_FUSE_ROPE=1", "FFNSKIP_CUDA_FUSE_FFN_NORM=1",
                                     "FFNSKIP_CUDA_GRAPH_IF=1",
                                     "FFNSKIP_CUDA_GRAPH_IF=1,FFNSKIP_CUDA_PDL=1,FFNSKIP_CUDA_FUSE_NORM=1,"
                                     "FFNSKIP_CUDA_FUSE_FFN_NORM=1"])
def test_launch_settings_do_not_change_results(gpu, synthetic_model, monkeypatch, weight_type, setting):
    """Four rows per warp, programmatic dependent launch, the RMSNorm computed by the gate
    kernel, RoPE with the KV store done by the Q/K/V products' epilogue, the FFN's RMSNorm
    computed by every block of the gate/up product and the FFNs as bodies of conditional
    graph nodes (alone and with PDL, whose programmatic edges must stop at the nodes)
    change how the work is laid out or launched, not the arithmetic of any value (the
    norms' double sums of exact float squares may only round differently in a 1-in-10^5
    case): logits (single-token evals are decode steps), greedy tokens, the on-device
    gate's masks and cosines equal the default settings' bit for bit, on a model whose vocabulary (389) leaves the last
    warp one row, with FFNs left out by the gate (the norm must still be written then)."""
    path = str(synthetic_model(n_embd=256, n_layer=6, n_head=4, n_ff=768, n_vocab=389, weight_type=weight_type, seed=7))
    skip = dict(policy="ffn_skip", threshold=-1.0, cold_start=1, cold_end=1, warmup=1, refresh_every=4, max_skip=2,
                record_masks=True, record_cosines=True)

    def run():
        s = ffnskip.Session(path, n_ctx=128, backend="cuda")
        logits = [s.eval(IDS)] + [s.eval([t]) for t in (9, 44, 388, 120)]
        g = ffnskip.Session(path, n_ctx=128, backend="cuda")
        out = g.generate(IDS[:7], max_tokens=16, temperature=0, skip=skip)
        return logits, out.tokens, np.asarray(out.stats["skip_masks"]), np.asarray(out.stats["cosines"]), g.logits

    base = run()
    for name_value in setting.split(","):
        name, value = name_value.split("=")
        monkeypatch.setenv(name, value)
    other = run()
    for a, b in zip(other[0], base[0]):
        np.testing.assert_array_equal(a, b)
    assert other[1] == base[1]
    assert base[2].sum() > 0
    np.testing.assert_array_equal(other[2], base[2])
    np.testing.assert_array_equal(other[3], base[3])
    np.testing.assert_array_equal(other[4], base[4])


@pytest.mark.parametrize("weight_type", ["F16", "BF16"])
@pytest.mark.parametrize("rows", ["2", "4"])
@pytest.mark.parametrize("ffn_norm", ["0", "1"])
def test_split_rows_match_reference(gpu, synthetic_model, monkeypatch, weight_type, rows, ffn_norm):
    """FFNSKIP_CUDA_MV_SPLIT=1: a block's warps share its rows (partial sums added in
    shared memory), with rows of 160 and 416 elements (not a multiple of the block's
    1024-element step) and a vocabulary (389) that leaves the last block partly empty;
    and with the FFN's RMSNorm folded in (x normalized into shared memory)."""
    from reference_forward import ReferenceModel

    monkeypatch.setenv("FFNSKIP_CUDA_MV_SPLIT", "1")
    monkeypatch.setenv("FFNSKIP_CUDA_MV_ROWS", rows)
    monkeypatch.setenv("FFNSKIP_CUDA_FUSE_FFN_NORM", ffn_norm)
    path = str(synthetic_model(n_embd=160, n_layer=2, n_head=5, n_ff=416, n_vocab=389, weight_type=weight_type, seed=7))
    ref = ReferenceModel(path, kv_f16=True)
    gpu_s = ffnskip.Session(path, n_ctx=64, backend="cuda")
    _close(gpu_s.eval(IDS, all_logits=True), ref.forward(IDS), _ref_tol(weight_type), f"{weight_type} prompt")
    for t in (9, 44, 180, 388):
        _close(gpu_s.eval([t]), ref.forward([t])[-1], _ref_tol(weight_type), f"{weight_type} decode, split rows")


@pytest.mark.parametrize("setting", ["default", "FFNSKIP_CUDA_ATTN_SPLIT=1"])
def test_long_context_decode_matches_reference(gpu, synthetic_model, monkeypatch, setting):
    """Decode steps after a 700-token prompt: attention over many keys per warp, and with
    FFNSKIP_CUDA_ATTN_SPLIT=1 each head's keys cut into ranges merged by the last block."""
    from reference_forward import ReferenceModel

    if setting != "default":
        name, value = setting.split("=")
        monkeypatch.setenv(name, value)
    path = str(synthetic_model(n_embd=256, n_layer=2, n_head=4, n_head_kv=2, n_ff=512, weight_type="F16", seed=9,
                               n_ctx=1024))
    ids = [int(t) for t in np.random.default_rng(5).integers(1, 250, 700)]
    ref = ReferenceModel(path, kv_f16=True)
    gpu_s = ffnskip.Session(path, n_ctx=1024, backend="cuda")
    _close(gpu_s.eval(ids), ref.forward(ids)[-1], 5e-3, "700-token prompt")
    for t in (9, 44, 180):
        _close(gpu_s.eval([t]), ref.forward([t])[-1], 5e-3, f"decode after 700 tokens ({setting})")


@pytest.mark.parametrize("n_embd, n_head, n_head_kv", [(256, 4, 2), (256, 2, 1), (160, 5, 5)])
def test_tiled_prompt_attention_matches_reference(gpu, synthetic_model, monkeypatch, n_embd, n_head, n_head_kv):
    """FFNSKIP_CUDA_ATTN_TILED=1: prompt attention over tiles of 32 queries x 32 keys, for
    head sizes 64, 128 and 32, a first batch of 75 tokens (the last query tile partial)
    and a second batch of 40 at position 75 (keys before the batch), every position's
    logits against the reference."""
    from reference_forward import ReferenceModel

    monkeypatch.setenv("FFNSKIP_CUDA_ATTN_TILED", "1")
    path = str(synthetic_model(n_embd=n_embd, n_layer=2, n_head=n_head, n_head_kv=n_head_kv, n_ff=512,
                               weight_type="F16", seed=9))
    rng = np.random.default_rng(6)
    first, second = [[int(t) for t in rng.integers(1, 250, n)] for n in (75, 40)]
    ref = ReferenceModel(path, kv_f16=True)
    gpu_s = ffnskip.Session(path, n_ctx=256, backend="cuda")
    _close(gpu_s.eval(first, all_logits=True), ref.forward(first), 5e-3, "tiled attention, first batch")
    _close(gpu_s.eval(second, all_logits=True), ref.forward(second), 5e-3, "tiled attention, second batch")
    _close(gpu_s.eval([44]), ref.forward([44])[-1], 5e-3, "decode after the tiled prompt")


def test_bad_rows_per_warp_is_a_clear_error(gpu, synthetic_model, monkeypatch):
    monkeypatch.setenv("FFNSKIP_CUDA_MV_ROWS", "3")
    with pytest.raises(ValueError, match="FFNSKIP_CUDA_MV_ROWS must be 2 or 4"):
        ffnskip.Session(str(synthetic_model(n_embd=64, n_layer=2, weight_type="F16")), n_ctx=32, backend="cuda")


@pytest.mark.parametrize("weight_type", TYPES)
def test_logits_match_cpu(gpu, synthetic_model, weight_type):
    path = str(synthetic_model(n_embd=256, n_layer=3, n_head=4, n_head_kv=2, n_ff=512, weight_type=weight_type, seed=3))
    cpu = ffnskip.Session(path, n_ctx=64, backend="cpu")
    gpu_s = ffnskip.Session(path, n_ctx=64, backend="cuda")
    assert gpu_s.backend == "cuda"
    # Batched prompt (cuBLAS), then single decode steps (graph) on both.
    _close(gpu_s.eval(IDS, all_logits=True), cpu.eval(IDS, all_logits=True), _tol(weight_type), f"{weight_type} prompt vs CPU")
    for t in (9, 44, 180):
        _close(gpu_s.eval([t]), cpu.eval([t]), _tol(weight_type), f"{weight_type} decode vs CPU")


@pytest.mark.parametrize("weight_type", ["F32", "F16", "BF16", "Q8_0", "Q4_1"])
@pytest.mark.parametrize("fuse", ["1", "0"])
def test_odd_shapes_match_reference(gpu, synthetic_model, monkeypatch, weight_type, fuse):
    """Rows not a multiple of 256 (the dense kernels' step), an odd vocabulary (a warp's
    last row pair half empty), and the unfused decode path (FFNSKIP_CUDA_FUSE=0)."""
    from reference_forward import ReferenceModel

    monkeypatch.setenv("FFNSKIP_CUDA_FUSE", fuse)
    path = str(synthetic_model(n_embd=160, n_layer=2, n_head=5, n_ff=416, n_vocab=389, weight_type=weight_type, seed=7))
    ref = ReferenceModel(path, kv_f16=True)
    gpu_s = ffnskip.Session(path, n_ctx=64, backend="cuda")
    tol = _ref_tol(weight_type)
    _close(gpu_s.eval(IDS, all_logits=True), ref.forward(IDS), tol, f"{weight_type} odd shapes prompt")
    for t in (9, 44, 180, 388):
        _close(gpu_s.eval([t]), ref.forward([t])[-1], tol, f"{weight_type} odd shapes decode, fuse={fuse}")


@pytest.mark.parametrize("fuse_rope", ["0", "1"])
def test_mixed_types_and_gqa_match_reference(gpu, synthetic_model, monkeypatch, fuse_rope):
    """Q4_K with Q6_K values and down projection (Q/K in one launch, V in another, each
    launch with its own row stores when FFNSKIP_CUDA_FUSE_ROPE=1), Q8_0 embeddings, GQA."""
    monkeypatch.setenv("FFNSKIP_CUDA_FUSE_ROPE", fuse_rope)
    path = str(synthetic_model(n_embd=256, n_layer=2, n_head=8, n_head_kv=2, n_ff=768, weight_type="Q4_K",
                               tensor_types={"blk.*.ffn_down.weight": "Q6_K", "blk.*.attn_v.weight": "Q6_K",
                                             "token_embd.weight": "Q8_0"},
                               tied_output=False, seed=5))
    from reference_forward import ReferenceModel

    ref = ReferenceModel(path, kv_f16=True)
    gpu_s = ffnskip.Session(path, n_ctx=64, backend="cuda")
    _close(gpu_s.eval(IDS, all_logits=True), ref.forward(IDS), 5e-3, "mixed types prompt")
    for t in (9, 44):
        _close(gpu_s.eval([t]), ref.forward([t])[-1], 5e-3, "mixed types decode")


def test_unsupported_type_is_a_clear_error(gpu, synthetic_model):
    path = str(synthetic_model(n_embd=256, n_layer=2, weight_type="Q5_K"))
    with pytest.raises(ffnskip.FfnskipError, match="Q5_K"):
        ffnskip.Session(path, n_ctx=32, backend="cuda")


def test_out_of_memory_is_a_clear_error(gpu, synthetic_model):
    """Buffers for a million-token batch through a 20480-wide FFN (about 210 GB) cannot
    fit: the error gives what was needed, the parts, and what is free, and the GPU stays
    usable."""
    path = str(synthetic_model(n_embd=64, n_layer=1, n_head=2, n_ff=20480, weight_type="F16"))
    with pytest.raises(ffnskip.FfnskipError, match=r"out of GPU memory: the CUDA backend needs [0-9.]+ GiB of GPU "
                       r"memory \(weights [0-9.]+ GiB, KV cache [0-9.]+ GiB, buffers [0-9.]+ GiB\) but only "
                       r"[0-9.]+ GiB of [0-9.]+ GiB are free; lower n_ctx or n_batch"):
        ffnskip.Session(path, n_ctx=1 << 20, n_batch=1 << 20, backend="cuda")
    ok = ffnskip.Session(path, n_ctx=64, backend="cuda")
    assert np.isfinite(ok.eval(IDS)).all()


def _generate(path, backend, **skip):
    s = ffnskip.Session(path, n_ctx=128, backend=backend)
    return s.generate(IDS[:7], max_tokens=24, temperature=0, skip=dict(record_masks=True, record_cosines=True, **skip))


@pytest.mark.parametrize("skip", [
    dict(policy="full"),
    dict(policy="ffn_skip", threshold=-1.0, cold_start=1, cold_end=1, warmup=2, refresh_every=4, max_skip=2),
    dict(policy="random", target_ratio=0.3, warmup=1, seed=4),
    dict(policy="static", max_skip=2, cold_start=1, cold_end=1, warmup=0, refresh_every=0, seed=2),
    dict(policy="layers", layers=[2, 3]),
    dict(policy="shortgpt", layers=[3]),
    dict(policy="skipdecode", target_ratio=0.25, cold_start=1, cold_end=1, warmup=1, skipdecode_span=8),
])
@pytest.mark.parametrize("if_nodes", ["0", "1"])
def test_greedy_tokens_and_skip_masks_match_cpu(gpu, synthetic_model, monkeypatch, skip, if_nodes):
    """Every policy, with the FFNs' skip words read by their kernels and (FFNSKIP_CUDA_GRAPH_IF=1)
    as conditions of IF nodes, set by the gate kernel of the layer before: the host's plans
    (random, static, layers, shortgpt, skipdecode) as well as the gate's own decisions."""
    # F32 weights: the backends' logits agree to ~1e-5, far below the greedy margins here.
    monkeypatch.setenv("FFNSKIP_CUDA_GRAPH_IF", if_nodes)
    path = str(synthetic_model(n_embd=256, n_layer=6, n_head=4, weight_type="F32", seed=11, n_ctx=256))
    want = _generate(path, "cpu", **skip)
    got = _generate(path, "cuda", **skip)
    assert got.tokens == want.tokens
    np.testing.assert_array_equal(got.stats.get("skip_masks"), want.stats.get("skip_masks"))
    if "cosines" in want.stats:
        np.testing.assert_allclose(got.stats["cosines"], want.stats["cosines"], atol=1e-4, equal_nan=True)


@pytest.mark.parametrize("layers, max_skip, cold_start", [([2, 4], 2, 1), ([1, 2, 5], 3, 2), ([3], 1, 1)])
def test_restricted_gate_matches_cpu(gpu, synthetic_model, layers, max_skip, cold_start):
    """ffn_skip whose gate may only leave out the listed FFNs: the same masks on both backends."""
    path = str(synthetic_model(n_embd=256, n_layer=6, n_head=4, weight_type="F32", seed=11, n_ctx=256))
    skip = dict(policy="ffn_skip", threshold=-1.0, cold_start=cold_start, cold_end=1, warmup=1, refresh_every=4,
                max_skip=max_skip, layers=layers)
    want = _generate(path, "cpu", **skip)
    got = _generate(path, "cuda", **skip)
    masks = np.asarray(want.stats["skip_masks"])
    assert masks.sum() > 0 and not masks[:, [l for l in range(6) if l not in layers]].any()
    np.testing.assert_array_equal(got.stats["skip_masks"], want.stats["skip_masks"])
    assert got.tokens == want.tokens


def test_gate_on_device_opens_where_cpu_does(gpu, synthetic_model):
    """A threshold between the measured cosines: the gate opens on some steps only."""
    path = str(synthetic_model(n_embd=256, n_layer=6, n_head=4, weight_type="F32", seed=11, n_ctx=256))
    cos = np.asarray(_generate(path, "cpu", policy="full").stats["cosines"])
    v = np.sort(cos[:, 1:4][np.isfinite(cos[:, 1:4])].ravel())
    gaps = np.diff(v)
    i = int(np.argmax(gaps))
    if gaps[i] < 1e-3:
        pytest.skip("no gap between observed cosines wide enough for a rounding-safe threshold")
    threshold = float((v[i] + v[i + 1]) / 2)
    skip = dict(policy="ffn_skip", threshold=threshold, cold_start=2, cold_end=1, warmup=0, refresh_every=0, max_skip=2)
    want = _generate(path, "cpu", **skip)
    got = _generate(path, "cuda", **skip)
    np.testing.assert_array_equal(got.stats["skip_masks"], want.stats["skip_masks"])
    assert got.tokens == want.tokens


# ---- FFN surrogates: a left-out FFN runs b + U (V^T ffn_norm(h)) on the device ----------

def _surrogate_file(tmp_path, name="sur.gguf", dtype="f32", seed=0, n_embd=256, n_layer=6):
    """Random surrogates for layers 1-4 of a 6-layer model: ranks 5 and 40 (not multiples
    of 32: partly filled warps and a loop past one warp), a bias-only one (rank 0), and
    layer 5 without one (left out, it adds nothing)."""
    from ffnskip import surrogate as sg

    rng = np.random.default_rng(seed)

    def sur(rank):
        return sg.Surrogate(bias=rng.standard_normal(n_embd) * 0.05,
                            up=rng.standard_normal((rank, n_embd)) / np.sqrt(n_embd),
                            down=rng.standard_normal((n_embd, rank)) / np.sqrt(max(rank, 1)))

    path = tmp_path / name
    sg.save(path, {1: sur(5), 2: sur(40), 3: sur(0), 4: sur(8)}, n_embd=n_embd, n_layer=n_layer, dtype=dtype)
    return str(path)


SURROGATE_POLICIES = {
    "ffn_skip": dict(policy="ffn_skip", threshold=-1.0, cold_start=1, cold_end=0, warmup=2, refresh_every=4,
                     max_skip=3),
    "cheapest": dict(policy="layers", layers=[1, 2, 3, 5]),
    "cheapest_gate": dict(policy="ffn_skip", threshold=-1.0, cold_start=1, cold_end=0, warmup=1, refresh_every=4,
                          max_skip=2, layers=[2, 4, 5]),
    "random": dict(policy="random", target_ratio=0.4, warmup=1, seed=4),
    "shortgpt": dict(policy="shortgpt", layers=[2]),   # a whole layer out: no surrogate runs there
}


@pytest.mark.parametrize("policy", list(SURROGATE_POLICIES))
@pytest.mark.parametrize("if_nodes", ["0", "1"])
def test_surrogate_greedy_tokens_masks_and_stats_match_cpu(gpu, synthetic_model, monkeypatch, tmp_path, policy,
                                                           if_nodes):
    """With a sidecar every policy's left-out FFNs run their surrogates on the GPU as on the
    CPU: prompt (the `layers` set prunes it too) and decode steps, with the FFNs' skip
    words read by their kernels and (FFNSKIP_CUDA_GRAPH_IF=1) as IF nodes' conditions; the
    gate measures its cosine on the surrogate's output. Same tokens, masks, cosines and
    surrogates_run."""
    monkeypatch.setenv("FFNSKIP_CUDA_GRAPH_IF", if_nodes)
    path = str(synthetic_model(n_embd=256, n_layer=6, n_head=4, weight_type="F32", seed=11, n_ctx=256))
    skip = dict(SURROGATE_POLICIES[policy], surrogates=_surrogate_file(tmp_path))
    want = _generate(path, "cpu", **skip)
    got = _generate(path, "cuda", **skip)
    plain = _generate(path, "cpu", **SURROGATE_POLICIES[policy])
    if policy != "shortgpt":
        assert want.stats["surrogates_run"] > 0 and want.tokens != plain.tokens   # the surrogates matter here
    else:
        assert want.stats["surrogates_run"] == 0
    assert got.tokens == want.tokens
    for key in ("surrogates_run", "ffn_skipped", "skip_steps"):
        assert got.stats[key] == want.stats[key], key
    np.testing.assert_array_equal(got.stats["skip_masks"], want.stats["skip_masks"])
    np.testing.assert_allclose(got.stats["cosines"], want.stats["cosines"], atol=1e-4, equal_nan=True)


@pytest.mark.parametrize("dtype, rel", [("f32", 1e-4), ("f16", 2e-3)])
@pytest.mark.parametrize("record_cosines", [False, True])   # the layers set in the prompt batch / decode steps
def test_surrogate_scores_match_cpu(gpu, synthetic_model, tmp_path, dtype, rel, record_cosines):
    """Teacher-forced scores (prompt batches of n tokens through the surrogate kernels, and
    decode steps) with F32 and F16 sidecars: the negative log-likelihood and the skip
    statistics of both backends agree."""
    path = str(synthetic_model(n_embd=256, n_layer=6, n_head=4, weight_type="F32", seed=11, n_ctx=256))
    sur = _surrogate_file(tmp_path, dtype=dtype, seed=3)
    prompt, cont = IDS[:5], IDS[5:] + [9, 44, 180, 7]
    results = {}
    for backend in ("cpu", "cuda"):
        s = ffnskip.Session(path, n_ctx=128, backend=backend)
        results[backend] = s.score(prompt, cont, skip=dict(policy="layers", layers=[1, 2, 4], surrogates=sur,
                                                           record_cosines=record_cosines))
        plain = s.score(prompt, cont, skip=dict(policy="layers", layers=[1, 2, 4]))[0]
    (want, want_stats), (got, got_stats) = results["cpu"], results["cuda"]
    assert abs(plain - want) > 10 * rel * abs(want)   # the surrogates change the score
    assert got == pytest.approx(want, rel=rel)
    assert got_stats["surrogates_run"] == want_stats["surrogates_run"] == 3 * (len(cont) - 1)
    assert got_stats["ffn_skipped"] == want_stats["ffn_skipped"]


def test_surrogate_sets_change_between_generations(gpu, synthetic_model, tmp_path):
    """One GPU session: a set, another set (uploaded, the decode graph captured again), no
    set, the first again: each generation equals the CPU's."""
    path = str(synthetic_model(n_embd=256, n_layer=6, n_head=4, weight_type="F32", seed=11, n_ctx=256))
    a, b = _surrogate_file(tmp_path, "a.gguf", seed=1), _surrogate_file(tmp_path, "b.gguf", seed=2)
    base = SURROGATE_POLICIES["ffn_skip"]
    cpu = ffnskip.Session(path, n_ctx=128, backend="cpu")
    gpu_s = ffnskip.Session(path, n_ctx=128, backend="cuda")
    for sur in (a, b, "", a):
        skip = dict(base, surrogates=sur, record_masks=True, record_cosines=True)
        want = cpu.generate(IDS[:7], max_tokens=16, temperature=0, skip=skip)
        got = gpu_s.generate(IDS[:7], max_tokens=16, temperature=0, skip=skip)
        assert got.tokens == want.tokens, sur
        assert got.stats["surrogates_run"] == want.stats["surrogates_run"] == (want.stats["ffn_skipped"] if sur else 0)
        np.testing.assert_allclose(got.stats["cosines"], want.stats["cosines"], atol=1e-4, equal_nan=True)


@pytest.mark.slow
def test_real_model_surrogate_perplexity_matches_cpu(gpu, real_model, tmp_path):
    """SmolLM2 (or a 10-layer cut of it) with surrogates fitted on 400 tokens of its own
    trace, scored on those tokens: with the ffn_skip gate and with a fixed set, the GPU's
    likelihood and the surrogates' gain over plain skipping are the CPU's up to the
    quantized-weights tolerance, and about as many surrogates run."""
    from ffnskip import surrogate as sg
    from ffnskip.calibrate import sample_text
    from ffnskip.perplexity import perplexity

    cpu = ffnskip.Session(str(real_model), n_ctx=512, backend="cpu")
    ids = cpu.tokenize(sample_text())[:400]
    t = cpu.trace_ffn(ids, "full")
    n_embd = t["u"].shape[2]
    n_layer = t["u"].shape[0]
    fitted = {}
    for il in range(n_layer):
        stats = sg.FfnStats(n_embd)
        sg.accumulate(stats, t["u"][il], t["f"][il], positions=range(len(ids)), sink_positions=4)
        fitted[il] = sg.fit(stats, rank=32, ridge=1e-2)
    path = tmp_path / "real.surrogates.gguf"
    sg.save(path, fitted, n_embd=n_embd, n_layer=n_layer)
    for skip in (dict(policy="ffn_skip", target_ratio=0.2, cold_start=1, cold_end=1), dict(policy="layers", layers=[n_layer // 3, n_layer // 2, 2 * n_layer // 3])):
        res = {}
        for backend in ("cpu", "cuda"):
            s = ffnskip.Session(str(real_model), n_ctx=512, backend=backend)
            res[backend] = perplexity(s, ids, skip=dict(skip, surrogates=str(path)), ctx=128)
            res[backend + " plain"] = perplexity(s, ids, skip=skip, ctx=128)
        print(f"\n{skip}: {res}")
        # Compared in summed NLL: the CPU's 8-bit activations move it by well under 1%; the
        # gate may decide a near-threshold step differently, hence the margins.
        assert res["cuda"]["nll"] == pytest.approx(res["cpu"]["nll"], rel=0.01), (skip, res)
        gain_cpu = res["cpu plain"]["nll"] - res["cpu"]["nll"]
        gain_gpu = res["cuda plain"]["nll"] - res["cuda"]["nll"]
        assert gain_cpu > 0 and gain_gpu == pytest.approx(gain_cpu, rel=0.3), (skip, res)
        assert res["cpu"]["surrogates_run"] > 0
        assert abs(res["cuda"]["surrogates_run"] - res["cpu"]["surrogates_run"]) <= 0.1 * res["cpu"]["surrogates_run"]


# ---- qwen2: Q/K/V biases, NeoX RoPE, untied output ---------------------------------------

def _qwen2(synthetic_model, **kw) -> str:
    kw = dict(dict(n_embd=256, n_layer=3, n_head=4, n_head_kv=2, n_ff=512, seed=3), **kw)
    return str(synthetic_model(arch="qwen2", **kw))


@pytest.mark.parametrize("weight_type", TYPES)
def test_qwen2_logits_match_reference(gpu, synthetic_model, weight_type):
    """Prompt (cuBLAS; biases and NeoX rotation in the rope kernel) and decode steps (graph)."""
    from reference_forward import ReferenceModel

    path = _qwen2(synthetic_model, weight_type=weight_type)
    ref = ReferenceModel(path, kv_f16=True)
    gpu_s = ffnskip.Session(path, n_ctx=64, backend="cuda")
    _close(gpu_s.eval(IDS, all_logits=True), ref.forward(IDS), _ref_tol(weight_type), f"qwen2 {weight_type} prompt")
    for t in (9, 44, 180):
        _close(gpu_s.eval([t]), ref.forward([t])[-1], _ref_tol(weight_type), f"qwen2 {weight_type} decode")


@pytest.mark.parametrize("setting", ["FFNSKIP_CUDA_FUSE=0", "FFNSKIP_CUDA_GRAPH=0", "FFNSKIP_CUDA_FUSE_ROPE=1",
                                     "FFNSKIP_CUDA_FUSE_ROPE=1,FFNSKIP_CUDA_FUSE_NORM=1,FFNSKIP_CUDA_FUSE_FFN_NORM=1",
                                     "FFNSKIP_CUDA_ATTN_TILED=1"])
@pytest.mark.parametrize("shape", [
    dict(),                                                   # GQA, NeoX over the whole head
    dict(n_embd=192, n_head=6, n_head_kv=2, n_rot=16),        # NeoX pairs over half of each head
    dict(n_embd=160, n_head=5, n_head_kv=1, n_vocab=389, tied_output=True),   # MQA, odd rows, tied
])
def test_qwen2_settings_and_shapes_match_reference(gpu, synthetic_model, monkeypatch, setting, shape):
    """Every decode path: unfused products, no graph, FFNSKIP_CUDA_FUSE_ROPE=1 (which keeps
    the rope kernel for NeoX pairs and biases), the folded norms, tiled prompt attention."""
    from reference_forward import ReferenceModel

    for name_value in setting.split(","):
        name, value = name_value.split("=")
        monkeypatch.setenv(name, value)
    path = _qwen2(synthetic_model, weight_type="Q8_0", **shape)
    ref = ReferenceModel(path, kv_f16=True)
    gpu_s = ffnskip.Session(path, n_ctx=64, backend="cuda")
    _close(gpu_s.eval(IDS, all_logits=True), ref.forward(IDS), 5e-3, f"qwen2 {shape} prompt, {setting}")
    for t in (9, 44, 180, 7):
        _close(gpu_s.eval([t]), ref.forward([t])[-1], 5e-3, f"qwen2 {shape} decode, {setting}")


@pytest.mark.parametrize("weight_type", ["F32", "F16", "Q4_K", "Q6_K"])
def test_qwen2_logits_match_cpu(gpu, synthetic_model, weight_type):
    path = _qwen2(synthetic_model, weight_type=weight_type)
    cpu = ffnskip.Session(path, n_ctx=64, backend="cpu")
    gpu_s = ffnskip.Session(path, n_ctx=64, backend="cuda")
    _close(gpu_s.eval(IDS, all_logits=True), cpu.eval(IDS, all_logits=True), _tol(weight_type), "qwen2 prompt vs CPU")
    for t in (9, 44, 180):
        _close(gpu_s.eval([t]), cpu.eval([t]), _tol(weight_type), "qwen2 decode vs CPU")


@pytest.mark.parametrize("skip", [
    dict(policy="full"),
    dict(policy="ffn_skip", threshold=-1.0, cold_start=1, cold_end=1, warmup=2, refresh_every=4, max_skip=2),
    dict(policy="skipdecode", target_ratio=0.25, cold_start=1, cold_end=1, warmup=1, skipdecode_span=8),
])
def test_qwen2_greedy_tokens_and_skip_masks_match_cpu(gpu, synthetic_model, skip):
    """The skip policies sit above the forward pass: the same tokens and masks on qwen2."""
    path = _qwen2(synthetic_model, n_layer=6, n_head_kv=4, weight_type="F32", seed=11, n_ctx=256)
    want = _generate(path, "cpu", **skip)
    got = _generate(path, "cuda", **skip)
    assert got.tokens == want.tokens
    np.testing.assert_array_equal(got.stats.get("skip_masks"), want.stats.get("skip_masks"))
    if "cosines" in want.stats:
        np.testing.assert_allclose(got.stats["cosines"], want.stats["cosines"], atol=1e-4, equal_nan=True)


@pytest.fixture
def real_model(request):
    """SmolLM2 Q4_1, or the GGUF that FFNSKIP_GPU_TEST_MODEL names (a GPU machine that
    cannot fetch the model gets a copy of its first layers, `python tests/gguf_convert.py truncate SRC DST 10`)."""
    path = os.environ.get("FFNSKIP_GPU_TEST_MODEL")
    return pathlib.Path(path) if path else request.getfixturevalue("smollm2_q4_1")


@pytest.mark.slow
@pytest.mark.parametrize("q8x", ["0", "1"])
def test_real_model_logits_and_greedy_match_reference(gpu, real_model, monkeypatch, q8x):
    """Real weights and tokenizer: logits against the numpy reference, and every greedy
    token the GPU picks is the reference's choice up to that tolerance (the reference is
    fed the GPU's tokens, so the two never part and every step is checked). With
    FFNSKIP_CUDA_Q8X=1 SmolLM2's Q8_0 output matrix multiplies 8-bit activations in
    decode steps: a wider tolerance there."""
    from reference_forward import ReferenceModel

    monkeypatch.setenv("FFNSKIP_CUDA_Q8X", q8x)
    tol = 5e-3 if q8x == "0" else 2e-2
    gpu_s = ffnskip.Session(str(real_model), n_ctx=256, backend="cuda")
    ref = ReferenceModel(real_model, kv_f16=True)
    ids = gpu_s.tokenize("The capital of France is")
    want = ref.forward(ids)
    _close(gpu_s.eval(ids, all_logits=True), want, 5e-3, "real model prompt")
    gpu_s.reset()
    out = gpu_s.generate("The capital of France is", max_tokens=32, temperature=0, ignore_eos=True)
    assert len(out.tokens) == 32
    ref.reset()
    logits = ref.forward(ids)[-1]
    worst = 0.0
    for step, tok in enumerate(out.tokens):
        gap = float(logits.max() - logits[tok])
        worst = max(worst, gap / float(np.abs(logits).max()))
        assert gap <= tol * float(np.abs(logits).max()), (step, tok, int(np.argmax(logits)), gap)
        logits = ref.forward([tok])[-1]
    print(f"\ngreedy: worst gap to the reference's best logit {worst:.2e} of max |logit| over 32 steps")


@pytest.mark.slow
def test_real_model_greedy_matches_cpu(gpu, real_model):
    cpu = ffnskip.Session(str(real_model), n_ctx=256, backend="cpu")
    gpu_s = ffnskip.Session(str(real_model), n_ctx=256, backend="cuda")
    a = cpu.generate("The capital of France is", max_tokens=32, temperature=0)
    b = gpu_s.generate("The capital of France is", max_tokens=32, temperature=0)
    # The CPU's 8-bit activations against the GPU's float: the texts part at a near tie.
    common = next((i for i, (x, y) in enumerate(zip(a.tokens, b.tokens)) if x != y), len(a.tokens))
    print(f"\ngreedy CPU vs GPU: {common} identical tokens of {len(a.tokens)}")
    assert common >= 4, (a.tokens, b.tokens)


# ---- CI: the CUDA backend compiles and links wherever nvcc and cuBLAS are present ----

def _nvcc() -> str | None:
    return shutil.which("nvcc") or next((p for p in ("/usr/local/cuda/bin/nvcc",) if os.path.exists(p)), None)


def test_cuda_backend_compiles_and_links(tmp_path):
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("no nvcc: the CUDA backend is not built here")
    try:
        have_wheel = importlib.util.find_spec("nvidia.cu13") is not None
    except ModuleNotFoundError:   # no `nvidia` namespace package at all
        have_wheel = False
    if not have_wheel and not os.path.exists("/usr/local/cuda/include/cublas_v2.h"):
        pytest.skip("no cuBLAS headers (pip install nvidia-cublas==13.1.0.3)")
    if shutil.which("cmake") is None:
        pytest.skip("no cmake")
    # A persistent folder keeps reruns incremental; one virtual architecture keeps it short.
    build = REPO_ROOT / "build" / "cuda-compile-check"
    cmd = ["cmake", "-S", str(REPO_ROOT), "-B", str(build), "-DFFNSKIP_CUDA=ON", "-DFFNSKIP_PYTHON=OFF",
           "-DFFNSKIP_TESTS=ON", "-DCMAKE_CUDA_ARCHITECTURES=90-virtual", f"-DCMAKE_CUDA_COMPILER={nvcc}",
           f"-DPython_EXECUTABLE={sys.executable}"]
    if shutil.which("ninja"):
        cmd += ["-G", "Ninja"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "CUDA backend: ON" in r.stdout
    # ffnskip_tests links the engine library with its CUDA objects and the static runtime.
    r = subprocess.run(["cmake", "--build", str(build), "--target", "ffnskip_tests"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-4000:]
