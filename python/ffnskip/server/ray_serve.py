"""Scale-out on Ray Serve (optional extra: pip install "ffnskip[ray]"): N replicas of
the same engine (one Model and `slots` sessions each) behind one OpenAI-compatible
route. Each replica runs the FastAPI app of `ffnskip serve`, so requests, streaming,
errors and per-request skip settings behave as on a single server.

One machine:
    python -m ffnskip.server.ray_serve MODEL --replicas 2 --slots 2 --port 8000
or with Ray's own CLI:
    serve run ffnskip.server.ray_serve:app_builder model=MODEL replicas=2 slots=2
A cluster (ffnskip and the model file present on every node):
    ray start --head                           # on the head node
    ray start --address HEAD_IP:6379           # on each worker node
    FFNSKIP_API_KEY=... python -m ffnskip.server.ray_serve MODEL --address auto --replicas 8 --host 0.0.0.0
(--host 0.0.0.0 listens on every interface: set a key, or keep the port behind a firewall)
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Dict, Mapping, Optional, Sequence

_MISSING = "Ray Serve is not installed: pip install \"ffnskip[ray]\" (or pip install \"ray[serve]\")"


def build_deployment(model_path: str, *, replicas: int = 2, slots: int = 1, max_queue: int = 16, n_ctx: int = 0,
                     n_threads: int = 0, skip: Any = None, model_name: Optional[str] = None,
                     num_cpus: Optional[float] = None, api_key: Optional[str] = None) -> Any:
    """A bound Ray Serve application (pass it to serve.run). Each replica reserves
    `num_cpus` CPUs (default slots x threads per slot) so that Ray spreads replicas
    over the cluster's cores instead of piling them on one machine."""
    try:
        from ray import serve
    except ImportError as e:
        raise ImportError(f"{_MISSING} ({e})") from e
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    model_path = os.path.abspath(os.fspath(model_path))
    threads = n_threads if n_threads > 0 else 1
    cpus = float(num_cpus) if num_cpus is not None else float(slots * threads)

    def build_app() -> Any:
        # Runs inside each replica, after Ray placed it: load the model there.
        from . import create_app
        from .engine import Engine

        # the replica's slots decode in one batch, on the CPUs it reserved
        return create_app(Engine(model_path, slots=slots, max_queue=max_queue, n_ctx=n_ctx,
                                 n_threads=max(1, int(cpus)), skip=skip, model_name=model_name), api_key=api_key)

    class FfnskipReplica:
        pass

    deployment = serve.deployment(
        serve.ingress(build_app)(FfnskipReplica),
        name="ffnskip",
        num_replicas=replicas,
        # this replica's own slots and queue decide; Ray holds no requests back before that
        max_ongoing_requests=slots + max_queue + 1,
        ray_actor_options={"num_cpus": cpus},
    )
    return deployment.bind()


def app_builder(args: Mapping[str, str]) -> Any:
    """For `serve run ffnskip.server.ray_serve:app_builder model=PATH replicas=2 ...`."""
    known = {"model", "replicas", "slots", "queue", "ctx", "threads", "skip", "model_name", "num_cpus", "api_key"}
    unknown = set(args) - known
    if unknown:
        raise ValueError(f"unknown arguments {sorted(unknown)} (known: {sorted(known)})")
    model = args.get("model")
    if not model:
        from ..models import default_model_path

        model = str(default_model_path())
    return build_deployment(
        model, replicas=int(args.get("replicas", 2)), slots=int(args.get("slots", 1)),
        max_queue=int(args.get("queue", 16)), n_ctx=int(args.get("ctx", 0)), n_threads=int(args.get("threads", 0)),
        skip=args.get("skip"), model_name=args.get("model_name"),
        num_cpus=float(args["num_cpus"]) if "num_cpus" in args else None,
        api_key=args.get("api_key") or os.environ.get("FFNSKIP_API_KEY") or None,
    )


def run(model_path: str, *, host: str = "127.0.0.1", port: int = 8000, address: Optional[str] = None,
        blocking: bool = True, ray_init: Optional[Dict[str, Any]] = None, **kwargs: Any) -> None:
    """Start (or join, with address="auto") a Ray instance and serve the deployment on
    http://host:port/v1 ; with blocking=False return once the replicas are up."""
    try:
        import ray
        from ray import serve
    except ImportError as e:
        raise ImportError(f"{_MISSING} ({e})") from e
    from .guard import is_loopback

    if not is_loopback(host) and not kwargs.get("api_key"):
        print(f"ffnskip: WARNING: listening on {host}, a non-loopback address, without an API key: anyone who "
              "can reach this port can use the model. Set --api-key (or FFNSKIP_API_KEY).", file=sys.stderr, flush=True)
    if not ray.is_initialized():
        ray.init(address=address, **(ray_init or {}))
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_deployment(model_path, **kwargs), name="ffnskip", route_prefix="/")
    print(f"ffnskip: Ray Serve on http://{host}:{port}/v1 with {kwargs.get('replicas', 2)} replica(s)", flush=True)
    if blocking:
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            serve.shutdown()


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ffnskip.server.ray_serve",
                                description="ffnskip's OpenAI-compatible server as N Ray Serve replicas")
    p.add_argument("model", nargs="?", help="GGUF file (default: SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--slots", type=int, default=1, help="sessions per replica")
    p.add_argument("--queue", type=int, default=16, help="requests that may wait per replica; more get HTTP 429")
    p.add_argument("-c", "--ctx", type=int, default=0)
    p.add_argument("-t", "--threads", type=int, default=0, help="threads per slot (default 1)")
    p.add_argument("--skip", help="default skip policy name or profile .json")
    p.add_argument("--model-name")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("FFNSKIP_API_KEY") or None,
                   help="require 'Authorization: Bearer KEY' on every route but /health (default: $FFNSKIP_API_KEY)")
    p.add_argument("--address", help="Ray cluster to join ('auto' = the one `ray start` made); default: a local instance")
    args = p.parse_args(argv)
    model = args.model
    if not model:
        from ..models import default_model_path

        model = str(default_model_path())
    run(model, host=args.host, port=args.port, address=args.address, replicas=args.replicas, slots=args.slots,
        max_queue=args.queue, n_ctx=args.ctx, n_threads=args.threads, skip=args.skip, model_name=args.model_name,
        api_key=args.api_key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
