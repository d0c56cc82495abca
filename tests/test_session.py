"""ffnskip.Session: streaming, stop conditions, sampling, KV reuse, eval, chat, threads.

Text behaviour runs on the real SmolLM2-135M Q4_1 (greedy, a few tokens per test,
compared with llama.cpp's reference outputs where they exist); sampling, context
limits and timing run on tiny synthetic models.
"""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

import ffnskip
from ffnskip.chat import render_chat

PROMPT = "The capital of France is"   # llama.cpp: " Paris.\n\nThe United States has a population of ..."
GREEDY = dict(temperature=0.0)
N_PARIS = 16


@pytest.fixture(scope="module")
def model(smollm2_q4_1) -> ffnskip.Model:
    return ffnskip.Model(str(smollm2_q4_1))


@pytest.fixture(scope="module")
def paris(model):
    """One greedy stream of PROMPT, N_PARIS tokens: (pieces, Completion, stats)."""
    s = ffnskip.Session(model, n_ctx=256)
    pieces = list(s.stream(PROMPT, max_tokens=N_PARIS, **GREEDY))
    return pieces, s.last_result, s.last_stats


@pytest.fixture
def session(model) -> ffnskip.Session:
    return ffnskip.Session(model, n_ctx=256)


@pytest.fixture(scope="module")
def tiny(synthetic_model):
    """A small random-weight model: fast, and its sampled text is close to random bytes."""
    return ffnskip.Model(str(synthetic_model(n_embd=64, n_layer=2, seed=11)))


def _common_prefix(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# ---- stream and generate ------------------------------------------------------------

@pytest.mark.slow
def test_stream_pieces_concatenate_to_text(model, paris):
    pieces, r, stats = paris
    assert pieces and all(isinstance(p, str) and p for p in pieces)
    assert "".join(pieces) == r.text
    assert r.text == model.detokenize(r.tokens)   # no stop string cut it
    assert r.finish_reason == "length"
    assert len(r.tokens) == N_PARIS
    assert r.prompt_tokens == model.tokenize(PROMPT)
    assert stats["n_generated"] == N_PARIS
    assert stats["n_prompt_tokens"] == len(r.prompt_tokens)
    assert stats["n_cached_tokens"] == 0
    assert stats["prompt_tokens_per_second"] > 0 and stats["decode_tokens_per_second"] > 0
    assert stats["prompt_seconds"] > 0 and stats["decode_seconds"] > 0
    assert r.stats == stats


@pytest.mark.slow
def test_generate_equals_stream_and_reuses_the_prompt(model, paris):
    _, first, _ = paris
    s = ffnskip.Session(model, n_ctx=256)
    a = s.generate(PROMPT, max_tokens=N_PARIS, **GREEDY)
    assert isinstance(a, ffnskip.Completion)
    assert a.text == first.text and a.tokens == first.tokens
    assert s.last_result is a
    # the last sampled token is never evaluated: the cache holds the rest
    assert s.n_past == len(a.prompt_tokens) + N_PARIS - 1
    b = s.generate(PROMPT, max_tokens=N_PARIS, **GREEDY)
    assert b.stats["n_cached_tokens"] == len(b.prompt_tokens) - 1
    assert b.stats["n_prompt_tokens"] == 1
    assert b.text == first.text


@pytest.mark.slow
def test_greedy_matches_llama_cpp(session, data_dir):
    ref = json.loads((data_dir / "reference" / "greedy_q4_1.json").read_text())
    n = 8
    for key, case in ref["prompts"].items():
        pieces = list(session.stream(case["prompt"], max_tokens=n, **GREEDY))
        r = session.last_result
        assert r.prompt_tokens == case["prompt_ids_in_generation"], key
        ref_ids = case["generated_ids"]
        k = _common_prefix(r.tokens, ref_ids)
        assert k >= 3, f"{key}: only {k} tokens agree with llama.cpp"
        if k < len(r.tokens):
            # a divergence must be a near tie in llama.cpp's own logits
            top5 = dict((t, v) for t, v in case["top5"][k])
            ours = r.tokens[k]
            assert ours in top5, f"{key}: token {ours} at step {k} is not in llama.cpp's top 5"
            assert top5[ref_ids[k]] - top5[ours] < 0.5, f"{key}: divergence at step {k} is no near tie"
        # the text of the agreeing tokens is llama.cpp's text
        agreed = len(session.detokenize(ref_ids[:k]))
        text = "".join(pieces)
        assert text[:agreed] == case["generated_text"][:agreed], key
        if k == len(r.tokens):
            assert case["generated_text"].startswith(text), key


# ---- stop conditions -----------------------------------------------------------------

def test_max_tokens_zero(tiny):
    session = ffnskip.Session(tiny, n_ctx=64)
    assert list(session.stream(PROMPT, max_tokens=0)) == []
    r = session.last_result
    assert (r.text, r.tokens, r.finish_reason) == ("", [], "length")
    assert r.stats["n_generated"] == 0
    assert r.prompt_tokens == session.tokenize(PROMPT)


def test_bad_arguments(tiny):
    session = ffnskip.Session(tiny, n_ctx=64)
    with pytest.raises(ValueError):
        session.generate(PROMPT, max_tokens=-2)
    with pytest.raises(TypeError):
        session.generate(PROMPT, max_token=4)
    with pytest.raises(ValueError):
        session.generate(PROMPT, stop="")
    with pytest.raises(ValueError):
        session.generate(PROMPT, temperature=-1.0)
    with pytest.raises(ValueError):
        session.generate("")
    # wrong types and out-of-range ints name the argument
    with pytest.raises(ValueError, match="max_tokens"):
        session.generate(PROMPT, max_tokens=2**40)
    with pytest.raises(ValueError, match="seed"):
        session.generate(PROMPT, seed=2**64)
    with pytest.raises(TypeError, match="temperature"):
        session.generate(PROMPT, temperature="hot")
    with pytest.raises(TypeError, match="stop"):
        session.generate(PROMPT, stop=[1])


@pytest.mark.slow
@pytest.mark.parametrize("stop", [
    "United",                           # one token
    ["xyzzy", "population", "States"],  # a list: the earliest match wins
    "s.\n\nTh",                         # split across four tokens
])
def test_stop_strings(model, session, paris, stop):
    full = paris[1].text
    stops = [stop] if isinstance(stop, str) else stop
    cut = min(full.index(x) for x in stops if x in full)
    for x in stops:
        if x in full and full.index(x) == cut:
            hit = x
    if stop == "s.\n\nTh":
        # the stop string spans token boundaries
        assert not any(stop.encode() in model.token_to_piece(t) for t in paris[1].tokens)
    pieces = list(session.stream(PROMPT, max_tokens=N_PARIS, stop=stop, **GREEDY))
    r = session.last_result
    assert r.finish_reason == "stop"
    assert "".join(pieces) == r.text == full[:cut]
    assert hit not in r.text
    # generation stops at the token that completes the stop string
    n = next(i for i in range(1, N_PARIS + 1) if hit in model.detokenize(paris[1].tokens[:i]))
    assert r.tokens == paris[1].tokens[:n]


@pytest.mark.slow
def test_stop_string_not_hit(session, paris):
    r = session.generate(PROMPT, max_tokens=N_PARIS, stop=["zzz", "Rome"], **GREEDY)
    assert r.finish_reason == "length"
    assert r.text == paris[1].text


@pytest.mark.slow
def test_eos_and_ignore_eos(model, session):
    messages = [{"role": "user", "content": "Hi"}]
    r = session.chat(messages, max_tokens=40, **GREEDY)
    assert r.finish_reason == "eos"
    assert model.is_eog(r.tokens[-1]) and r.tokens[-1] == model.eos
    assert r.text and "<|im_end|>" not in r.text
    assert r.text == model.detokenize(r.tokens[:-1])
    n = len(r.tokens)
    prompt = render_chat(model, messages)
    r2 = session.generate(prompt, max_tokens=n + 2, ignore_eos=True, parse_special=True, add_special=False, **GREEDY)
    assert r2.prompt_tokens == r.prompt_tokens
    assert r2.finish_reason == "length"
    assert len(r2.tokens) == n + 2
    assert r2.tokens[:n] == r.tokens


def test_context_full(tiny):
    n_ctx = 24
    s = ffnskip.Session(tiny, n_ctx=n_ctx)
    prompt = s.tokenize("the capital of france")
    r = s.generate(prompt, max_tokens=-1, ignore_eos=True, **GREEDY)
    assert r.finish_reason == "context_full"
    assert s.n_past == n_ctx
    # every position is filled, and the token sampled from the last one is delivered
    assert len(r.tokens) == n_ctx - len(prompt) + 1
    r = s.generate(prompt, max_tokens=1000, ignore_eos=True, **GREEDY)
    assert r.finish_reason == "context_full"
    with pytest.raises(ValueError):
        s.generate(list(range(3, 3 + n_ctx + 1)))


# ---- sampling -----------------------------------------------------------------------

def test_seed_determinism(tiny):
    s = ffnskip.Session(tiny, n_ctx=128)
    kw = dict(max_tokens=24, temperature=0.8, ignore_eos=True)
    a = s.generate("the world", seed=1234, **kw)
    b = s.generate("the world", seed=1234, **kw)
    c = ffnskip.Session(tiny, n_ctx=128).generate("the world", seed=1234, **kw)
    assert a.tokens == b.tokens == c.tokens and a.text == b.text
    others = [s.generate("the world", seed=seed, **kw).tokens for seed in (1, 2, 3, 4)]
    assert any(o != a.tokens for o in others)


@pytest.mark.slow
def test_temperature_zero_is_argmax_of_eval(session):
    ids = session.tokenize(PROMPT)
    session.reset()
    logits = session.eval(ids)
    expected = []
    for _ in range(6):
        t = int(np.argmax(logits))
        expected.append(t)
        logits = session.eval([t])
    r = session.generate(PROMPT, max_tokens=6, ignore_eos=True, **GREEDY)
    assert r.tokens == expected


def test_top_k_one_is_greedy(tiny):
    s = ffnskip.Session(tiny, n_ctx=128)
    greedy = s.generate("hello world", max_tokens=24, ignore_eos=True, **GREEDY)
    sampled = s.generate("hello world", max_tokens=24, ignore_eos=True, temperature=0.8, top_k=1, seed=7)
    assert sampled.tokens == greedy.tokens
    # without top_k=1 the same temperature does not follow the argmax
    free = s.generate("hello world", max_tokens=24, ignore_eos=True, temperature=1.5, top_k=0, min_p=0.0, seed=7)
    assert free.tokens != greedy.tokens


@pytest.mark.slow
def test_repeat_penalty_changes_a_repetitive_continuation(session):
    prompt = "a b a b a b a b"
    plain = session.generate(prompt, max_tokens=6, **GREEDY)
    assert plain.text.startswith(" a b")   # greedy repeats the pattern
    penalised = session.generate(prompt, max_tokens=6, repeat_penalty=1.5, **GREEDY)
    assert penalised.tokens != plain.tokens
    assert penalised.text[:4] != " a b"


# ---- cancellation -------------------------------------------------------------------

@pytest.mark.slow
def test_break_cancels(session, paris):
    consumed = []
    for piece in session.stream(PROMPT, max_tokens=N_PARIS, **GREEDY):
        consumed.append(piece)
        if len(consumed) == 3:
            break
    r = session.last_result
    assert r.finish_reason == "cancelled"
    assert r.stats["n_generated"] == 3
    assert r.tokens == paris[1].tokens[:3]
    assert r.text == "".join(consumed) == "".join(paris[0][:3])
    # the session goes on as if nothing happened
    again = session.generate(PROMPT, max_tokens=N_PARIS, **GREEDY)
    assert again.finish_reason == "length" and again.text == paris[1].text


@pytest.mark.slow
def test_cancel_keeps_only_delivered_text(session):
    # " Paris" is one token; its "s" is held back as it may begin the stop string
    stream = session.stream(PROMPT, max_tokens=N_PARIS, stop="s.\n\nTh", **GREEDY)
    first = next(stream)
    assert first == " Pari"
    stream.close()
    r = session.last_result
    assert r.finish_reason == "cancelled" and len(r.tokens) == 1
    assert r.text == " Pari"


def test_close_cancels(tiny):
    s = ffnskip.Session(tiny, n_ctx=128)
    gen = s.stream([5, 6, 7], max_tokens=20, ignore_eos=True, **GREEDY)
    next(gen)
    next(gen)
    gen.close()
    r = s.last_result
    assert r.finish_reason == "cancelled"
    assert 2 <= r.stats["n_generated"] < 20
    assert s.generate([5, 6, 7], max_tokens=4, ignore_eos=True, **GREEDY).finish_reason == "length"


def test_abandoned_stream_does_not_cancel_the_next(tiny):
    s = ffnskip.Session(tiny, n_ctx=128)
    old = s.stream([5, 6, 7], max_tokens=20, ignore_eos=True, **GREEDY)
    next(old)
    new = s.stream([8, 9], max_tokens=5, ignore_eos=True, **GREEDY)
    del old   # garbage-collected while the new generation runs
    list(new)
    assert s.last_result.finish_reason == "length"
    assert len(s.last_result.tokens) == 5
    assert s.last_result.prompt_tokens == [8, 9]


# ---- KV cache -----------------------------------------------------------------------

@pytest.mark.slow
def test_prefix_reuse_and_reset(model, session):
    first = session.tokenize(PROMPT)
    longer = PROMPT + " Rome, and the capital of Italy is"
    ids = session.tokenize(longer)
    assert ids[:len(first)] == first
    session.generate(PROMPT, max_tokens=4, **GREEDY)
    r = session.generate(longer, max_tokens=4, **GREEDY)
    assert r.stats["n_cached_tokens"] == len(first)
    assert r.stats["n_prompt_tokens"] == len(ids) - len(first)
    fresh = ffnskip.Session(model, n_ctx=256).generate(longer, max_tokens=4, **GREEDY)
    assert r.tokens == fresh.tokens
    session.reset()
    assert session.n_past == 0
    again = session.generate(longer, max_tokens=4, **GREEDY)
    assert again.stats["n_cached_tokens"] == 0
    assert again.tokens == fresh.tokens


def test_eval_logits(tiny):
    s = ffnskip.Session(tiny, n_ctx=64)
    ids = [5, 17, 33, 100, 200, 7]
    every = s.eval(ids, all_logits=True)
    assert every.shape == (len(ids), tiny.n_vocab) and every.dtype == np.float32
    assert s.n_past == len(ids)
    assert np.array_equal(s.logits, every[-1])
    view = s.logits
    view[:] = 0
    assert np.array_equal(s.logits, every[-1])   # the property is a copy
    s.reset()
    last = s.eval(ids)
    assert last.shape == (tiny.n_vocab,)
    np.testing.assert_allclose(last, every[-1], rtol=1e-4, atol=1e-4)
    s.reset()
    # causal: the first position sees only the first token
    np.testing.assert_allclose(s.eval(ids[:1]), every[0], rtol=1e-4, atol=1e-4)
    for bad in ([tiny.n_vocab], [-1], [1, 2, tiny.n_vocab + 5], []):
        with pytest.raises(ValueError):
            s.eval(bad)
    assert s.n_past == 1
    with pytest.raises(ValueError):
        s.generate([3, tiny.n_vocab])


# ---- UTF-8 ---------------------------------------------------------------------------

def _split_characters(model, tokens) -> bool:
    """True when some token's piece is not whole UTF-8 on its own."""
    for t in tokens:
        try:
            model.token_to_piece(t).decode("utf-8")
        except UnicodeDecodeError:
            return True
    return False


@pytest.mark.slow
@pytest.mark.parametrize("prompt, n", [
    ("中文：你好，世界。北京是中国的首都。上海是", 12),
    ("😀 😃 😄 😁 😆", 11),
])
def test_stream_never_splits_characters(model, session, prompt, n):
    pieces = list(session.stream(prompt, max_tokens=n, **GREEDY))
    r = session.last_result
    assert "".join(pieces) == r.text
    assert any(ord(c) > 0x7F for c in r.text)
    assert _split_characters(model, r.tokens), "no multi-token character was generated"
    if "\ufffd" not in r.text:
        assert not any("\ufffd" in p for p in pieces)


def test_stream_of_random_bytes(tiny):
    # the byte-level vocabulary samples arbitrary byte sequences at high temperature
    s = ffnskip.Session(tiny, n_ctx=256)
    for seed in (1, 2, 3):
        pieces = list(s.stream([40, 41], max_tokens=96, ignore_eos=True, temperature=2.0,
                               top_k=0, top_p=1.0, min_p=0.0, seed=seed))
        r = s.last_result
        assert "".join(pieces) == r.text
        raw = b"".join(tiny.token_to_piece(t, False) for t in r.tokens)   # specials not rendered
        assert r.text == raw.decode("utf-8", errors="replace")


# ---- chat ------------------------------------------------------------------------------

@pytest.mark.slow
def test_render_chat_template_features(tiny):
    # a template with a loop break and raise_exception, as Hugging Face templates use
    template = ("{% for m in messages %}{% if m['role'] == 'bad' %}{{ raise_exception('no bad roles') }}{% endif %}"
                "{{ m['role'] }}:{{ m['content'] }};{% if loop.index == 2 %}{% break %}{% endif %}{% endfor %}")
    msgs = [{"role": "a", "content": "1"}, {"role": "b", "content": "2"}, {"role": "c", "content": "3"}]
    assert render_chat(tiny, msgs, template=template) == "a:1;b:2;"
    with pytest.raises(ValueError, match="no bad roles"):
        render_chat(tiny, [{"role": "bad", "content": "x"}], template=template)
    # a model without a template gets ChatML
    assert render_chat(tiny, [{"role": "user", "content": "Hi"}]) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.slow
def test_render_chat(model):
    assert "<|im_start|>" in model.metadata_string("tokenizer.chat_template")
    text = render_chat(model, [{"role": "user", "content": "Hi"}])
    assert "<|im_start|>user\nHi<|im_end|>\n" in text
    assert text.startswith("<|im_start|>system\n")   # SmolLM2's default system message
    assert text.endswith("<|im_start|>assistant\n")
    text = render_chat(model, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                       add_generation_prompt=False)
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"


@pytest.mark.slow
def test_chat_generates_and_streams(model, session):
    messages = [{"role": "user", "content": "Hi"}]
    r = session.chat(messages, max_tokens=40, **GREEDY)
    im_start = model.tokenize("<|im_start|>", False, True)
    assert len(im_start) == 1
    assert r.prompt_tokens.count(im_start[0]) == 3   # parsed as special tokens
    pieces = session.chat(messages, stream=True, max_tokens=40, **GREEDY)
    assert not isinstance(pieces, ffnskip.Completion)
    assert "".join(pieces) == r.text
    assert session.last_result.finish_reason == r.finish_reason


@pytest.mark.parametrize("messages", [
    [],
    ["Hi"],
    [{"role": "user"}],
    [{"content": "Hi"}],
    [{"role": "user", "content": 5}],
])
def test_chat_bad_messages(tiny, messages):
    session = ffnskip.Session(tiny, n_ctx=64)
    with pytest.raises(ValueError):
        session.chat(messages, max_tokens=1)


# ---- threads ---------------------------------------------------------------------------

@pytest.mark.slow
def test_two_sessions_in_two_threads(model):
    prompts = [PROMPT, "Water boils at a temperature of"]
    alone = [ffnskip.Session(model, n_ctx=128).generate(p, max_tokens=8, **GREEDY).tokens for p in prompts]
    sessions = [ffnskip.Session(model, n_ctx=128, n_threads=1) for _ in prompts]
    got: list = [None, None]
    errors: list = []

    def work(i):
        try:
            got[i] = sessions[i].generate(prompts[i], max_tokens=8, **GREEDY).tokens
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert got == alone


def test_long_calls_release_the_gil(synthetic_model):
    # While another thread is inside a long native eval, this thread keeps running.
    m = ffnskip.Model(str(synthetic_model(n_embd=128, n_layer=2, n_ctx=512, seed=12)))
    s = ffnskip.Session(m, n_ctx=512, n_threads=1)
    ids = [(7 * i) % 300 + 3 for i in range(400)]
    t0 = time.perf_counter()
    s.eval(ids)
    alone = time.perf_counter() - t0
    s.reset()
    done = threading.Event()
    worker = threading.Thread(target=lambda: (s.eval(ids), done.set()))
    ticks = []
    worker.start()
    while not done.is_set():
        ticks.append(time.perf_counter())
        time.sleep(0.001)
    worker.join()
    gaps = np.diff(ticks) if len(ticks) > 1 else np.array([alone])
    assert len(ticks) > 10 and gaps.max() < 0.5 * alone, f"eval {alone:.3f}s, longest stall {gaps.max():.3f}s"


# ---- type stub --------------------------------------------------------------------------

def test_type_stub_covers_the_native_module():
    """python/ffnskip/_core.pyi names every public function, class and member of _core."""
    import ast
    import inspect
    import pathlib

    stub = ast.parse((pathlib.Path(ffnskip.__file__).parent / "_core.pyi").read_text())
    top: dict[str, set[str]] = {}
    for node in stub.body:
        if isinstance(node, ast.ClassDef):
            top[node.name] = {n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AnnAssign))
                              and isinstance(getattr(n, "name", None), str)}
            top[node.name] |= {n.target.id for n in node.body
                               if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
        elif isinstance(node, ast.FunctionDef):
            top[node.name] = set()
    core = ffnskip._core
    for name in dir(core):
        if name.startswith("__"):
            continue
        assert name in top, f"_core.{name} is missing from _core.pyi"
        obj = getattr(core, name)
        if inspect.isclass(obj) and not issubclass(obj, BaseException):
            for member in vars(obj):
                if not member.startswith("_"):
                    assert member in top[name], f"_core.{name}.{member} is missing from _core.pyi"
