"""Batched decoding on the GPU (BatchSession(backend="cuda")) against the numpy
reference forward and against the CPU's BatchSession, which test_batch.py holds equal,
bit for bit, to lone Sessions.

The GPU batch multiplies all rows of a step with cuBLAS (F16 activations for F16 and
the block formats, as its prompt batches do; float for F32) and runs RoPE with the
cache writes, and attention, in one launch each for all rows, every row over its own
slot: the reference tolerances are test_cuda.py's. Skip decisions that do not depend on the arithmetic (random, layers,
none) must equal the CPU's exactly; the cosine gate's may differ where a cosine falls
within rounding of the threshold.

GPU tests skip unless this build has the CUDA backend and a GPU answers.
"""
from __future__ import annotations

import numpy as np
import pytest

import ffnskip
from ffnskip import surrogate as sg
from ffnskip.batch import BatchGenerator, BatchSession
from reference_forward import ReferenceModel

SHAPE = dict(n_embd=256, n_layer=3, n_head=4, n_head_kv=2, n_ff=512, seed=5)
PROMPTS = [[5, 17, 33, 100, 200, 7, 9], [250, 3], [44, 12, 8, 1, 99, 31, 64, 2, 77, 150, 11]]
REF_TOL = {"F32": 1e-3, "BF16": 2e-2}   # others: 5e-3 (relative to max |logit|)


@pytest.fixture(scope="module")
def gpu(synthetic_model):
    if "cuda" not in ffnskip.available_backends():
        pytest.skip("this build of ffnskip has no CUDA backend")
    try:
        ffnskip.Session(str(synthetic_model(n_embd=256, n_layer=2, n_head=4, weight_type="F16")), n_ctx=32,
                        backend="cuda")
    except ffnskip.FfnskipError as e:
        pytest.skip(f"no usable GPU: {e}")


def _close(got: np.ndarray, want: np.ndarray, rel: float, what: str) -> None:
    scale = float(np.max(np.abs(want)))
    err = float(np.max(np.abs(got - want)))
    assert err <= rel * scale, f"{what}: max |diff| {err:.3g} > {rel} * {scale:.3g}"


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("weight_type", ["F32", "F16", "BF16", "Q8_0", "Q4_1", "Q4_K", "Q6_K"])
def test_cuda_batch_matches_reference(gpu, synthetic_model, weight_type, arch):
    """Three sequences in their own slots, joined at different steps, batched steps of
    three rows and of one row, each row against its own reference forward pass."""
    kw = {} if arch == "llama" else {"arch": arch}
    path = str(synthetic_model(weight_type=weight_type, **SHAPE, **kw))
    tol = REF_TOL.get(weight_type, 5e-3)
    b = BatchSession(path, n_seq=3, n_ctx=64, n_batch=4, backend="cuda")   # prompts in chunks of 4
    refs = [ReferenceModel(path, kv_f16=True) for _ in PROMPTS]
    ids = []
    for i, p in enumerate(PROMPTS[:2]):
        ids.append(b.add_sequence(p))
        _close(b.last_logits(ids[i]), refs[i].forward(p)[-1], tol, f"{weight_type} sequence {i} prompt")
    rng = np.random.default_rng(2)
    for k in range(6):
        if k == 2:   # the third joins mid-stream
            ids.append(b.add_sequence(PROMPTS[2]))
            _close(b.last_logits(ids[2]), refs[2].forward(PROMPTS[2])[-1], tol, f"{weight_type} sequence 2 prompt")
        rows = list(range(len(ids))) if k != 4 else [1]   # step 4: one row alone (matrix-vector kernels)
        tokens = rng.integers(0, 256, size=len(rows)).tolist()
        got = b.step([(ids[i], t) for i, t in zip(rows, tokens)])
        assert got.shape == (len(rows), refs[0].n_vocab)
        for row, (i, t) in enumerate(zip(rows, tokens)):
            _close(got[row], refs[i].forward([t])[-1], tol, f"{weight_type} sequence {i} step {k}")


def _run(backend: str, model, skips, plan):
    """Fixed tokens through a batch; each sequence's logits per step and skip masks."""
    b = BatchSession(model, n_seq=len(skips), n_ctx=64, backend=backend)
    ids = [b.add_sequence(p, skip=k) for p, k in zip(PROMPTS, skips)]
    logits = [[] for _ in ids]
    for k in range(len(plan[0])):
        got = b.step([(s, plan[i][k]) for i, s in enumerate(ids)])
        for i in range(len(ids)):
            logits[i].append(got[i])
    return logits, [np.asarray(b.skip_stats(s).masks) for s in ids]


def test_cuda_batch_per_sequence_skip_equals_cpu(gpu, synthetic_model):
    """Each row under its own schedule: the masks of random, layers and none equal the
    CPU batch's exactly; the logits agree within the F32 tolerance."""
    model = ffnskip.Model(str(synthetic_model(weight_type="F32", **{**SHAPE, "n_layer": 4})))
    common = dict(cold_start=0, cold_end=0, warmup=0, refresh_every=0, record_masks=True)
    skips = [ffnskip.skip_config("random", target_ratio=0.5, seed=1, **common),
             ffnskip.skip_config("layers", layers=[1, 2], **common),
             ffnskip.skip_config(None, record_masks=True)]
    plan = np.random.default_rng(3).integers(0, 256, size=(3, 10)).tolist()
    cpu_logits, cpu_masks = _run("cpu", model, skips, plan)
    gpu_logits, gpu_masks = _run("cuda", model, skips, plan)
    for i in range(3):
        np.testing.assert_array_equal(gpu_masks[i], cpu_masks[i], err_msg=f"sequence {i}")
        for k in range(10):
            _close(gpu_logits[i][k], cpu_logits[i][k], 1e-3, f"sequence {i} step {k}")
    assert 0 < gpu_masks[0].sum() < gpu_masks[0].size and not gpu_masks[2].any()


def test_cuda_batch_cosine_gate_follows_cpu(gpu, synthetic_model):
    """FFN-SkipLLM's gate on each row's own residual: the GPU takes the CPU's decisions
    but where a cosine is within rounding of the threshold."""
    model = ffnskip.Model(str(synthetic_model(weight_type="F32", **{**SHAPE, "n_layer": 6})))
    skips = [ffnskip.skip_config("ffn_skip", warmup=1, threshold=t, cold_start=1, cold_end=1, record_masks=True)
             for t in (0.5, 0.8, 0.95)]
    plan = np.random.default_rng(4).integers(0, 256, size=(3, 12)).tolist()
    _, cpu_masks = _run("cpu", model, skips, plan)
    _, gpu_masks = _run("cuda", model, skips, plan)
    agree = np.mean([np.mean(g == c) for g, c in zip(gpu_masks, cpu_masks)])
    assert agree >= 0.95, f"GPU and CPU gate decisions agree on {agree:.1%}"
    assert sum(m.sum() for m in gpu_masks) > 0


def test_cuda_batch_generator_greedy(gpu, synthetic_model):
    """BatchGenerator on the GPU: greedy continuations of three prompts equal the CPU
    generator's (F32 weights, where both backends agree to 1e-3)."""
    path = str(synthetic_model(weight_type="F32", **SHAPE))
    want = BatchGenerator(path, n_seq=3, n_ctx=64).generate(PROMPTS, max_tokens=8, temperature=0, ignore_eos=True)
    got = BatchGenerator(path, n_seq=3, n_ctx=64, backend="cuda").generate(PROMPTS, max_tokens=8, temperature=0,
                                                                           ignore_eos=True)
    assert [c.tokens for c in got] == [c.tokens for c in want]


def test_cuda_batch_vote_equals_cpu(gpu, synthetic_model):
    """skip_alignment="vote" on the GPU: the majority masks of random policies equal the
    CPU batch's, and the step reads the same FFN bytes."""
    model = ffnskip.Model(str(synthetic_model(weight_type="F16", **{**SHAPE, "n_layer": 6})))
    common = dict(cold_start=0, cold_end=0, warmup=0, refresh_every=0, record_masks=True)
    skips = [ffnskip.skip_config("random", target_ratio=0.5, seed=s, **common) for s in (1, 2, 3)]
    plan = np.random.default_rng(5).integers(0, 256, size=(3, 8)).tolist()
    out = {}
    for backend in ("cpu", "cuda"):
        b = BatchSession(model, n_seq=3, n_ctx=64, backend=backend, skip_alignment="vote")
        ids = [b.add_sequence(p, skip=k) for p, k in zip(PROMPTS, skips)]
        for k in range(8):
            b.step([(s, plan[i][k]) for i, s in enumerate(ids)])
        out[backend] = ([np.asarray(b.skip_stats(s).masks) for s in ids], b.stats())
    for i in range(3):
        np.testing.assert_array_equal(out["cuda"][0][i], out["cpu"][0][i], err_msg=f"sequence {i}")
    np.testing.assert_array_equal(out["cuda"][0][0], out["cuda"][0][1])   # the vote: one mask for all rows
    assert out["cuda"][1].ffn_bytes_read == out["cpu"][1].ffn_bytes_read < out["cpu"][1].ffn_bytes


def _sidecar(path, n_embd, n_layer, layers, rank, seed, dtype):
    """Random surrogates for `layers` (rank 0: the bias alone)."""
    rng = np.random.default_rng(seed)
    sur = {il: sg.Surrogate(bias=rng.standard_normal(n_embd) * 0.05, up=rng.standard_normal((rank, n_embd)) * 0.1,
                            down=rng.standard_normal((n_embd, rank)) * 0.1) for il in layers}
    sg.save(path, sur, n_embd=n_embd, n_layer=n_layer, dtype=dtype)
    return str(path)


def test_cuda_batch_surrogates_equal_cpu(gpu, synthetic_model, tmp_path):
    """Left-out FFNs with surrogates in a GPU batch, rows on different sidecars (F32,
    F16, bias only) and one without: the masks, the surrogates run and the bytes read
    equal the CPU batch's; the logits agree within the F32 tolerance."""
    n_layer = 6
    model = ffnskip.Model(str(synthetic_model(weight_type="F32", **{**SHAPE, "n_layer": n_layer})))
    d = SHAPE["n_embd"]
    cars = [_sidecar(tmp_path / "a.gguf", d, n_layer, range(1, 5), 8, 1, "f32"),
            _sidecar(tmp_path / "b.gguf", d, n_layer, [2, 3], 4, 2, "f16"),
            _sidecar(tmp_path / "c.gguf", d, n_layer, [1, 2, 3, 4], 0, 3, "f32")]
    common = dict(cold_start=0, cold_end=0, warmup=0, refresh_every=0, record_masks=True)
    skips = [ffnskip.skip_config("random", target_ratio=0.5, seed=1, surrogates=cars[0], **common),
             ffnskip.skip_config("layers", layers=[2, 3, 4], surrogates=cars[1], **common),
             ffnskip.skip_config("random", target_ratio=0.4, seed=2, surrogates=cars[2], **common)]
    plan = np.random.default_rng(6).integers(0, 256, size=(3, 10)).tolist()
    out = {}
    for backend in ("cpu", "cuda"):
        b = BatchSession(model, n_seq=3, n_ctx=64, backend=backend)
        ids = [b.add_sequence(p, skip=k) for p, k in zip(PROMPTS, skips)]
        logits = [[] for _ in ids]
        for k in range(10):
            got = b.step([(s, plan[i][k]) for i, s in enumerate(ids)])
            for i in range(3):
                logits[i].append(got[i])
        out[backend] = (logits, [b.skip_stats(s) for s in ids], b.stats())
    (cpu_logits, cpu_stats, cpu_batch), (gpu_logits, gpu_stats, gpu_batch) = out["cpu"], out["cuda"]
    for i in range(3):
        np.testing.assert_array_equal(np.asarray(gpu_stats[i].masks), np.asarray(cpu_stats[i].masks),
                                      err_msg=f"sequence {i}")
        assert gpu_stats[i].surrogates_run == cpu_stats[i].surrogates_run, f"sequence {i}"
        for k in range(10):
            _close(gpu_logits[i][k], cpu_logits[i][k], 1e-3, f"sequence {i} step {k}")
    assert gpu_stats[1].surrogates_run > 0 and gpu_stats[0].surrogates_run > 0
    assert gpu_batch.surrogate_bytes_read == cpu_batch.surrogate_bytes_read > 0
    assert gpu_batch.ffn_bytes_read == cpu_batch.ffn_bytes_read


def test_cuda_batch_graphs_replay_the_eager_steps(gpu, synthetic_model, monkeypatch):
    """Steps that repeat a shape (rows, masks) are captured and replayed as graphs: every
    row's logits equal, bit for bit, those of the same steps launched one kernel at a
    time (FFNSKIP_CUDA_GRAPH=0), through joins, a one-row step and a fixed layer set."""
    model = ffnskip.Model(str(synthetic_model(weight_type="Q4_K", **{**SHAPE, "n_layer": 4})))
    skips = [None, ffnskip.skip_config("layers", layers=[1, 2], cold_start=0, cold_end=0, warmup=0), None]
    plan = np.random.default_rng(7).integers(0, 256, size=(3, 9)).tolist()

    def run(graph: str):
        monkeypatch.setenv("FFNSKIP_CUDA_GRAPH", graph)
        b = BatchSession(model, n_seq=3, n_ctx=64, backend="cuda")
        ids = [b.add_sequence(p, skip=k) for p, k in zip(PROMPTS[:2], skips[:2])]
        out = []
        for k in range(9):
            if k == 3:
                ids.append(b.add_sequence(PROMPTS[2], skip=skips[2]))
            rows = [1] if k == 6 else list(range(len(ids)))
            out.append(b.step([(ids[i], plan[i][k]) for i in rows]))
        return out

    eager, graphed = run("0"), run("1")
    for k, (e, g) in enumerate(zip(eager, graphed)):
        np.testing.assert_array_equal(g, e, err_msg=f"step {k}")
