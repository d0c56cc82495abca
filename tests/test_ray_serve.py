"""Scale-out: a local Ray instance with 2 replicas of the server behind one route,
driven by the real `openai` client with concurrent requests. Skipped when Ray Serve
is not installed."""
from __future__ import annotations

import concurrent.futures
import time

import pytest

pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install \"ffnskip[ray]\")")
pytest.importorskip("fastapi", reason="the [server] extra is not installed")
openai = pytest.importorskip("openai", reason="the openai client is not installed")
httpx = pytest.importorskip("httpx", reason="httpx is not installed")

from ffnskip import Model, Session  # noqa: E402
from ffnskip.server.process import free_port  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::ResourceWarning"),
              pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")]

N_CTX = 256
PROMPTS = ["The capital of France is", "Once upon a time, there was a", "The three primary colors are",
           "Water boils at a temperature of", "My favourite fruit is", "The quick brown fox"]


@pytest.fixture(scope="module")
def ray_server(smollm2_q4_1):
    import os
    import pathlib

    import ray
    from ray import serve

    import ffnskip
    from ffnskip.server import ray_serve

    # replica processes import ffnskip from where this test does
    root = str(pathlib.Path(ffnskip.__file__).resolve().parent.parent)
    env = {"PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 2**20, log_to_driver=False,
             runtime_env={"env_vars": env})
    try:
        ray_serve.run(str(smollm2_q4_1), port=port, blocking=False, replicas=2, slots=1, max_queue=8,
                      n_ctx=N_CTX, n_threads=1)
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def test_two_replicas_serve_concurrent_requests(ray_server, smollm2_q4_1):
    from ray import serve

    status = serve.status().applications["ffnskip"]
    replicas = status.deployments["ffnskip"].replica_states
    assert replicas.get("RUNNING") == 2, replicas

    oracle = Session(Model(str(smollm2_q4_1)), n_ctx=N_CTX)
    wants = [oracle.generate(p, max_tokens=8, temperature=0).text for p in PROMPTS]
    client = openai.OpenAI(base_url=ray_server + "/v1", api_key="none", max_retries=0, timeout=120)
    model_id = client.models.list().data[0].id
    assert model_id == smollm2_q4_1.name[: -len(".gguf")]

    def run(i: int) -> str:
        prompt = PROMPTS[i]
        if i % 2:
            stream = client.completions.create(model=model_id, prompt=prompt, max_tokens=8, temperature=0, stream=True)
            return "".join(c.choices[0].text for c in stream if c.choices)
        return client.completions.create(model=model_id, prompt=prompt, max_tokens=8, temperature=0).choices[0].text

    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
        gots = list(pool.map(run, range(len(PROMPTS))))
    assert gots == wants, f"after {time.monotonic() - t0:.1f} s"

    # both replicas answer on the one route (each reports its own process id)
    pids = {httpx.get(ray_server + "/health", timeout=30).json()["pid"] for _ in range(30)}
    assert len(pids) == 2
    # errors keep their shape behind Ray
    r = httpx.post(ray_server + "/v1/completions", json={"model": "nope", "prompt": "x"}, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
