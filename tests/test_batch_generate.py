"""Continuous batching (BatchGenerator): requests join and leave a batch decoded in one
forward pass per step. Oracle: each request generated alone by a Session with the same
arguments (same seed) must give the same tokens, text and finish reason, whatever it is
batched with, whenever it joins and however its prompt is chunked."""
from __future__ import annotations

import pytest

import ffnskip
from ffnskip.batch import BatchGenerator

LONG = ("The history of the Roman Empire spans many centuries, beginning with the founding of the city "
        "and ending with the fall of Constantinople. In this essay we will look at")
REQUESTS = [
    ("The capital of France is", dict(max_tokens=24, temperature=0)),
    ("def fibonacci(n):", dict(max_tokens=30, temperature=0.8, seed=11)),
    (LONG, dict(max_tokens=20, temperature=0.7, top_k=20, seed=3, repeat_penalty=1.2)),
    ("1, 2, 3, 4,", dict(max_tokens=40, temperature=0, stop=[", 9"])),
    ("Once upon a time", dict(max_tokens=16, temperature=1.0, min_p=0.1, seed=5, frequency_penalty=0.5)),
]
N_CTX = 256


@pytest.fixture(scope="module")
def model(smollm2_q4_1):
    return ffnskip.Model(str(smollm2_q4_1))


@pytest.fixture(scope="module")
def alone(model):
    """Each request's Completion from a lone Session."""
    s = ffnskip.Session(model, n_ctx=N_CTX, n_threads=2)
    return [s.generate(p, **kw) for p, kw in REQUESTS]


def _same(got, want):
    assert got.tokens == want.tokens
    assert got.text == want.text
    assert got.finish_reason == want.finish_reason
    assert got.prompt_tokens == want.prompt_tokens


@pytest.mark.parametrize("n_seq, chunk", [(2, 4), (5, 64)])
def test_requests_equal_lone_sessions(model, alone, n_seq, chunk):
    g = BatchGenerator(model, n_seq=n_seq, n_ctx=N_CTX, n_threads=2, n_prefill_chunk=chunk)
    ids = [g.submit(p, **kw) for p, kw in REQUESTS[:n_seq]]
    waiting = list(range(n_seq, len(REQUESTS)))
    results = {}
    rounds = 0
    while g.n_active or waiting:
        rounds += 1
        assert rounds < 500
        for request, _, finished in g.step():
            if finished:
                results[ids.index(request)] = g.result(request)
                if waiting:   # a new request joins while the others are mid-stream
                    i = waiting.pop(0)
                    ids.append(g.submit(REQUESTS[i][0], **REQUESTS[i][1]))
    assert sorted(results) == list(range(len(REQUESTS)))
    for i, want in enumerate(alone):
        _same(results[i], want)
    assert alone[3].finish_reason == "stop" and ", 9" not in alone[3].text   # the stop string was exercised


def test_generate_keeps_order(model, alone):
    g = BatchGenerator(model, n_seq=3, n_ctx=N_CTX, n_threads=2)
    got = [g.generate([p], **kw)[0] for p, kw in REQUESTS[:1]]
    _same(got[0], alone[0])
    prompts = ["The capital of France is"] * 2 + ["Once upon a time"]
    got = g.generate(prompts, max_tokens=12, temperature=0)
    assert got[0].tokens == got[1].tokens
    assert got[0].tokens == ffnskip.Session(model, n_ctx=N_CTX).generate(prompts[0], max_tokens=12, temperature=0).tokens
    assert got[2].prompt_tokens == model.tokenize(prompts[2])


def test_a_joining_prompt_does_not_stall_the_others(model, alone):
    """While a long prompt is evaluated in chunks of 8, the decoding request still gets
    a token every round."""
    g = BatchGenerator(model, n_seq=2, n_ctx=N_CTX, n_threads=2, n_prefill_chunk=8)
    a = g.submit("Hello, my name is", max_tokens=60, temperature=0, ignore_eos=True)
    assert [u[0] for u in g.step()] == [a]
    b = g.submit(LONG, **REQUESTS[2][1])
    n_prompt = len(model.tokenize(LONG))
    rounds_until_b = 0
    while True:
        updates = g.step()
        assert a in [u[0] for u in updates], "the decoding request waited for the prompt"
        rounds_until_b += 1
        if b in [u[0] for u in updates]:
            break
    assert rounds_until_b == -(-n_prompt // 8)
    while g.n_active:
        g.step()
    _same(g.result(b), alone[2])
    assert g.result(a).stats["n_generated"] == 60


def test_cancel(model):
    g = BatchGenerator(model, n_seq=2, n_ctx=N_CTX, n_threads=2, n_prefill_chunk=4)
    a = g.submit("Tell me a long story about a dragon.", max_tokens=100, temperature=0, ignore_eos=True)
    delivered = []
    for _ in range(10):
        delivered += [piece for r, piece, _ in g.step() if r == a]
    b = g.submit(LONG, max_tokens=5)    # cancelled while its prompt is pending
    g.cancel(a)
    g.cancel(b)
    assert g.n_active == 0
    ra, rb = g.result(a), g.result(b)
    assert ra.finish_reason == "cancelled" and ra.text == "".join(delivered) and len(ra.tokens) == 10
    assert rb.finish_reason == "cancelled" and rb.tokens == []
    assert g.step() == []
    # both slots are free again
    ids = [g.submit("Hi", max_tokens=2), g.submit("Hey", max_tokens=2)]
    while g.n_active:
        g.step()
    assert [g.result(i).finish_reason for i in ids] == ["length", "length"]
    g.cancel(12345)   # unknown ids are ignored


def test_finish_reasons_match_session(model):
    s = ffnskip.Session(model, n_ctx=24, n_threads=2)
    g = BatchGenerator(model, n_seq=3, n_ctx=24, n_threads=2)
    cases = [("Hello", dict(max_tokens=0)),
             ("The capital of France is", dict(max_tokens=-1, temperature=0, ignore_eos=True)),
             ("What is 2+2?", dict(max_tokens=-1, temperature=0))]
    got = g.generate([p for p, _ in cases[:1]], **cases[0][1]) + g.generate([cases[1][0]], **cases[1][1]) \
        + g.generate([cases[2][0]], **cases[2][1])
    for (p, kw), r in zip(cases, got):
        _same(r, s.generate(p, **kw))
    assert [r.finish_reason for r in got[:2]] == ["length", "context_full"]


def test_per_request_skip_matches_session(model):
    skip = {"policy": "ffn_skip", "threshold": 0.9, "warmup": 2, "cold_start": 3, "cold_end": 3,
            "record_masks": True}
    s = ffnskip.Session(model, n_ctx=N_CTX, n_threads=2)
    want = s.generate("The capital of France is", max_tokens=24, temperature=0, ignore_eos=True, skip=skip)
    g = BatchGenerator(model, n_seq=2, n_ctx=N_CTX, n_threads=2, skip="full")
    a = g.submit("The capital of France is", max_tokens=24, temperature=0, ignore_eos=True, skip=skip)
    b = g.submit("Once upon a time", max_tokens=24, temperature=0, ignore_eos=True)
    while g.n_active:
        g.step()
    got, plain = g.result(a), g.result(b)
    _same(got, want)
    assert got.stats["ffn_skipped"] == want.stats["ffn_skipped"] > 0
    assert plain.stats["ffn_skipped"] == 0


def test_default_skip_of_the_generator(model):
    g = BatchGenerator(model, n_seq=1, n_ctx=N_CTX, n_threads=2, skip={"policy": "layers", "layers": [10, 11]})
    r = g.generate(["The capital of France is"], max_tokens=8, temperature=0, ignore_eos=True)[0]
    assert r.stats["ffn_skipped"] == 2 * 7   # 7 decode steps (the last token is not evaluated)


def test_bad_requests(model, tmp_path):
    g = BatchGenerator(model, n_seq=1, n_ctx=32, n_threads=1)
    with pytest.raises(TypeError, match="unknown generation argument 'temprature'"):
        g.submit("Hi", temprature=0)
    with pytest.raises(ValueError, match="prompt is empty"):
        g.submit([])
    with pytest.raises(ValueError, match="more than the context of 32"):
        g.submit(list(range(40)))
    with pytest.raises(ValueError, match="out of range"):
        g.submit([model.n_vocab])
    with pytest.raises(ValueError, match="whole layers"):
        g.submit("Hi", skip={"policy": "shortgpt", "layers": [3]})
    with pytest.raises(ValueError, match="must not be empty"):
        g.submit("Hi", stop=[""])
    a = g.submit("Hi", max_tokens=4)
    with pytest.raises(ValueError, match="sequence slots are taken"):
        g.submit("Hello")
    with pytest.raises(ValueError, match="has not finished"):
        g.result(a)
    with pytest.raises(ValueError, match="no finished request 999"):
        g.result(999)
    with pytest.raises(ValueError, match="n_prefill_chunk must be >= 1"):
        BatchGenerator(model, n_prefill_chunk=0)
    with pytest.raises(ValueError, match="n_seq must be in"):
        BatchGenerator(model, n_seq=0)


def test_one_thread_at_a_time(model):
    g = BatchGenerator(model, n_seq=1, n_ctx=32, n_threads=1)
    with g._lock:   # as if another thread were inside step()
        with pytest.raises(RuntimeError, match="busy in another thread"):
            g.step()


def test_backend_is_checked(model, smollm2_q4_1):
    """The generator and the server's engine take the backend by name; one this build or
    machine cannot run is a clear error at construction."""
    from ffnskip.server.engine import Engine

    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        BatchGenerator(model, n_seq=2, n_ctx=64, backend="tpu")
    assert BatchGenerator(model, n_seq=2, n_ctx=64, backend="auto").n_seq == 2
    if "cuda" not in ffnskip.available_backends():
        with pytest.raises(ffnskip.FfnskipError, match="no CUDA backend"):
            BatchGenerator(model, n_seq=2, n_ctx=64, backend="cuda")
        for batching in (True, False):
            with pytest.raises(ffnskip.FfnskipError, match="no CUDA backend"):
                Engine(smollm2_q4_1, slots=2, n_ctx=64, backend="cuda", batching=batching)


def test_engine_skip_alignment(smollm2_q4_1):
    from ffnskip.server.engine import Engine

    with pytest.raises(ValueError, match="needs batching"):
        Engine(smollm2_q4_1, slots=2, n_ctx=64, batching=False, skip_alignment="vote")
    with pytest.raises(ValueError, match="skip_alignment must be 'none' or 'vote'"):
        Engine(smollm2_q4_1, slots=2, n_ctx=64, skip_alignment="majority")
    engine = Engine(smollm2_q4_1, slots=2, n_ctx=64, skip_alignment="vote", skip="ffn_skip")
    engine.close()
