"""FFN skipping in the decode loop, checked against a numpy implementation of the
policy written here from its specification (the authors' schedule), running on the
numpy reference forward."""
from __future__ import annotations

import numpy as np
import pytest

import ffnskip
from reference_forward import ReferenceModel, rms_norm, silu

N_LAYER = 12


# ---- the policy, from its specification -------------------------------------------------

class SpecPolicy:
    """ffn_skip as specified: decode step g (the one feeding generated token g) may skip
    iff g >= warmup and not (refresh_every > 0 and (g - warmup + 1) % refresh_every == 0).
    The gate looks after each layer l whose FFN was computed, cold_start-1 <= l <=
    n_layer-cold_end-2; the first time cos >= threshold, FFNs l+1 .. l+max_skip are
    skipped, cut at the cold end; once per step."""

    def __init__(self, n_layer, threshold, cold_start, cold_end, warmup, refresh_every, max_skip):
        self.n_layer, self.threshold = n_layer, threshold
        self.cold_start, self.cold_end = cold_start, cold_end
        self.warmup, self.refresh_every, self.max_skip = warmup, refresh_every, max_skip

    def may_skip(self, g: int) -> bool:
        if g < self.warmup:
            return False
        return not (self.refresh_every > 0 and (g - self.warmup + 1) % self.refresh_every == 0)

    def gate_range(self) -> range:
        return range(max(self.cold_start - 1, 0), self.n_layer - self.cold_end - 1)


def reference_step(ref: ReferenceModel, token: int, policy: SpecPolicy, g: int):
    """One decode step of the numpy forward with the policy: (logits, mask, cosines)."""
    pos = ref.n_past
    x = ref.tok_embd[[token]].astype(np.float32)
    mask = np.zeros(ref.n_layer, np.uint8)
    cosines = np.full(ref.n_layer, np.nan)
    spent = not policy.may_skip(g)
    for il, L in enumerate(ref.layers):
        h = rms_norm(x, L["attn_norm"], ref.eps)
        q = (h @ L["wq"].T).reshape(1, ref.n_head, ref.head_dim_k)
        k = (h @ L["wk"].T).reshape(1, ref.n_head_kv, ref.head_dim_k)
        v = (h @ L["wv"].T).reshape(1, ref.n_head_kv, ref.head_dim_v)
        q, k = ref.rope(q, np.array([pos])), ref.rope(k, np.array([pos]))
        ref._store(il, pos, k, v)
        x = x + ref.attention(il, q, pos) @ L["wo"].T
        if mask[il]:
            continue
        hn = rms_norm(x, L["ffn_norm"], ref.eps)
        after = x + (silu(hn @ L["w_gate"].T) * (hn @ L["w_up"].T)) @ L["w_down"].T
        a, b = after.astype(np.float64).ravel(), x.astype(np.float64).ravel()
        cosines[il] = a @ b / np.sqrt((a @ a) * (b @ b))
        x = after
        if not spent and il in policy.gate_range() and cosines[il] >= policy.threshold:
            last = min(il + policy.max_skip, ref.n_layer - policy.cold_end - 1)
            mask[il + 1:last + 1] = 1
            spent = True
    ref.n_past = pos + 1
    logits = rms_norm(x, ref.output_norm, ref.eps) @ ref.output.T
    return logits[0], mask, cosines


# ---- fixtures -------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_path(synthetic_model):
    return str(synthetic_model(n_embd=128, n_layer=N_LAYER, n_head=4, n_head_kv=2, weight_type="F32", seed=11, n_ctx=256))


PROMPT = [12, 40, 7, 99, 150, 3, 61]


def _generate(path, n, **skip):
    session = ffnskip.Session(path, n_ctx=128, n_threads=2)
    config = dict(record_masks=True, record_cosines=True, **skip)
    return session.generate(PROMPT, max_tokens=n, temperature=0, skip=config)


def _full_cosines(path, n=24):
    r = _generate(path, n, policy="full")
    return r.stats["cosines"]


def _threshold_between(values: np.ndarray) -> float:
    """A threshold in the widest gap between the observed cosines (their middle 80%),
    so that rounding differences between engine and oracle (up to ~3e-4 after many
    steps through the fp16 cache) cannot put them on different sides of it."""
    v = np.sort(values[np.isfinite(values)].ravel())
    lo, hi = len(v) // 10, len(v) - len(v) // 10
    gaps = np.diff(v[lo:hi])
    i = int(np.argmax(gaps))
    assert gaps[i] > 1e-3, f"no clear gap between observed cosines (widest {gaps[i]:.2e})"
    return float((v[lo + i] + v[lo + i + 1]) / 2)


# ---- tests -------------------------------------------------------------------------

def test_skipping_off_is_bit_identical(model_path):
    """Policy machinery on, nothing skipped: same tokens and bit-identical logits."""
    full_session = ffnskip.Session(model_path, n_ctx=128, n_threads=2)
    full = full_session.generate(PROMPT, max_tokens=20, temperature=0)
    for skip in (dict(policy="ffn_skip", max_skip=0, warmup=0),
                 dict(policy="ffn_skip", warmup=100),
                 dict(policy="random", target_ratio=0.0, warmup=0)):
        session = ffnskip.Session(model_path, n_ctx=128, n_threads=2)
        r = session.generate(PROMPT, max_tokens=20, temperature=0, skip=skip)
        assert r.tokens == full.tokens, skip
        assert r.stats["ffn_skipped"] == 0
        np.testing.assert_array_equal(session.logits, full_session.logits)


def test_matches_numpy_policy_oracle(model_path):
    cos = _full_cosines(model_path)
    threshold = _threshold_between(cos[:, 1:N_LAYER - 2])
    settings = dict(threshold=threshold, cold_start=2, cold_end=1, warmup=3, refresh_every=4, max_skip=2)
    r = _generate(model_path, 24, policy="ffn_skip", **settings)
    masks, cosines = r.stats["skip_masks"], r.stats["cosines"]

    ref = ReferenceModel(model_path, kv_f16=True)
    policy = SpecPolicy(N_LAYER, **settings)
    logits = ref.forward(PROMPT, 0)[-1]
    for g, token in enumerate(r.tokens):
        assert int(np.argmax(logits)) == token, f"token {g}"
        if g == len(r.tokens) - 1:
            break
        logits, mask, ref_cos = reference_step(ref, token, policy, g)
        np.testing.assert_array_equal(masks[g], mask, err_msg=f"step {g}")
        measured = np.isfinite(ref_cos)
        np.testing.assert_array_equal(np.isfinite(cosines[g]), measured)
        np.testing.assert_allclose(cosines[g][measured], ref_cos[measured], atol=5e-4)
    assert masks.sum() > 0, "the gate never opened: the test would prove nothing"
    assert (masks.sum(axis=1) == 0).sum() > 0, "the gate always opened"


def test_schedule_warmup_refresh_cold_and_budget(model_path):
    warmup, refresh, max_skip, cold_start, cold_end = 5, 3, 3, 2, 2
    r = _generate(model_path, 40, policy="ffn_skip", threshold=-1.0, warmup=warmup, refresh_every=refresh,
                  max_skip=max_skip, cold_start=cold_start, cold_end=cold_end)
    masks = r.stats["skip_masks"]
    policy = SpecPolicy(N_LAYER, -1.0, cold_start, cold_end, warmup, refresh, max_skip)
    for g, row in enumerate(masks):
        if not policy.may_skip(g):
            assert row.sum() == 0, f"step {g} (warm-up or refresh) skipped"
        else:
            # threshold -1 opens the gate at the first look: right after cold_start - 1
            expected = np.zeros(N_LAYER, np.uint8)
            expected[cold_start:min(cold_start + max_skip, N_LAYER - cold_end)] = 1
            np.testing.assert_array_equal(row, expected, err_msg=f"step {g}")
    assert masks[:, :cold_start].sum() == 0 and masks[:, N_LAYER - cold_end:].sum() == 0
    assert masks.sum(axis=1).max() <= max_skip
    # the stats agree with the masks
    assert r.stats["ffn_skipped"] == masks.sum()
    assert r.stats["skipped_per_layer"] == list(masks.sum(axis=0))
    assert r.stats["ffn_total"] == masks.size
    after = masks[warmup:]
    assert r.stats["ffn_skipped_after_warmup"] == after.sum()
    assert r.stats["skip_ratio_after_warmup"] == pytest.approx(after.sum() / after.size)


def test_gate_restricted_to_listed_ffns(model_path):
    """ffn_skip with `layers`: the gate leaves out the next max_skip listed FFNs after it
    opens (cut at the cold end), never an unlisted one."""
    allowed, max_skip, cold_start, cold_end = [3, 5, 6, N_LAYER - 1], 2, 1, 1
    r = _generate(model_path, 24, policy="ffn_skip", threshold=-1.0, warmup=2, refresh_every=4, max_skip=max_skip,
                  cold_start=cold_start, cold_end=cold_end, layers=allowed)
    policy = SpecPolicy(N_LAYER, -1.0, cold_start, cold_end, 2, 4, max_skip)
    expected = np.zeros(N_LAYER, np.uint8)
    expected[[3, 5]] = 1   # the gate opens after layer 0; layer N_LAYER - 1 is cold
    for g, row in enumerate(r.stats["skip_masks"]):
        np.testing.assert_array_equal(row, expected if policy.may_skip(g) else 0 * expected, err_msg=f"step {g}")
    # With a window that reaches the cold end first, fewer are left out.
    r = _generate(model_path, 12, policy="ffn_skip", threshold=-1.0, warmup=0, refresh_every=0, max_skip=3,
                  cold_start=5, cold_end=1, layers=[1, 2, 6, N_LAYER - 1])
    expected = np.zeros(N_LAYER, np.uint8)
    expected[6] = 1
    assert all((row == expected).all() for row in r.stats["skip_masks"])


def test_warmup_tokens_equal_full_model(model_path):
    full = _generate(model_path, 30, policy="full")
    warmup = 6
    r = _generate(model_path, 30, policy="ffn_skip", threshold=-1.0, warmup=warmup, max_skip=4, cold_start=1, cold_end=1)
    # steps 0 .. warmup-1 run in full, so generated tokens 0 .. warmup are the full model's
    assert r.tokens[:warmup + 1] == full.tokens[:warmup + 1]
    assert r.stats["skip_masks"][:warmup].sum() == 0
    assert r.stats["skip_masks"][warmup:].sum() > 0


def test_gate_fires_where_middle_ffns_are_nearly_identity(model_path, tmp_path):
    """FFNs of layers >= 3 scaled to almost nothing: cos ~ 1 there and nowhere before,
    so with cold_start 2 the gate opens after layer 3 and skips layers 4, 5 and 6."""
    from gguf_convert import convert

    def shrink(name, values):
        for il in range(3, N_LAYER):
            if name == f"blk.{il}.ffn_down.weight":
                return values * 1e-4
        return values

    path = convert(model_path, str(tmp_path / "tiny-ffn.gguf"), "F32", transform=shrink)
    full_cos = _full_cosines(path, n=10)
    assert np.all(full_cos[:, 3:] > 0.9999) and np.all(full_cos[:, 1:3] < 0.999), full_cos
    r = _generate(path, 10, policy="ffn_skip", threshold=0.999, cold_start=2, cold_end=2, warmup=0,
                  refresh_every=0, max_skip=3)
    for row in r.stats["skip_masks"]:
        np.testing.assert_array_equal(row, [0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0])
    # a budget reaching into the cold end is cut there (last non-cold layer: 12 - 2 - 1 = 9)
    r = _generate(path, 10, policy="ffn_skip", threshold=0.999, cold_start=2, cold_end=2, warmup=0,
                  refresh_every=0, max_skip=8)
    expected = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0], np.uint8)
    for row in r.stats["skip_masks"]:
        np.testing.assert_array_equal(row, expected)


def test_random_policy_hits_its_ratio(model_path):
    r = _generate(model_path, 120, policy="random", target_ratio=0.3, warmup=0, refresh_every=0, seed=7)
    masks = r.stats["skip_masks"]
    assert abs(masks.mean() - 0.3) < 0.06
    assert masks[:, 0].sum() > 0 and masks[:, -1].sum() > 0   # any layer, cold ones too
    again = _generate(model_path, 120, policy="random", target_ratio=0.3, warmup=0, refresh_every=0, seed=7)
    np.testing.assert_array_equal(again.stats["skip_masks"], masks)   # seeded


def test_static_policy_is_a_window_in_the_non_cold_region(model_path):
    r = _generate(model_path, 40, policy="static", max_skip=3, cold_start=1, cold_end=2, warmup=0, refresh_every=0, seed=3)
    masks = r.stats["skip_masks"]
    starts = set()
    for row in masks:
        idx = np.flatnonzero(row)
        assert len(idx) == 3 and idx[-1] - idx[0] == 2
        assert idx[0] >= 1 and idx[-1] <= N_LAYER - 3
        starts.add(int(idx[0]))
    assert len(starts) > 1   # the window moves


def test_layer_removal_policies(model_path):
    full = _generate(model_path, 16, policy="full")
    short = _generate(model_path, 16, policy="shortgpt", layers=[3, 4])
    assert (short.stats["skip_masks"][:, [3, 4]] == 1).all()
    assert short.stats["skip_masks"].sum() == 2 * short.stats["skip_masks"].shape[0]
    assert short.stats["layers_skipped"] == short.stats["ffn_skipped"]
    assert short.tokens != full.tokens   # removing attention and FFN of two layers changes the text
    ffn_only = _generate(model_path, 16, policy="layers", layers=[3])
    assert ffn_only.stats["layers_skipped"] == 0 and (ffn_only.stats["skip_masks"][:, 3] == 1).all()

    sd = _generate(model_path, 30, policy="skipdecode", target_ratio=0.25, warmup=2, refresh_every=0,
                   skipdecode_span=10, cold_start=1)
    masks = sd.stats["skip_masks"]
    counts = masks.sum(axis=1)
    assert counts[:2].sum() == 0
    assert all(counts[i] <= counts[i + 1] for i in range(len(counts) - 1))   # the budget only grows
    assert counts[-1] == round(2 * 0.25 * N_LAYER)
    for row in masks:   # always the top layers
        k = int(row.sum())
        assert row[N_LAYER - k:].all() and not row[:N_LAYER - k].any()


def test_skip_changes_speed_free_stats_and_per_call_override(model_path):
    session = ffnskip.Session(model_path, n_ctx=128, n_threads=1, skip="ffn_skip")
    assert session.skip.policy == "ffn_skip" and session.skip.threshold == pytest.approx(0.95)
    assert session.skip.cold_start == 5 and session.skip.cold_end == 5 and session.skip.refresh_every == 6
    r = session.generate(PROMPT, max_tokens=4, temperature=0, skip=None)   # per call: full
    assert r.stats["ffn_skipped"] == 0


@pytest.mark.parametrize("bad", [
    dict(policy="nonsense"), dict(policy="ffn_skip", threshold=1.5), dict(policy="ffn_skip", cold_start=-1),
    dict(policy="ffn_skip", cold_start=7, cold_end=6), dict(policy="ffn_skip", refresh_every=1),
    dict(policy="ffn_skip", target_ratio=1.5), dict(policy="layers"), dict(policy="shortgpt", layers=[99]),
    dict(policy="ffn_skip", warmup=-2), dict(policy="ffn_skip", max_skip=-3), dict(unknown_field=1),
])
def test_bad_skip_settings_raise(model_path, bad):
    session = ffnskip.Session(model_path, n_ctx=64, n_threads=1)
    with pytest.raises(ValueError):
        session.generate(PROMPT, max_tokens=2, skip=bad)


@pytest.mark.slow
def test_smollm2_skip_reads_fewer_ffns_and_reports_it(smollm2_q4_1):
    session = ffnskip.Session(str(smollm2_q4_1), n_ctx=512, n_threads=2)
    full = session.generate("The capital of France is", max_tokens=40, temperature=0)
    r = session.generate("The capital of France is", max_tokens=40, temperature=0,
                         skip=dict(policy="ffn_skip", warmup=8, cold_start=1, cold_end=1, max_skip=4, record_masks=True))
    # the authors' schedule: steps 0..7 full, then every 6th full; otherwise a window of 4
    masks = r.stats["skip_masks"]
    assert r.tokens[:9] == full.tokens[:9]
    policy = SpecPolicy(30, 0.95, 1, 1, 8, 6, 4)
    for g, row in enumerate(masks):
        assert row.sum() <= 4
        if not policy.may_skip(g):
            assert row.sum() == 0
    assert 0.05 < r.stats["skip_ratio_after_warmup"] < 0.14
