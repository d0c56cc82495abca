"""The OpenAI-compatible server, driven by the real `openai` client over loopback.

Oracle: ffnskip.Session in this process (greedy decoding is deterministic), and the
HTTP/OpenAI error contract. The server runs as `python -m ffnskip serve` in a
subprocess on a free port.
"""
from __future__ import annotations

import concurrent.futures
import json
import re
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="the [server] extra is not installed")
pytest.importorskip("uvicorn", reason="the [server] extra is not installed")
openai = pytest.importorskip("openai", reason="the openai client is not installed")
httpx = pytest.importorskip("httpx", reason="httpx is not installed")

from ffnskip import Model, Session  # noqa: E402
from ffnskip.server.process import ServerProcess  # noqa: E402

N_CTX = 512
PROMPTS = [
    "The capital of France is",
    "Once upon a time, there was a",
    "def fibonacci(n):",
    "The three primary colors are",
    "Water boils at a temperature of",
    "My favourite fruit is",
    "In the year 1969, humans",
    "The quick brown fox",
]


@pytest.fixture(scope="module")
def model_path(smollm2_q4_1):
    return smollm2_q4_1


@pytest.fixture(scope="module")
def model_id(model_path):
    return model_path.name[: -len(".gguf")]


@pytest.fixture(scope="module")
def oracle(model_path):
    """A Session on the same model and context as the server's slots."""
    return Session(Model(str(model_path)), n_ctx=N_CTX)


@pytest.fixture(scope="module", params=["batching", "no-batching"])
def server(request, model_path):
    """4 slots, a queue of 8: one batch (the default), or a Session per slot."""
    with ServerProcess(model_path, ["--slots", "4", "--queue", "8", "--ctx", str(N_CTX), f"--{request.param}"]) as s:
        s.batching = request.param == "batching"
        yield s
        assert s.alive(), s.output()


@pytest.fixture(scope="module")
def tight_server(model_path):
    """1 slot, a queue of 1: for cancellation and the queue limit."""
    with ServerProcess(model_path, ["--slots", "1", "--queue", "1", "--ctx", str(N_CTX)]) as s:
        yield s
        assert s.alive(), s.output()


_clients: list = []


@pytest.fixture(scope="module", autouse=True)
def _close_clients():
    yield
    while _clients:
        _clients.pop().close()


def client_for(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=60)
    _clients.append(client)
    return client


def metrics(server) -> dict:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def health(server) -> dict:
    r = httpx.get(server.url + "/health", timeout=10)
    assert r.status_code == 200
    return r.json()


# ---- correctness ----------------------------------------------------------------------
def test_models_list(server, model_id):
    models = client_for(server).models.list()
    assert [m.id for m in models.data] == [model_id]
    assert client_for(server).models.retrieve(model_id).id == model_id


def test_completion_greedy_equals_session(server, oracle, model_id):
    prompt = PROMPTS[0]
    want = oracle.generate(prompt, max_tokens=16, temperature=0)
    got = client_for(server).completions.create(model=model_id, prompt=prompt, max_tokens=16, temperature=0)
    assert got.object == "text_completion"
    assert got.choices[0].text == want.text
    assert got.choices[0].finish_reason == ("length" if want.finish_reason == "length" else "stop")
    assert got.usage.prompt_tokens == len(oracle.tokenize(prompt)) == len(want.prompt_tokens)
    assert got.usage.completion_tokens == len(want.tokens)
    assert got.usage.total_tokens == got.usage.prompt_tokens + got.usage.completion_tokens
    skip = got.usage.model_extra["ffnskip"]
    assert skip["policy"] == "full" and skip["ffn_skipped"] == 0


def test_completion_stream_equals_session(server, oracle, model_id):
    prompt = PROMPTS[1]
    want = oracle.generate(prompt, max_tokens=20, temperature=0)
    stream = client_for(server).completions.create(model=model_id, prompt=prompt, max_tokens=20, temperature=0,
                                                   stream=True, stream_options={"include_usage": True})
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].text)
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert "".join(pieces) == want.text
    assert len(pieces) > 2   # streamed, not sent in one piece
    assert finish in ("length", "stop")
    assert usage.completion_tokens == len(want.tokens)


def test_completion_token_prompt(server, oracle, model_id):
    tokens = oracle.tokenize(PROMPTS[3])
    want = oracle.generate(tokens, max_tokens=8, temperature=0)
    got = client_for(server).completions.create(model=model_id, prompt=tokens, max_tokens=8, temperature=0)
    assert got.choices[0].text == want.text


def test_chat_greedy_equals_session(server, oracle, model_id):
    messages = [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "Name a colour."}]
    want = oracle.chat(messages, max_tokens=16, temperature=0)
    client = client_for(server)
    got = client.chat.completions.create(model=model_id, messages=messages, max_tokens=16, temperature=0)
    assert got.object == "chat.completion"
    assert got.choices[0].message.role == "assistant"
    assert got.choices[0].message.content == want.text
    assert got.usage.prompt_tokens == len(want.prompt_tokens)

    stream = client.chat.completions.create(model=model_id, messages=messages, max_tokens=16, temperature=0, stream=True)
    roles, pieces, finishes = [], [], []
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        delta = chunk.choices[0].delta
        if delta.role:
            roles.append(delta.role)
        if delta.content:
            pieces.append(delta.content)
        if chunk.choices[0].finish_reason:
            finishes.append(chunk.choices[0].finish_reason)
    assert roles == ["assistant"]
    assert "".join(pieces) == want.text
    assert len(finishes) == 1


def test_sampling_fields_reach_the_engine(server, oracle, model_id):
    """Seeded sampling with penalties and a stop string gives the Session's text."""
    args = dict(max_tokens=24, temperature=0.9, top_p=0.9, seed=1234, frequency_penalty=0.5, presence_penalty=0.3)
    want = oracle.generate(PROMPTS[2], top_k=40, min_p=0.05, **args)
    got = client_for(server).completions.create(model=model_id, prompt=PROMPTS[2], **args)
    assert got.choices[0].text == want.text
    # a stop string cuts the greedy text where the Session cuts it
    full = oracle.generate(PROMPTS[0], max_tokens=16, temperature=0).text
    stop = full.strip().split()[2]
    want = oracle.generate(PROMPTS[0], max_tokens=16, temperature=0, stop=[stop])
    got = client_for(server).completions.create(model=model_id, prompt=PROMPTS[0], max_tokens=16, temperature=0, stop=[stop])
    assert got.choices[0].text == want.text and stop not in got.choices[0].text
    assert got.choices[0].finish_reason == "stop"


def test_per_request_skip_settings(server, oracle, model_id):
    """The `ffnskip` object changes the policy for one request; usage carries the same
    skip statistics as a Session given the same settings."""
    settings = {"policy": "random", "target_ratio": 0.5, "warmup": 0, "seed": 7}
    want = oracle.generate(PROMPTS[4], max_tokens=16, temperature=0, ignore_eos=True, skip=settings)
    assert want.stats["ffn_skipped"] > 0
    client = client_for(server)
    got = client.completions.create(model=model_id, prompt=PROMPTS[4], max_tokens=16, temperature=0,
                                    extra_body={"ffnskip": settings, "ignore_eos": True})
    skip = got.usage.model_extra["ffnskip"]
    assert got.choices[0].text == want.text
    assert skip["policy"] == "random"
    assert skip["ffn_skipped"] == want.stats["ffn_skipped"]
    assert skip["ffn_total"] == want.stats["ffn_total"]
    assert skip["skip_ratio"] == pytest.approx(skip["ffn_skipped"] / skip["ffn_total"])
    # the next request without the object is back on the server's setting (full)
    plain = client.completions.create(model=model_id, prompt=PROMPTS[4], max_tokens=16, temperature=0,
                                      extra_body={"ignore_eos": True})
    assert plain.usage.model_extra["ffnskip"]["ffn_skipped"] == 0


# ---- concurrency ------------------------------------------------------------------------
def test_eight_concurrent_streams(server, oracle, model_id):
    wants = [oracle.generate(p, max_tokens=8, temperature=0).text for p in PROMPTS]

    def run(prompt: str) -> str:
        stream = client_for(server).completions.create(model=model_id, prompt=prompt, max_tokens=8,
                                                       temperature=0, stream=True)
        return "".join(c.choices[0].text for c in stream if c.choices)

    before = metrics(server)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        gots = list(pool.map(run, PROMPTS))
    assert gots == wants
    assert health(server)["slots_busy"] == 0
    after = metrics(server)
    steps = after["ffnskip_batch_steps_total"] - before["ffnskip_batch_steps_total"]
    rows = after["ffnskip_batch_rows_total"] - before["ffnskip_batch_rows_total"]
    if server.batching:   # 8 requests x 8 tokens on 4 slots: several per forward pass
        assert rows == 8 * len(PROMPTS) and rows / steps > 2.0
    else:
        assert steps == rows == 0


def test_health_responsive_during_generation(server, model_id):
    client = client_for(server)
    done = threading.Event()

    def long_request():
        try:
            client.completions.create(model=model_id, prompt=PROMPTS[5], max_tokens=60, temperature=0,
                                      extra_body={"ignore_eos": True})
        finally:
            done.set()

    t = threading.Thread(target=long_request)
    t.start()
    try:
        deadline = time.monotonic() + 10
        while health(server)["slots_busy"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        worst = 0.0
        checks = 0
        while not done.is_set() and checks < 10:
            t0 = time.monotonic()
            health(server)
            worst = max(worst, time.monotonic() - t0)
            checks += 1
            time.sleep(0.05)
        assert checks > 0, "the generation finished before /health could be checked"
        assert worst < 0.5, f"/health took {worst:.3f} s during a generation"
    finally:
        t.join(60)


def test_cancelled_stream_frees_slot(tight_server, model_id):
    before = metrics(tight_server)
    body = {"model": model_id, "prompt": PROMPTS[6], "max_tokens": 400, "temperature": 0, "stream": True,
            "ignore_eos": True}
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", tight_server.url + "/v1/completions", json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            seen = 0
            for line in lines:
                if line.startswith("data: "):
                    seen += 1
                if seen == 3:
                    break
        # the stream is closed: the slot must be free for the next request at once
    t0 = time.monotonic()
    got = client_for(tight_server).completions.create(model=model_id, prompt=PROMPTS[7], max_tokens=4, temperature=0)
    elapsed = time.monotonic() - t0
    assert got.usage.completion_tokens == 4
    after = metrics(tight_server)
    assert after["ffnskip_cancelled_total"] == before.get("ffnskip_cancelled_total", 0) + 1
    generated = after["ffnskip_generated_tokens_total"] - before["ffnskip_generated_tokens_total"]
    assert generated < 400 / 2, f"the cancelled generation ran on ({generated} tokens)"
    assert elapsed < 3.0, f"the next request waited {elapsed:.2f} s"


def test_queue_limit_answers_429(tight_server, model_id):
    body = {"model": model_id, "prompt": PROMPTS[6], "max_tokens": 400, "temperature": 0, "stream": True,
            "ignore_eos": True}
    results = {}
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", tight_server.url + "/v1/completions", json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()   # kept referenced: a dropped line iterator closes the stream
            next(line for line in lines if line.startswith("data: "))   # holds the one slot

            def queued():
                results["queued"] = client_for(tight_server).completions.create(
                    model=model_id, prompt=PROMPTS[0], max_tokens=3, temperature=0)

            t = threading.Thread(target=queued)
            t.start()
            deadline = time.monotonic() + 10
            while health(tight_server)["queue_length"] < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert health(tight_server)["queue_length"] == 1
            with pytest.raises(openai.RateLimitError) as e:
                client_for(tight_server).completions.create(model=model_id, prompt=PROMPTS[1], max_tokens=3)
            assert e.value.status_code == 429
            assert "queue is full" in e.value.body["message"]
            assert metrics(tight_server)["ffnskip_queue_length"] == 1
        t.join(60)   # the first stream is closed: the queued request is served
    assert results["queued"].usage.completion_tokens == 3
    assert health(tight_server)["queue_length"] == 0


def test_client_leaving_the_queue_frees_its_place(tight_server, model_id):
    body = {"model": model_id, "prompt": PROMPTS[6], "max_tokens": 400, "temperature": 0, "stream": True,
            "ignore_eos": True}
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", tight_server.url + "/v1/completions", json=body) as r:
            lines = r.iter_lines()
            next(line for line in lines if line.startswith("data: "))   # holds the one slot
            with pytest.raises(httpx.ReadTimeout):   # waits in the queue, then gives up
                httpx.post(tight_server.url + "/v1/completions", json={"model": model_id, "prompt": "Hi", "max_tokens": 2},
                           timeout=httpx.Timeout(60, read=1.0))
            deadline = time.monotonic() + 5
            while health(tight_server)["queue_length"] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert health(tight_server)["queue_length"] == 0
            assert health(tight_server)["slots_busy"] == 1
    got = client_for(tight_server).completions.create(model=model_id, prompt="Hi", max_tokens=2)
    assert got.usage.completion_tokens == 2


# ---- bad input --------------------------------------------------------------------------
def _post(server, path, content=None, json_body=None):
    kwargs = {"content": content, "headers": {"content-type": "application/json"}} if content is not None else {"json": json_body}
    return httpx.post(server.url + path, timeout=30, **kwargs)


def _assert_error(r, status, fragment=None, code=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["message"]
    assert "type" in err
    if fragment:
        assert fragment in err["message"], err["message"]
    if code:
        assert err["code"] == code


def test_bad_requests_get_errors_and_server_stays_up(server, model_id):
    ok = {"model": model_id, "prompt": "Hi", "max_tokens": 2}
    chat = {"model": model_id, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    cases = [
        ("/v1/completions", '{"model": "x", "prompt": ', 400, "not valid JSON"),
        ("/v1/chat/completions", "not json at all", 400, "not valid JSON"),
        ("/v1/completions", {**ok, "max_tokens": -1}, 400, "max_tokens"),
        ("/v1/completions", {**ok, "max_tokens": "many"}, 400, "max_tokens"),
        ("/v1/completions", {**ok, "temperature": "hot"}, 400, "temperature"),
        ("/v1/completions", {**ok, "temperature": 7}, 400, "temperature"),
        ("/v1/completions", {**ok, "stream": "yes"}, 400, "stream"),
        ("/v1/completions", {**ok, "stop": 5}, 400, "stop"),
        ("/v1/completions", {**ok, "stop": [""]}, 400, "stop"),
        ("/v1/completions", {**ok, "n": 3}, 400, "n"),
        ("/v1/completions", {"model": model_id, "max_tokens": 2}, 400, "prompt"),
        ("/v1/completions", {**ok, "prompt": [1, 2, 10**9]}, 400, "out of range"),
        ("/v1/completions", {**ok, "prompt": ["a", "b"]}, 400, "one prompt"),
        ("/v1/completions", {**ok, "prompt": ""}, 400, "empty"),
        ("/v1/completions", {**ok, "ffnskip": {"policy": "bogus"}}, 400, "ffnskip"),
        ("/v1/completions", {**ok, "ffnskip": {"threshold": "high"}}, 400, "ffnskip"),
        ("/v1/completions", {**ok, "ffnskip": {"no_such_field": 1}}, 400, "no_such_field"),
        ("/v1/completions", [1, 2, 3], 400, None),
        ("/v1/chat/completions", {**chat, "messages": "hello"}, 400, "messages"),
        ("/v1/chat/completions", {**chat, "messages": []}, 400, "messages"),
        ("/v1/chat/completions", {**chat, "messages": [{"role": "wizard", "content": "x"}]}, 400, "role"),
        ("/v1/chat/completions", {**chat, "max_completion_tokens": -5}, 400, "max_completion_tokens"),
    ]
    for path, body, status, fragment in cases:
        r = _post(server, path, content=body) if isinstance(body, str) else _post(server, path, json_body=body)
        _assert_error(r, status, fragment)
        assert health(server)["status"] == "ok"

    # prompt longer than the context: 400 context_length_exceeded, as OpenAI answers
    long_prompt = "hello " * (N_CTX + 50)
    _assert_error(_post(server, "/v1/completions", json_body={**ok, "prompt": long_prompt}), 400,
                  "maximum context length", "context_length_exceeded")
    _assert_error(_post(server, "/v1/chat/completions",
                        json_body={**chat, "messages": [{"role": "user", "content": long_prompt}]}), 400,
                  code="context_length_exceeded")
    # unknown model: 404, also as the openai client sees it
    _assert_error(_post(server, "/v1/completions", json_body={**ok, "model": "gpt-17"}), 404, "gpt-17", "model_not_found")
    with pytest.raises(openai.NotFoundError):
        client_for(server).chat.completions.create(model="gpt-17", messages=chat["messages"], max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        client_for(server).completions.create(model=model_id, prompt="Hi", max_tokens=-3)
    _assert_error(httpx.get(server.url + "/v1/models/gpt-17", timeout=10), 404, code="model_not_found")
    _assert_error(httpx.get(server.url + "/v1/nothing", timeout=10), 404)
    _assert_error(httpx.get(server.url + "/v1/completions", timeout=10), 405)

    # still serving, every slot free
    assert server.alive()
    r = _post(server, "/v1/completions", json_body=ok)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 2
    assert health(server)["slots_busy"] == 0
    assert metrics(server)['ffnskip_requests_total{endpoint="/v1/completions",status="400"}'] >= 15


def test_metrics_count_a_request(server, model_id):
    before = metrics(server)
    got = client_for(server).completions.create(model=model_id, prompt=PROMPTS[3], max_tokens=10, temperature=0,
                                                extra_body={"ignore_eos": True,
                                                            "ffnskip": {"policy": "random", "target_ratio": 0.5, "warmup": 0}})
    after = metrics(server)
    key = 'ffnskip_requests_total{endpoint="/v1/completions",status="200"}'
    assert after[key] == before.get(key, 0) + 1
    assert after["ffnskip_generated_tokens_total"] - before["ffnskip_generated_tokens_total"] == got.usage.completion_tokens
    skip = got.usage.model_extra["ffnskip"]
    assert after["ffnskip_ffn_blocks_skipped_total"] - before["ffnskip_ffn_blocks_skipped_total"] == skip["ffn_skipped"]
    assert after["ffnskip_ffn_skip_ratio"] == pytest.approx(
        after["ffnskip_ffn_blocks_skipped_total"] / after["ffnskip_ffn_blocks_total"], rel=1e-4)
    assert after["ffnskip_decode_tokens_per_second"] > 0
    assert after["ffnskip_slots_total"] == 4 and after["ffnskip_queue_length"] == 0


def test_import_stays_light():
    """`import ffnskip` and the CLI parser do not pull in FastAPI."""
    import subprocess
    import sys

    import ffnskip

    code = ("import sys, ffnskip, ffnskip.cli; ffnskip.cli.build_parser(); "
            "print(json.dumps(sorted(m for m in ('fastapi', 'uvicorn', 'starlette') if m in sys.modules)))")
    import os
    import pathlib

    env = dict(os.environ, PYTHONPATH=str(pathlib.Path(ffnskip.__file__).resolve().parent.parent))
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True,
                         env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []
