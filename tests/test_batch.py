"""Batched decoding (BatchSession): several sequences, one forward pass per step.

Every row of a batched step runs the arithmetic of a single-sequence decode step (the
matrix kernels compute each token's dot products on their own, attention reads only
the row's own cache slot), so a sequence's logits must equal, bit for bit, those of the
same tokens decoded alone by a Session; the numpy reference checks the batch
independently within test_engine's tolerance.
"""
from __future__ import annotations

import numpy as np
import pytest

import ffnskip
from act_quant import emulate_activation_quantization
from ffnskip.batch import BatchSession
from lone_session import lone_generate
from reference_forward import ReferenceModel

SHAPE = dict(n_embd=256, n_layer=2, n_head=4, n_head_kv=2, seed=1)
PROMPTS = [[5, 17, 33, 100, 200, 7, 9], [250, 3], [44, 12, 8, 1, 99, 31, 64, 2, 77, 150, 11], [6]]


def _single(path_or_model, prompt, steps, **kw):
    """Logits after the prompt, then after each decode step, from a lone Session."""
    s = ffnskip.Session(path_or_model, **kw)
    out = [s.eval(prompt)]
    out += [s.eval([t]) for t in steps]
    return out


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("weight_type", ["F32", "Q4_1", "Q4_K"])
def test_batch_equals_single_sequences(synthetic_model, weight_type, arch):
    kw = {} if arch == "llama" else {"arch": arch}
    path = synthetic_model(weight_type=weight_type, **SHAPE, **kw)
    rng = np.random.default_rng(0)
    steps = [rng.integers(0, 256, size=6).tolist() for _ in PROMPTS]
    want = [_single(str(path), p, s, n_ctx=64, n_threads=2, n_batch=4) for p, s in zip(PROMPTS, steps)]
    b = BatchSession(str(path), n_seq=4, n_ctx=64, n_threads=2, n_batch=4)   # prompts in chunks of 4
    ids = [b.add_sequence(p) for p in PROMPTS]
    for i, seq in enumerate(ids):
        np.testing.assert_array_equal(b.last_logits(seq), want[i][0])
    for k in range(6):
        got = b.step([(seq, steps[i][k]) for i, seq in enumerate(ids)])
        assert got.shape == (4, want[0][0].size)
        for i, seq in enumerate(ids):
            np.testing.assert_array_equal(got[i], want[i][k + 1], err_msg=f"sequence {i}, step {k}")
            np.testing.assert_array_equal(b.last_logits(seq), got[i])
    assert [b.n_past(s) for s in ids] == [len(p) + 6 for p in PROMPTS]


def test_batch_matches_reference(synthetic_model):
    """Independently of Session: each batched sequence against the numpy forward pass."""
    path = synthetic_model(weight_type="Q8_0", **SHAPE)
    types = {t["name"]: t["type"] for t in ffnskip._core.gguf_inspect(str(path))["tensors"]}
    b = BatchSession(str(path), n_seq=3, n_ctx=64, n_threads=2)
    prompts, steps = PROMPTS[:3], [[1, 2, 3], [200, 100, 50], [9, 9, 9]]
    refs = []
    for p in prompts:
        ref = ReferenceModel(path, kv_f16=True)
        emulate_activation_quantization(ref, types)
        ref.forward(p, 0)
        refs.append(ref)
    ids = [b.add_sequence(p) for p in prompts]
    for k in range(3):
        got = b.step([(seq, steps[i][k]) for i, seq in enumerate(ids)])
        for i in range(3):
            want = refs[i].forward([steps[i][k]])[-1]
            assert np.abs(got[i] - want).max() / want.std() < 0.10   # test_engine's 8-bit tolerance


def test_join_and_leave_mid_stream(synthetic_model):
    """Sequences join and leave between steps, a freed slot is reused, and steps may
    name any subset of the active sequences in any order."""
    path = synthetic_model(weight_type="Q4_0", **SHAPE)
    model = ffnskip.Model(str(path))
    rng = np.random.default_rng(1)
    plan = {i: rng.integers(0, 256, size=12).tolist() for i in range(4)}
    want = {i: _single(model, PROMPTS[i], plan[i], n_ctx=64, n_threads=2) for i in range(4)}
    b = BatchSession(model, n_seq=3, n_ctx=64, n_threads=2)
    seq_of: dict[int, int] = {}
    fed: dict[int, int] = {}

    def join(i):
        seq_of[i] = b.add_sequence(PROMPTS[i])
        fed[i] = 0
        np.testing.assert_array_equal(b.last_logits(seq_of[i]), want[i][0])

    def step(members):
        pairs = [(seq_of[i], plan[i][fed[i]]) for i in members]
        got = b.step(pairs)
        for row, i in enumerate(members):
            fed[i] += 1
            np.testing.assert_array_equal(got[row], want[i][fed[i]], err_msg=f"sequence {i} token {fed[i]}")

    join(0)
    step([0])
    step([0])
    join(1)
    step([1, 0])
    join(2)
    assert b.n_active == 3
    step([0, 1, 2])
    step([2])                        # a step need not include every sequence
    b.remove_sequence(seq_of[0])     # leaves; its slot goes to sequence 3
    assert b.n_active == 2 and not b._native.has_sequence(seq_of[0])
    join(3)
    assert seq_of[3] not in (seq_of[0], seq_of[1], seq_of[2])   # ids are not reused
    assert b.sequences() == [seq_of[1], seq_of[2], seq_of[3]]
    for _ in range(4):
        step([3, 2, 1])
    b.remove_sequence(seq_of[1])
    step([2, 3])
    assert b.step([]).shape[0] == 0


def test_bad_input(synthetic_model):
    path = synthetic_model(weight_type="Q4_0", **SHAPE)
    b = BatchSession(str(path), n_seq=2, n_ctx=16, n_threads=1)
    a = b.add_sequence([1, 2, 3])
    with pytest.raises(ValueError, match="no sequence 7"):
        b.step([(7, 1)])
    with pytest.raises(ValueError, match="no sequence 7"):
        b.remove_sequence(7)
    with pytest.raises(ValueError, match="no sequence"):
        b.last_logits(-1)
    with pytest.raises(ValueError, match="twice"):
        b.step([(a, 1), (a, 2)])
    with pytest.raises(ValueError, match="out of range"):
        b.step([(a, b.model.n_vocab)])
    with pytest.raises(ValueError, match="out of range"):
        b.add_sequence([1, -1])
    with pytest.raises(ValueError, match="more than the context of 16"):
        b.add_sequence(list(range(17)))
    with pytest.raises(ValueError, match="empty"):
        b.add_sequence([])
    with pytest.raises(ValueError, match="does not support the 'skipdecode' skip policy"):
        b.add_sequence([1], skip="skipdecode")
    with pytest.raises(FileNotFoundError, match="missing-surrogates.gguf"):
        b.add_sequence([1], skip=dict(policy="layers", layers=[1], surrogates="missing-surrogates.gguf"))
    with pytest.raises(ValueError, match="skip_alignment must be 'none' or 'vote', got 'majority'"):
        BatchSession(str(path), n_seq=2, n_ctx=16, skip_alignment="majority")
    assert b.n_past(a) == 3 and b.n_active == 1   # failed calls changed nothing
    b.add_sequence([4])
    with pytest.raises(ValueError, match="all 2 sequence slots are taken"):
        b.add_sequence([5])
    for t in range(13):
        b.step([(a, t)])
    with pytest.raises(ValueError, match="context of sequence 0 is full"):
        b.step([(a, 1)])
    with pytest.raises(ValueError, match="n_seq"):
        BatchSession(str(path), n_seq=0)
    params = ffnskip._core.BatchParams()
    params.backend = "tpu"
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        ffnskip._core.BatchSession(b.model, params)
    if "cuda" not in ffnskip.available_backends():
        params.backend = "cuda"
        with pytest.raises(ffnskip.FfnskipError, match="this build of ffnskip has no CUDA backend"):
            ffnskip._core.BatchSession(b.model, params)


def _greedy_single(model, prompt, n):
    s = ffnskip.Session(model, n_ctx=256, n_threads=2)
    logits = s.eval(prompt)
    out = []
    for _ in range(n):
        out.append(int(np.argmax(logits)))
        logits = s.eval([out[-1]])
    return out, logits


@pytest.mark.slow
def test_smollm2_greedy_batch_equals_single(smollm2_q4_1):
    """Four prompts of different lengths decoded together on the real model: the same
    greedy tokens and the same final logits, bit for bit, as each decoded alone."""
    model = ffnskip.Model(str(smollm2_q4_1))
    texts = ["The capital of France is", "def fibonacci(n):",
             "Once upon a time, in a small village by the sea, there lived", "1, 2, 3, 4,"]
    prompts = [model.tokenize(t) for t in texts]
    n = 16
    want = [_greedy_single(model, p, n) for p in prompts]
    b = BatchSession(model, n_seq=4, n_ctx=256, n_threads=2)
    ids = [b.add_sequence(p) for p in prompts]
    tokens = [[int(np.argmax(b.last_logits(s)))] for s in ids]
    for _ in range(n - 1):
        got = b.step([(s, tokens[i][-1]) for i, s in enumerate(ids)])
        for i in range(4):
            tokens[i].append(int(np.argmax(got[i])))
    last = b.step([(s, tokens[i][-1]) for i, s in enumerate(ids)])
    for i in range(4):
        assert tokens[i] == want[i][0], texts[i]
        np.testing.assert_array_equal(last[i], want[i][1])


def _session_generate(model, prompt, skip, n, n_ctx):
    """A lone Session's tokens, logits and skip masks (lone_session.lone_generate)."""
    return lone_generate(model, prompt, skip, n, n_ctx)[:3]


def _batch_generate(b, prompts, skips, n):
    ids = [b.add_sequence(p, skip=k) for p, k in zip(prompts, skips)]
    logits = [[b.last_logits(s)] for s in ids]
    tokens = [[int(np.argmax(l[0]))] for l in logits]
    for _ in range(n - 1):
        got = b.step([(s, tokens[i][-1]) for i, s in enumerate(ids)])
        for i in range(len(ids)):
            logits[i].append(got[i])
            tokens[i].append(int(np.argmax(got[i])))
    masks = [np.asarray(b.skip_stats(s).masks) for s in ids]
    return tokens, logits, masks


def _check_against_sessions(model, b, prompts, skips, n, n_ctx):
    tokens, logits, masks = _batch_generate(b, prompts, skips, n)
    for i, (p, k) in enumerate(zip(prompts, skips)):
        want_tokens, want_logits, want_masks = _session_generate(model, p, k, n, n_ctx)
        assert tokens[i] == want_tokens, f"sequence {i} ({k.policy})"
        np.testing.assert_array_equal(masks[i], want_masks, err_msg=f"sequence {i}")
        for j in range(n):
            np.testing.assert_array_equal(logits[i][j], want_logits[j], err_msg=f"sequence {i}, token {j}")
    return masks


def test_per_sequence_skipping(synthetic_model):
    """Each sequence under its own policy (different random masks, a layer list that
    also prunes the prompt, none): the same masks, logits and tokens as alone."""
    path = synthetic_model(weight_type="Q4_1", **{**SHAPE, "n_layer": 4})
    model = ffnskip.Model(str(path))
    n, n_ctx = 10, 64
    common = dict(cold_start=0, cold_end=0, warmup=0, refresh_every=0, record_masks=True)
    skips = [ffnskip.skip_config("random", target_ratio=0.5, seed=1, **common),
             ffnskip.skip_config("random", target_ratio=0.5, seed=2, **common),
             ffnskip.skip_config("layers", layers=[1, 2], **common),
             ffnskip.skip_config(None, record_masks=True)]
    b = BatchSession(model, n_seq=4, n_ctx=n_ctx, n_threads=2)
    masks = _check_against_sessions(model, b, PROMPTS, skips, n, n_ctx)
    assert masks[0].shape == (n - 1, 4) and 0 < masks[0].sum() < masks[0].size
    assert not np.array_equal(masks[0], masks[1])   # the rows wanted different FFNs
    assert masks[2][:, [1, 2]].all() and not masks[3].any()


@pytest.mark.slow
def test_smollm2_per_sequence_ffn_skip(smollm2_q4_1):
    """FFN-SkipLLM's gate on each sequence's own residual, batched with other policies."""
    model = ffnskip.Model(str(smollm2_q4_1))
    texts = ["The capital of France is", "def fibonacci(n):", "Once upon a time, there lived", "1, 2, 3, 4,"]
    prompts = [model.tokenize(t) for t in texts]
    n, n_ctx = 24, 128
    skips = [ffnskip.skip_config("ffn_skip", warmup=2, record_masks=True),
             ffnskip.skip_config("ffn_skip", warmup=2, threshold=0.9, record_masks=True),
             ffnskip.skip_config("static", seed=3, warmup=2, record_masks=True),
             ffnskip.skip_config(None, record_masks=True)]
    b = BatchSession(model, n_seq=4, n_ctx=n_ctx, n_threads=2)
    masks = _check_against_sessions(model, b, prompts, skips, n, n_ctx)
    assert masks[0].any() and masks[1].any() and not masks[3].any()


def test_prompt_in_chunks_between_steps(synthetic_model):
    """A joining sequence's prompt evaluated a few tokens at a time between the other
    sequences' steps gives the same logits as the whole prompt at once."""
    path = synthetic_model(weight_type="Q4_K", **SHAPE)
    model = ffnskip.Model(str(path))
    long_prompt = list(range(3, 40))
    want_long = _single(model, long_prompt, [5, 6], n_ctx=64, n_threads=2)
    want_other = _single(model, PROMPTS[0], list(range(10, 30)), n_ctx=64, n_threads=2)
    b = BatchSession(model, n_seq=2, n_ctx=64, n_threads=2)
    other = b.add_sequence(PROMPTS[0])
    seq = b.join_sequence(long_prompt)
    assert b._native.n_pending(seq) == len(long_prompt) and b.n_active == 2
    with pytest.raises(ValueError, match="prompt tokens to evaluate"):
        b.step([(seq, 1)])
    with pytest.raises(ValueError, match="has not finished its prompt"):
        b.last_logits(seq)
    with pytest.raises(ValueError, match="max_tokens must be >= 1"):
        b.prefill(seq, 0)
    fed = 0
    while True:
        left = b.prefill(seq, 5)
        got = b.step([(other, 10 + fed)])      # the other sequence keeps decoding
        fed += 1
        np.testing.assert_array_equal(got[0], want_other[fed])
        if left == 0:
            break
    assert fed == 8 and b.n_past(seq) == len(long_prompt)
    np.testing.assert_array_equal(b.last_logits(seq), want_long[0])
    got = b.step([(seq, 5), (other, 10 + fed)])
    np.testing.assert_array_equal(got[0], want_long[1])
    np.testing.assert_array_equal(got[1], want_other[fed + 1])
    assert b.prefill(seq, 5) == 0   # nothing left: no work
