"""FFN surrogates in the engine: a left-out FFN runs b + U (V^T ffn_norm(h)) instead of
nothing. Checked against the numpy reference forward with the same replacements, and
the calibration trace (Session.trace_ffn) against the reference's own h, u, f."""
from __future__ import annotations

import numpy as np
import pytest

import ffnskip
from ffnskip import surrogate as sg
from reference_forward import ReferenceModel, log_softmax, rms_norm, silu

N_LAYER = 6
PROMPT = [12, 40, 7, 99, 150, 3, 61, 8, 200, 17, 33, 5]


@pytest.fixture(scope="module")
def model_path(synthetic_model):
    return str(synthetic_model(n_embd=64, n_layer=N_LAYER, n_head=4, n_head_kv=2, n_ff=96,
                               weight_type="F32", seed=23, n_ctx=128))


@pytest.fixture(scope="module")
def ref(model_path):
    return ReferenceModel(model_path, kv_f16=True)


def reference_trace(ref: ReferenceModel, tokens, replaced=None, skipped=()):
    """Prompt forward of the numpy reference from an empty cache; per layer h, u, f and
    the logits. replaced: {layer: Surrogate} run in place of that FFN; skipped: FFNs
    left out with nothing in their place."""
    replaced = replaced or {}
    ref.reset()
    tokens = np.asarray(tokens)
    n = tokens.size
    pos = np.arange(n)
    x = ref.tok_embd[tokens].astype(np.float32)
    hs, us, fs = [], [], []
    for il, L in enumerate(ref.layers):
        a = rms_norm(x, L["attn_norm"], ref.eps)
        q = ref.rope((a @ L["wq"].T).reshape(n, ref.n_head, ref.head_dim_k), pos)
        k = ref.rope((a @ L["wk"].T).reshape(n, ref.n_head_kv, ref.head_dim_k), pos)
        v = (a @ L["wv"].T).reshape(n, ref.n_head_kv, ref.head_dim_v)
        ref._store(il, 0, k, v)
        x = x + ref.attention(il, q, 0) @ L["wo"].T
        u = rms_norm(x, L["ffn_norm"], ref.eps)
        if il in replaced:
            f = replaced[il](u).astype(np.float32)
        elif il in skipped:
            f = np.zeros_like(x)
        else:
            f = (silu(u @ L["w_gate"].T) * (u @ L["w_up"].T)) @ L["w_down"].T
        hs.append(x.copy())
        us.append(u if il not in skipped else np.zeros_like(u))
        fs.append(f)
        x = x + f
    ref.n_past = n
    logits = rms_norm(x, ref.output_norm, ref.eps) @ ref.output.T
    return np.stack(hs), np.stack(us), np.stack(fs), logits


def _session(path):
    return ffnskip.Session(path, n_ctx=128, n_threads=2)


def _fitted(session, tokens, layers, rank):
    """Surrogates fitted on the engine's own trace of the full model."""
    t = session.trace_ffn(tokens, "full")
    out = {}
    for il in layers:
        stats = sg.FfnStats(t["u"].shape[2])
        sg.accumulate(stats, t["u"][il], t["f"][il], positions=range(len(tokens)), sink_positions=0)
        out[il] = sg.fit(stats, rank=rank, ridge=1e-3)
    return out


def _save(tmp_path, surrogates, name="s.gguf", dtype="f32", n_embd=64):
    path = tmp_path / name
    sg.save(path, surrogates, n_embd=n_embd, n_layer=N_LAYER, dtype=dtype)
    return str(path)


def test_trace_of_the_full_model_matches_the_reference(model_path, ref):
    t = _session(model_path).trace_ffn(PROMPT, "full")
    h, u, f, _ = reference_trace(ref, PROMPT)
    for name, want in (("h", h), ("u", u), ("f", f)):
        assert t[name].shape == (N_LAYER, len(PROMPT), 64)
        scale = np.abs(want).max()
        np.testing.assert_allclose(t[name], want, rtol=0, atol=2e-4 * scale, err_msg=name)


def test_surrogate_output_is_b_plus_u_vt_norm_h(model_path, ref, tmp_path):
    session = _session(model_path)
    rng = np.random.default_rng(0)
    sur = {1: sg.Surrogate(bias=rng.standard_normal(64) * 0.1, up=rng.standard_normal((5, 64)) * 0.2,
                           down=rng.standard_normal((64, 5)) * 0.2),
           3: sg.Surrogate(bias=rng.standard_normal(64) * 0.1, up=np.zeros((0, 64)), down=np.zeros((64, 0)))}
    path = _save(tmp_path, sur)
    # FFNs 1, 3 (surrogates) and 4 (plain skip) are left out for every token.
    config = ffnskip.skip_config("layers", layers=[1, 3, 4], surrogates=path)
    t = session.trace_ffn(PROMPT, config)
    # The surrogate's output from the engine's own u, in numpy.
    for il, s in sur.items():
        np.testing.assert_allclose(t["f"][il], s(t["u"][il]), rtol=1e-5, atol=1e-5)
    assert not t["f"][4].any()
    # And the whole pass against the reference with the same replacements.
    h, u, f, _ = reference_trace(ref, PROMPT, replaced=sur, skipped=(4,))
    np.testing.assert_allclose(t["h"], h, rtol=0, atol=2e-4 * np.abs(h).max())
    np.testing.assert_allclose(t["f"], f, rtol=0, atol=2e-4 * np.abs(f).max())


@pytest.mark.parametrize("record_cosines", [False, True])   # batched pass / decode steps
def test_scores_match_the_reference_with_surrogates(model_path, ref, tmp_path, record_cosines):
    session = _session(model_path)
    sur = _fitted(session, PROMPT + list(range(20, 60)), layers=[2, 3], rank=8)
    path = _save(tmp_path, sur)
    prompt, cont = PROMPT[:5], PROMPT[5:]
    nll, stats = session.score(prompt, cont, skip=dict(
        policy="layers", layers=[2, 3], surrogates=path, record_cosines=record_cosines))
    *_, logits = reference_trace(ref, prompt + cont[:-1], replaced={il: sg.Surrogate(
        s.bias.astype(np.float32), s.up.astype(np.float32), s.down.astype(np.float32)) for il, s in sur.items()})
    want = -sum(log_softmax(logits[len(prompt) - 1 + i])[c] for i, c in enumerate(cont))
    assert nll == pytest.approx(want, rel=2e-4)
    assert stats["surrogates_run"] == 2 * (len(cont) - 1) and stats["ffn_skipped"] == 2 * (len(cont) - 1)


def test_calibrated_surrogates_that_fit_exactly_give_the_full_models_score(model_path, tmp_path):
    """With fewer calibration tokens than n_embd, the FFN outputs of those tokens are an
    exact affine function of their inputs, so the ridge-free full-rank fit reproduces
    them: scoring the calibration text with the FFNs replaced must give the full
    model's likelihood, where dropping the same FFNs does not. This runs the whole path:
    trace, fit, sidecar, engine (prompt batch and decode steps)."""
    session = _session(model_path)
    rng = np.random.default_rng(5)
    calib = [int(v) for v in rng.integers(3, 380, 40)]
    layers = [1, 2, 3]
    t = session.trace_ffn(calib, "full")
    fitted = {}
    for il in layers:
        stats = sg.FfnStats(64)
        sg.accumulate(stats, t["u"][il], t["f"][il], positions=range(len(calib)), sink_positions=0)
        fitted[il] = sg.fit(stats, rank=None, ridge=0.0)
        assert sg.relative_error(fitted[il], stats) < 1e-10
    path = _save(tmp_path, fitted)

    def nll(**skip):
        return session.score(calib[:4], calib[4:], skip=skip)[0]

    full = nll(policy="full")
    plain = nll(policy="layers", layers=layers)
    for record_cosines in (False, True):
        with_sur = nll(policy="layers", layers=layers, surrogates=path, record_cosines=record_cosines)
        assert abs(with_sur - full) < 0.01 * abs(plain - full), (full, plain, with_sur)
        assert with_sur == pytest.approx(full, abs=0.02)


def test_without_surrogates_nothing_changes(model_path, tmp_path):
    session = _session(model_path)
    path = _save(tmp_path, _fitted(session, PROMPT, [1, 2, 3, 4], rank=4))
    base = dict(policy="ffn_skip", threshold=-1.0, cold_start=1, cold_end=1, warmup=2, refresh_every=0,
                max_skip=2, record_masks=True, record_cosines=True)
    plain = session.generate(PROMPT, max_tokens=12, temperature=0, skip=dict(base))
    empty = session.generate(PROMPT, max_tokens=12, temperature=0, skip=dict(base, surrogates=""))
    assert plain.tokens == empty.tokens
    np.testing.assert_array_equal(plain.stats["cosines"], empty.stats["cosines"])
    # With the full policy nothing is left out, so a sidecar changes nothing either.
    full = session.generate(PROMPT, max_tokens=12, temperature=0, skip=dict(policy="full", record_cosines=True))
    full_sur = session.generate(PROMPT, max_tokens=12, temperature=0,
                                skip=dict(policy="full", record_cosines=True, surrogates=path))
    assert full.tokens == full_sur.tokens and full_sur.stats["surrogates_run"] == 0
    np.testing.assert_array_equal(full.stats["cosines"], full_sur.stats["cosines"])
    # The gate with surrogates: every FFN it leaves out has one here.
    gated = session.generate(PROMPT, max_tokens=12, temperature=0, skip=dict(base, surrogates=path))
    assert gated.stats["ffn_skipped"] > 0
    assert gated.stats["surrogates_run"] == gated.stats["ffn_skipped"]
    # A surrogate step's cosine is measured on the surrogate's output.
    cos = gated.stats["cosines"]
    masks = gated.stats["skip_masks"].astype(bool)
    assert np.isfinite(cos[masks]).all()


def test_bad_sidecars_are_clear_errors(model_path, tmp_path, synthetic_model):
    session = _session(model_path)
    rng = np.random.default_rng(1)
    s = sg.Surrogate(bias=np.zeros(32), up=rng.standard_normal((2, 32)), down=rng.standard_normal((32, 2)))
    narrow = tmp_path / "narrow.gguf"
    sg.save(narrow, {1: s}, n_embd=32, n_layer=N_LAYER)
    with pytest.raises(ffnskip.FormatError, match="n_embd 32"):
        session.generate(PROMPT, max_tokens=2, skip=dict(policy="layers", layers=[1], surrogates=str(narrow)))
    with pytest.raises(FileNotFoundError):
        session.generate(PROMPT, max_tokens=2, skip=dict(policy="layers", layers=[1], surrogates=str(tmp_path / "none.gguf")))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + bytes(40))
    with pytest.raises(ffnskip.FormatError, match="junk.gguf"):
        session.skip = ffnskip.skip_config("layers", layers=[1], surrogates=str(junk))
    # A model file is a GGUF too, but not a surrogate file.
    with pytest.raises(ffnskip.FormatError, match="not an ffnskip surrogate file"):
        session.skip = ffnskip.skip_config("layers", layers=[1], surrogates=model_path)
    # A good sidecar after the bad ones is taken.
    ok = _save(tmp_path, {2: s.__class__(bias=np.zeros(64), up=np.ones((3, 64)), down=np.ones((64, 3)))}, name="ok.gguf")
    session.skip = ffnskip.skip_config("layers", layers=[2], surrogates=ok)
    assert session.skip.surrogates == ok


def test_a_profile_names_its_sidecar_beside_it(tmp_path):
    (tmp_path / "p.json").write_text('{"config": {"policy": "layers", "layers": [1], "surrogates": "p.surrogates.gguf"}}')
    config = ffnskip.skip_config(str(tmp_path / "p.json"))
    assert config.surrogates == str(tmp_path / "p.surrogates.gguf") and list(config.layers) == [1]


def test_trace_errors(model_path):
    session = _session(model_path)
    with pytest.raises(ValueError, match="no tokens"):
        session.trace_ffn([], "full")
    with pytest.raises(ValueError, match="context"):
        session.trace_ffn([1] * 200, "full")
