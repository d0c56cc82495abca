"""FFN surrogates and aligned skip windows in batched decoding (BatchSession).

With skip_alignment "none" (the default) each row of a batched step follows its own
schedule: a skipped FFN with a surrogate runs the surrogate, through the same routine
as a lone Session (CpuForward::ffn_block), so every sequence equals the same sequence
decoded alone, bit for bit, and counts the same surrogates. With "vote" the majority
of the rows' decisions applies to every row, per step and layer.
"""
from __future__ import annotations

import numpy as np
import pytest

import ffnskip
from ffnskip import surrogate as sg
from ffnskip.batch import BatchGenerator, BatchSession
from lone_session import lone_generate

N_LAYER, N_EMBD = 6, 64
PROMPTS = [[12, 40, 7, 99, 150, 3], [250, 3], [44, 12, 8, 1, 99, 31, 64, 2, 77], [6], [17, 33, 5, 200]]
N_CTX = 64


@pytest.fixture(scope="module", params=["F32", "Q4_1"])
def model(request, synthetic_model):
    path = synthetic_model(n_embd=N_EMBD, n_layer=N_LAYER, n_head=4, n_head_kv=2, n_ff=96,
                           weight_type=request.param, seed=23, n_ctx=128)
    return ffnskip.Model(str(path))


def _sidecar(tmp_path, name, layers, rank, seed, dtype="f32"):
    """Random surrogates for `layers` (rank 0: the bias alone)."""
    rng = np.random.default_rng(seed)
    sur = {il: sg.Surrogate(bias=rng.standard_normal(N_EMBD) * 0.05, up=rng.standard_normal((rank, N_EMBD)) * 0.1,
                            down=rng.standard_normal((N_EMBD, rank)) * 0.1) for il in layers}
    path = tmp_path / name
    sg.save(path, sur, n_embd=N_EMBD, n_layer=N_LAYER, dtype=dtype)
    return str(path)


@pytest.fixture(scope="module")
def sidecars(tmp_path_factory):
    d = tmp_path_factory.mktemp("sidecars")
    return {"all": _sidecar(d, "all.gguf", range(1, 5), rank=6, seed=1),
            "some": _sidecar(d, "some.gguf", [2, 3], rank=3, seed=2, dtype="f16"),
            "bias": _sidecar(d, "bias.gguf", [1, 2, 3, 4], rank=0, seed=3)}


def _lone(model, prompt, skip, n):
    """A lone Session's tokens, logits, masks and skip stats (lone_session.lone_generate)."""
    return lone_generate(model, prompt, skip, n, N_CTX)


def _batched(b, prompts, skips, n):
    """The same greedy generations together in one BatchSession."""
    ids = [b.add_sequence(p, skip=k) for p, k in zip(prompts, skips)]
    logits = [[b.last_logits(s)] for s in ids]
    tokens = [[int(np.argmax(l[0]))] for l in logits]
    for _ in range(n - 1):
        got = b.step([(s, tokens[i][-1]) for i, s in enumerate(ids)])
        for i in range(len(ids)):
            logits[i].append(got[i])
            tokens[i].append(int(np.argmax(got[i])))
    stats = [b.skip_stats(s) for s in ids]
    return tokens, logits, [np.asarray(st.masks, dtype=bool) for st in stats], stats


def _config(policy, **kw):
    base = dict(cold_start=1, cold_end=1, warmup=2, refresh_every=0, record_masks=True)
    return ffnskip.skip_config(policy, **{**base, **kw})


def _mixed_skips(sidecars):
    """Rows that disagree: gated windows at different layers, random masks, a layer list
    (which also prunes the prompt), surrogates from different sidecars or none."""
    return [_config("ffn_skip", threshold=-1.0, max_skip=2, surrogates=sidecars["all"]),
            _config("random", target_ratio=0.5, seed=7, cold_start=0, cold_end=0, surrogates=sidecars["some"]),
            _config("layers", layers=[2, 3], surrogates=sidecars["bias"]),
            _config("ffn_skip", threshold=-1.0, max_skip=3, cold_start=2, surrogates=sidecars["all"]),
            _config("random", target_ratio=0.4, seed=9, cold_start=0, cold_end=0)]


def test_surrogates_in_a_batch_equal_lone_sessions(model, sidecars):
    n = 10
    skips = _mixed_skips(sidecars)
    b = BatchSession(model, n_seq=5, n_ctx=N_CTX, n_threads=2, skip_alignment="none")
    assert b.skip_alignment == "none"
    tokens, logits, masks, stats = _batched(b, PROMPTS, skips, n)
    for i, (p, k) in enumerate(zip(PROMPTS, skips)):
        want_tokens, want_logits, want_masks, want_stats = _lone(model, p, k, n)
        assert tokens[i] == want_tokens, f"sequence {i}"
        np.testing.assert_array_equal(masks[i], want_masks, err_msg=f"sequence {i}")
        for j in range(n):
            np.testing.assert_array_equal(logits[i][j], want_logits[j], err_msg=f"sequence {i}, token {j}")
        assert stats[i].surrogates_run == want_stats.surrogates_run, f"sequence {i}"
        assert stats[i].ffn_skipped == want_stats.ffn_skipped
    # The surrogates did run, for the left-out FFNs that have one (sidecar "some": 2, 3).
    assert stats[0].surrogates_run == stats[0].ffn_skipped > 0
    assert 0 < stats[1].surrogates_run == masks[1][:, [2, 3]].sum() < stats[1].ffn_skipped
    assert stats[2].surrogates_run == stats[2].ffn_skipped == 2 * (n - 1)
    assert stats[4].surrogates_run == 0 < stats[4].ffn_skipped
    # The rows disagreed, so some FFNs were read for some rows only.
    st = b.stats()
    assert st.n_steps == n - 1 and 0 < st.ffn_bytes_read < st.ffn_bytes and st.surrogate_bytes_read > 0


def test_default_alignment_is_none_and_a_lone_row_is_a_session(model, sidecars):
    skip = _config("ffn_skip", threshold=-1.0, max_skip=2, surrogates=sidecars["all"])
    b = BatchSession(model, n_seq=2, n_ctx=N_CTX, n_threads=2)
    assert b.skip_alignment == "none"
    v = BatchSession(model, n_seq=2, n_ctx=N_CTX, n_threads=2, skip_alignment="vote")
    want_tokens, want_logits, _, want_stats = _lone(model, PROMPTS[0], skip, 8)
    for batch in (b, v):   # one row: its own decisions are the majority's
        tokens, logits, _, stats = _batched(batch, PROMPTS[:1], [skip], 8)
        assert tokens[0] == want_tokens
        for j in range(8):
            np.testing.assert_array_equal(logits[0][j], want_logits[j])
        assert stats[0].surrogates_run == want_stats.surrogates_run > 0


def _majority(masks):
    """(rows, steps, layers) -> (steps, layers): skipped by more than half the rows."""
    return 2 * masks.sum(axis=0) > masks.shape[0]


def test_vote_applies_the_majority_of_the_lone_masks(model, sidecars):
    """Random masks do not depend on the residual, so every step's majority can be
    computed from the lone sequences' masks; the vote reads fewer FFN bytes than none."""
    n = 12
    common = dict(cold_start=0, cold_end=0, warmup=1, target_ratio=0.5)
    skips = [_config("random", seed=s, **common, **({"surrogates": sidecars["all"]} if s % 2 else {}))
             for s in range(5)]
    lone = np.stack([_lone(model, p, k, n)[2] for p, k in zip(PROMPTS, skips)])   # (rows, steps, layers)
    want = _majority(lone)
    assert (lone != want).any()   # the vote overrules some rows
    runs = {}
    for alignment in ("none", "vote"):
        b = BatchSession(model, n_seq=5, n_ctx=N_CTX, n_threads=2, skip_alignment=alignment)
        _, _, masks, stats = _batched(b, PROMPTS, skips, n)
        runs[alignment] = b.stats()
        per_layer = runs[alignment].ffn_bytes // ((n - 1) * N_LAYER)   # the layers' FFNs are alike
        if alignment == "none":
            np.testing.assert_array_equal(np.stack(masks), lone)
            read = ~lone.all(axis=0)   # read unless every row skips
        else:
            for i in range(5):
                np.testing.assert_array_equal(masks[i], want, err_msg=f"row {i}")
                # A row's stats count what ran for it: its surrogates under the vote's mask.
                has_sur = np.zeros(N_LAYER, bool)
                has_sur[1:5] = i % 2 == 1
                assert stats[i].ffn_skipped == want.sum()
                assert stats[i].surrogates_run == (want & has_sur).sum()
            read = ~want
        assert runs[alignment].ffn_bytes_read == per_layer * read.sum(), alignment
    assert runs["vote"].ffn_bytes_read < runs["none"].ffn_bytes_read
    assert runs["vote"].ffn_read_saved == pytest.approx(want.mean())


def test_vote_over_gated_windows(model, sidecars):
    """FFN-Skip gates that open windows at different layers (threshold -1 fires at the
    first gate layer): alone, rows 0 skips layers 1-2 and rows 1, 2 skip 2-3 after the
    warm-up; voted, all three skip 2-3 (layer 1: one vote of three), so a skipped FFN is
    never read."""
    n = 8
    skips = [_config("ffn_skip", threshold=-1.0, max_skip=2, cold_start=1, surrogates=sidecars["some"]),
             _config("ffn_skip", threshold=-1.0, max_skip=2, cold_start=2),
             _config("ffn_skip", threshold=-1.0, max_skip=2, cold_start=2, surrogates=sidecars["all"])]
    lone = np.stack([_lone(model, p, k, n)[2] for p, k in zip(PROMPTS, skips)])
    after = lone[:, 2:]   # steps after the warm-up of 2
    assert after[0].sum(axis=0).tolist() == [0, n - 3, n - 3, 0, 0, 0]
    assert after[1].sum(axis=0).tolist() == [0, 0, n - 3, n - 3, 0, 0]
    b = BatchSession(model, n_seq=3, n_ctx=N_CTX, n_threads=2, skip_alignment="vote")
    _, _, masks, stats = _batched(b, PROMPTS[:3], skips, n)
    for i in range(3):
        np.testing.assert_array_equal(masks[i], _majority(lone), err_msg=f"row {i}")
    assert [s.surrogates_run for s in stats] == [2 * (n - 3), 0, 2 * (n - 3)]
    st = b.stats()
    per_layer = st.ffn_bytes // ((n - 1) * N_LAYER)
    assert st.ffn_bytes_read == per_layer * ((n - 1) * N_LAYER - 2 * (n - 3))


def test_batch_generator_runs_surrogates(model, sidecars):
    skip = dict(policy="ffn_skip", threshold=-1.0, cold_start=1, cold_end=1, warmup=2, refresh_every=0,
                max_skip=2, surrogates=sidecars["all"])
    prompts = PROMPTS[:3]
    g = BatchGenerator(model, n_seq=3, n_ctx=N_CTX, n_threads=2)
    got = g.generate(prompts, max_tokens=8, temperature=0, ignore_eos=True, skip=skip)
    s = ffnskip.Session(model, n_ctx=N_CTX, n_threads=2)
    for p, c in zip(prompts, got):
        want = s.generate(p, max_tokens=8, temperature=0, ignore_eos=True, skip=skip)
        assert c.tokens == want.tokens
        assert c.stats["surrogates_run"] == want.stats["surrogates_run"] > 0
    with pytest.raises(FileNotFoundError):
        BatchGenerator(model, n_seq=2, n_ctx=N_CTX, skip=dict(skip, surrogates="missing.gguf"))
    with pytest.raises(ValueError, match="skip_alignment must be 'none' or 'vote', got 'all'"):
        BatchGenerator(model, n_seq=2, n_ctx=N_CTX, skip_alignment="all")


def test_refusals_and_bad_sidecars(model, sidecars, tmp_path):
    b = BatchSession(model, n_seq=2, n_ctx=N_CTX, n_threads=1)
    with pytest.raises(ValueError, match="does not support the 'shortgpt' skip policy"):
        b.add_sequence([1], skip=dict(policy="shortgpt", layers=[2], surrogates=sidecars["all"]))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + bytes(40))
    with pytest.raises(ffnskip.FormatError, match="junk.gguf"):
        b.add_sequence([1], skip=dict(policy="layers", layers=[1], surrogates=str(junk)))
    assert b.n_active == 0
    for bad in ("", "Vote", "majority"):
        with pytest.raises(ValueError, match=f"skip_alignment must be 'none' or 'vote', got '{bad}'"):
            BatchSession(model, n_seq=2, n_ctx=N_CTX, skip_alignment=bad)
    params = ffnskip._core.BatchParams()
    assert params.skip_alignment == "none"
    params.skip_alignment = "x"
    with pytest.raises(ValueError, match="got 'x'"):
        ffnskip._core.BatchSession(model, params)
