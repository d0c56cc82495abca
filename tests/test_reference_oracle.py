"""The numpy oracle against llama.cpp itself, on the real SmolLM2-135M model.

greedy_f32.json holds llama.cpp's greedy continuations on an F32 copy of the Q4_1
weights with the top-5 logits per step. The oracle runs the Q4_1 file de-quantized
to float32, i.e. the same weights, so it must give the same logits up to float
noise: measured over the 5 prompts (222 steps), the top-5 logits differ by
0.0055 on average and 0.023 at worst (0.032 with the F16 KV cache), on logits of
13 to 38. llama.cpp's Q4_1 run (8-bit activations) sits much farther away.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from reference_forward import ReferenceModel

MAX_DIFF = 0.05    # per step, largest |oracle - llama.cpp| over the top-5 ids
MEAN_DIFF = 0.01   # mean over all steps of that per-step largest difference


@pytest.fixture(scope="module")
def oracle(smollm2_q4_1):
    return ReferenceModel(smollm2_q4_1)


def _load(data_dir, name):
    return json.loads((data_dir / "reference" / name).read_text())


def _teacher_forced(model, p):
    """Logits before each generated token, feeding llama.cpp's own tokens."""
    prompt, gen = p["prompt_ids_in_generation"], p["generated_ids"]
    model.reset()
    logits = model.forward(prompt + gen[:-1], 0)
    return logits[len(prompt) - 1:]       # (len(gen), n_vocab)


def _top5_diffs(logits, p):
    out = []
    for step, top5 in enumerate(p["top5"]):
        ids = [i for i, _ in top5]
        want = np.array([v for _, v in top5])
        out.append(float(np.abs(logits[step, ids] - want).max()))
    return np.array(out)


def test_hparams(oracle):
    assert (oracle.n_layer, oracle.n_embd, oracle.n_ff) == (30, 576, 1536)
    assert (oracle.n_head, oracle.n_head_kv, oracle.n_rot) == (9, 3, 64)
    assert oracle.n_vocab == 49152
    assert oracle.rope_base == 100000.0
    assert oracle.output is oracle.tok_embd   # tied output embedding


@pytest.mark.parametrize("kv_f16", [False, True])
def test_logits_match_llama_cpp_f32(oracle, data_dir, kv_f16):
    ref = _load(data_dir, "greedy_f32.json")
    oracle.kv_f16 = kv_f16
    try:
        all_diffs = []
        for key, p in ref["prompts"].items():
            logits = _teacher_forced(oracle, p)
            diffs = _top5_diffs(logits, p)
            assert diffs.max() < MAX_DIFF, (key, int(diffs.argmax()), float(diffs.max()))
            all_diffs.append(diffs)
            # argmax equals llama.cpp's token except at a near tie
            for step, (tok, top5) in enumerate(zip(p["generated_ids"], p["top5"])):
                gap = top5[0][1] - top5[1][1]
                if gap > 2 * MAX_DIFF:
                    assert int(np.argmax(logits[step])) == tok, (key, step, gap)
        mean = float(np.concatenate(all_diffs).mean())
        assert mean < MEAN_DIFF, mean
    finally:
        oracle.kv_f16 = False


def test_far_from_quantized_activations(oracle, data_dir):
    """The tolerance separates: llama.cpp's Q4_1 run (8-bit activations) is well outside it."""
    ref = _load(data_dir, "greedy_q4_1.json")
    p = ref["prompts"]["b"]
    diffs = _top5_diffs(_teacher_forced(oracle, p), p)
    assert diffs.mean() > 3 * MEAN_DIFF, float(diffs.mean())


def test_greedy_matches_llama_cpp(oracle, data_dir):
    """The oracle's own greedy loop (batch prompt, then one token at a time) gives llama.cpp's text."""
    ref = _load(data_dir, "greedy_f32.json")
    # b and e hold the nearest ties (top-2 gaps 0.0037 at step 12, 0.008 at step 21)
    for key in ("b", "e"):
        p = ref["prompts"][key]
        want = p["generated_ids"][:24]
        got = oracle.greedy(p["prompt_ids_in_generation"], len(want))
        n_same = 0
        while n_same < min(len(got), len(want)) and got[n_same] == want[n_same]:
            n_same += 1
        if n_same < len(want):
            top5 = p["top5"][n_same]
            gap = top5[0][1] - top5[1][1]
            assert gap < 2 * MAX_DIFF, f"prompt {key}: diverged at step {n_same} with top-2 gap {gap}"
        else:
            assert got == want


# ---- oracle invariants and synthetic models (no shared data needed) ---------

import gguf  # noqa: E402

import synthetic  # noqa: E402


@pytest.mark.parametrize("weight_type", synthetic.SUPPORTED)
def test_synthetic_types_load_with_sane_logits(synthetic_model, weight_type):
    path = synthetic_model(n_embd=256, n_layer=2, n_head=4, n_head_kv=2, n_ff=512,
                           weight_type=weight_type, seed=3)
    reader = gguf.GGUFReader(str(path))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.1.ffn_down.weight"] == weight_type
    assert types["blk.0.attn_norm.weight"] == "F32"
    m = ReferenceModel(path)
    w = m.layers[0]["wq"]
    assert np.isfinite(w).all() and abs(float(w.mean())) < 0.01 and 0.04 < float(w.std()) < 0.1
    logits = m.forward([5, 77, 200, 3], 0)
    assert np.isfinite(logits).all()
    assert 1.0 < float(logits.std()) < 5.0 and np.abs(logits).max() < 30.0
    assert len(set(np.argmax(logits, axis=1).tolist())) > 1   # not degenerate


def test_synthetic_rejects_bad_block_multiple(tmp_path):
    with pytest.raises(ValueError, match="block size 256"):
        synthetic.write_llama_gguf(tmp_path / "m.gguf", n_embd=64, weight_type="Q4_K")


def test_synthetic_type_overrides(synthetic_model):
    path = synthetic_model(n_embd=256, n_ff=512, weight_type="Q5_0", tied_output=False,
                           tensor_types={"blk.*.ffn_down.weight": "Q6_K", "token_embd.weight": "Q8_0"})
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}
    assert types["blk.0.ffn_down.weight"] == types["blk.1.ffn_down.weight"] == "Q6_K"
    assert types["token_embd.weight"] == "Q8_0"
    assert types["output.weight"] == types["blk.0.attn_q.weight"] == "Q5_0"


def test_k_scale_packing_matches_gguf():
    rng = np.random.default_rng(0)
    sc = rng.integers(0, 64, size=(50, 8))
    mn = rng.integers(0, 64, size=(50, 8))
    got_sc, got_mn = gguf.quants.Q4_K.get_scale_min(synthetic._pack_k_scales(sc, mn))
    assert (got_sc == sc).all() and (got_mn == mn).all()


@pytest.mark.parametrize("n_vocab", [None, 300, 1000])
def test_gpt2_vocabulary_is_complete(synthetic_model, n_vocab):
    from reference_forward import _field
    path = synthetic_model(tokenizer="gpt2", n_vocab=n_vocab)
    r = gguf.GGUFReader(str(path))
    tokens = _field(r, "tokenizer.ggml.tokens")
    types = _field(r, "tokenizer.ggml.token_type")
    merges = _field(r, "tokenizer.ggml.merges")
    assert len(tokens) == len(types) == _field(r, "llama.vocab_size") == (n_vocab or 384)
    assert len(set(tokens)) == len(tokens)
    assert _field(r, "tokenizer.ggml.model") == "gpt2" and _field(r, "tokenizer.ggml.pre") == "default"
    byte_chars = synthetic.gpt2_byte_chars()
    assert len(set(byte_chars)) == 256 and byte_chars[ord(" ")] == "\u0120" and byte_chars[ord("A")] == "A"
    assert set(byte_chars) <= set(tokens)
    index = {t: i for i, t in enumerate(tokens)}
    for m in merges:
        a, b = m.split(" ")
        assert a in index and b in index and a + b in index
    assert len(merges) == len(tokens) - 256 - 3
    assert types[_field(r, "tokenizer.ggml.eos_token_id")] == gguf.TokenType.CONTROL
    assert ReferenceModel(path).output.shape == (len(tokens), 64)


def test_llama_vocabulary_is_complete(synthetic_model):
    from reference_forward import _field
    path = synthetic_model(tokenizer="llama", n_vocab=600)
    r = gguf.GGUFReader(str(path))
    tokens = _field(r, "tokenizer.ggml.tokens")
    scores = _field(r, "tokenizer.ggml.scores")
    types = _field(r, "tokenizer.ggml.token_type")
    assert len(tokens) == len(scores) == len(types) == 600
    assert tokens[:3] == ["<unk>", "<s>", "</s>"] and len(set(tokens)) == 600
    assert tokens[3:259] == [f"<0x{b:02X}>" for b in range(256)]
    assert all(t == gguf.TokenType.BYTE for t in types[3:259])
    assert _field(r, "tokenizer.ggml.model") == "llama" and _field(r, "tokenizer.ggml.add_bos_token")
    # every multi-character piece splits into two shorter pieces of the vocabulary
    vocab = set(tokens[259:])
    for p in tokens[259:]:
        if len(p) > 1:
            assert any(p[:i] in vocab and p[i:] in vocab for i in range(1, len(p))), p


def test_synthetic_too_small_vocab(tmp_path):
    with pytest.raises(ValueError, match="minimum vocabulary"):
        synthetic.write_llama_gguf(tmp_path / "m.gguf", n_vocab=100)


def test_incremental_decode_equals_batch(synthetic_model):
    m = ReferenceModel(synthetic_model(n_head=4, n_head_kv=2, seed=1))
    toks = [3, 17, 250, 99, 4, 4, 120]
    full = m.forward(toks, 0)
    m.reset()
    parts = [m.forward(toks[:3], 0)] + [m.forward([t]) for t in toks[3:]]
    np.testing.assert_allclose(np.concatenate(parts), full, rtol=1e-4, atol=1e-4)


def test_gqa_equals_repeated_kv_heads(synthetic_model):
    """Query head h uses KV head h // (n_head / n_head_kv): same as MHA with K/V heads repeated."""
    m = ReferenceModel(synthetic_model(n_head=8, n_head_kv=2, seed=2))
    toks = [10, 20, 30, 40, 50]
    want = m.forward(toks, 0)
    hd, group = m.head_dim_k, m.n_head // m.n_head_kv
    for L in m.layers:
        for k in ("wk", "wv"):
            heads = L[k].reshape(m.n_head_kv, hd, -1)
            L[k] = np.repeat(heads, group, axis=0).reshape(m.n_head * hd, -1)
    m.n_head_kv = m.n_head
    m.reset()
    np.testing.assert_allclose(m.forward(toks, 0), want, rtol=1e-4, atol=1e-4)


def test_rope_pairs_relative_positions_and_linear_scale(synthetic_model):
    m = ReferenceModel(synthetic_model(n_embd=64, n_head=4, n_rot=8, rope_base=500.0, seed=4))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 1, 16)).astype(np.float32)
    out = m.rope(x, np.array([3]))
    # pair (x0, x1) turns by 3 rad, pair (x2, x3) by 3 * 500^(-2/8); dims past n_rot untouched
    for i, theta in ((0, 3.0), (2, 3.0 * 500.0 ** (-2 / 8))):
        z = complex(x[0, 0, i], x[0, 0, i + 1]) * complex(np.cos(theta), np.sin(theta))
        assert out[0, 0, i] == pytest.approx(z.real, abs=1e-5)
        assert out[0, 0, i + 1] == pytest.approx(z.imag, abs=1e-5)
    np.testing.assert_array_equal(out[..., 8:], x[..., 8:])
    # dot products depend only on the position difference
    q, k = rng.standard_normal((2, 1, 1, 16)).astype(np.float32)
    d1 = float((m.rope(q, np.array([7])) * m.rope(k, np.array([2]))).sum())
    d2 = float((m.rope(q, np.array([25])) * m.rope(k, np.array([20]))).sum())
    assert d1 == pytest.approx(d2, abs=1e-4)
    # linear scaling factor 4: position 8 acts like position 2
    s = ReferenceModel(synthetic_model(n_embd=64, n_head=4, n_rot=8, rope_base=500.0, seed=4, rope_scale=4.0))
    assert s.freq_scale == 0.25
    np.testing.assert_allclose(s.rope(x, np.array([8])), m.rope(x, np.array([2])), atol=1e-5)


def test_untied_output_is_used(synthetic_model):
    m = ReferenceModel(synthetic_model(tied_output=False))
    assert m.output is not m.tok_embd and m.output.shape == m.tok_embd.shape


def test_perplexity_convention(synthetic_model, monkeypatch):
    """Chunks of n_ctx from an empty cache; positions n_ctx/2 .. n_ctx-2 predict the next token."""
    m = ReferenceModel(synthetic_model())
    ids = np.arange(50) % 40 + 3
    seen = []

    def fake_forward(tokens, start_pos=None):
        tokens = np.asarray(tokens)
        seen.append((start_pos, m.n_past, tokens.copy()))
        logits = np.zeros((len(tokens), m.n_vocab), np.float32)
        # a confident right answer for position j (next token), except at j = 5
        for j in range(len(tokens) - 1):
            if j != 5:
                logits[j, tokens[j + 1]] = 100.0
        return logits

    monkeypatch.setattr(m, "forward", fake_forward)
    # n_ctx 16: 3 chunks; scored j = 8..14 (7 per chunk); all right -> perplexity 1
    assert m.perplexity(ids, 16) == pytest.approx(1.0)
    assert [(s, n) for s, n, _ in seen] == [(0, 0)] * 3
    np.testing.assert_array_equal(seen[1][2], ids[16:32])
    # n_ctx 10: scored j = 5..8; j = 5 is uniform over n_vocab -> exp(log(n_vocab) / 4) per chunk
    assert m.perplexity(ids, 10) == pytest.approx(m.n_vocab ** 0.25, rel=1e-6)
    assert m.perplexity(ids, 10, n_chunks=2) == pytest.approx(m.n_vocab ** 0.25, rel=1e-6)


# ---- qwen2: Q/K/V biases, NeoX RoPE, untied output ------------------------------------

def test_qwen2_hparams_and_weights(synthetic_model):
    m = ReferenceModel(synthetic_model(arch="qwen2", n_embd=128, n_head=4, n_head_kv=2, rope_base=1e6, eps=1e-6))
    assert (m.arch, m.rope_neox, m.rope_base, m.eps) == ("qwen2", True, 1e6, pytest.approx(1e-6))
    assert m.output is not m.tok_embd and m.output.shape == m.tok_embd.shape
    L = m.layers[0]
    assert L["bq"].shape == (128,) and L["bk"].shape == (64,) and L["bv"].shape == (64,)
    assert ReferenceModel(synthetic_model()).layers[0]["bq"] is None   # llama: no biases


def test_neox_rope_pairs(synthetic_model):
    """Pair i is (x[i], x[i + n_rot/2]), turned by pos * base^(-2i/n_rot); dims past n_rot stay."""
    m = ReferenceModel(synthetic_model(arch="qwen2", n_embd=64, n_head=4, n_rot=8, rope_base=500.0, seed=4))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 1, 16)).astype(np.float32)
    out = m.rope(x, np.array([3]))
    for i in range(4):
        theta = 3.0 * 500.0 ** (-2 * i / 8)
        z = complex(x[0, 0, i], x[0, 0, i + 4]) * complex(np.cos(theta), np.sin(theta))
        assert out[0, 0, i] == pytest.approx(z.real, abs=1e-5)
        assert out[0, 0, i + 4] == pytest.approx(z.imag, abs=1e-5)
    np.testing.assert_array_equal(out[..., 8:], x[..., 8:])
    q, k = rng.standard_normal((2, 1, 1, 16)).astype(np.float32)
    d1 = float((m.rope(q, np.array([7])) * m.rope(k, np.array([2]))).sum())
    d2 = float((m.rope(q, np.array([25])) * m.rope(k, np.array([20]))).sum())
    assert d1 == pytest.approx(d2, abs=1e-4)


def test_qwen2_biases_and_rope_form_change_the_logits(synthetic_model):
    """Each qwen2 difference moves the logits far more than the engine tests' tolerances, so
    an engine that dropped the biases or rotated adjacent pairs would fail them."""
    m = ReferenceModel(synthetic_model(arch="qwen2", n_embd=128, n_head=4, n_head_kv=2, seed=2))
    toks = [3, 17, 250, 99, 4, 120]
    want = m.forward(toks, 0)
    m.rope_neox = False
    m.reset()
    assert np.abs(m.forward(toks, 0) - want).max() > 0.1 * want.std()
    m.rope_neox = True
    for key in ("bq", "bk", "bv"):
        kept = [L[key] for L in m.layers]
        for L in m.layers:
            L[key] = np.zeros_like(L[key])
        m.reset()
        assert np.abs(m.forward(toks, 0) - want).max() > 0.1 * want.std(), key
        for L, b in zip(m.layers, kept):
            L[key] = b


def test_qwen2_without_a_bias_is_refused(tmp_path):
    path = synthetic.write_llama_gguf(tmp_path / "full.gguf", arch="qwen2")
    import gguf

    r = gguf.GGUFReader(str(path))
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "qwen2")
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        w.add_key_value(f.name, f.contents(), f.types[0], f.types[-1] if len(f.types) > 1 else None)
    for t in r.tensors:
        if t.name != "blk.1.attn_k.bias":
            w.add_tensor(t.name, t.data, raw_shape=t.data.shape, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="blk.1.attn_k.bias"):
        ReferenceModel(tmp_path / "m.gguf")
