"""OpenAI-compatible HTTP serving (optional extra: pip install "ffnskip[server]").

>>> from ffnskip.server import Engine, create_app
>>> app = create_app(Engine("model.gguf", slots=2))   # an ASGI app for uvicorn

FastAPI and uvicorn are imported only here, so `import ffnskip` stays light.
"""
from __future__ import annotations

from typing import Any

_MISSING = ("the server needs FastAPI and uvicorn: pip install \"ffnskip[server]\" "
            "(or pip install fastapi uvicorn)")


def _require() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ImportError(f"{_MISSING} ({e})") from e


def create_app(engine: Any, **options: Any) -> Any:
    """The FastAPI app serving `engine` (an :class:`ffnskip.server.engine.Engine`);
    options: api_key, loopback_only, max_body (see `ffnskip.server.app.create_app`)."""
    _require()
    from .app import create_app as make

    return make(engine, **options)


def __getattr__(name: str) -> Any:
    if name == "Engine":
        from .engine import Engine

        return Engine
    raise AttributeError(name)


def serve(model_path: str | None, *, host: str = "127.0.0.1", port: int = 8000, slots: int = 1, max_queue: int = 16,
          n_ctx: int = 0, n_threads: int = 0, skip: Any = None, model_name: str | None = None,
          log_level: str = "info", api_key: str | None = None, max_body: int | None = None,
          head_timeout: float | None = None, max_waiting: int | None = None,
          body_timeout: float | None = None, batching: bool = True, prefill_chunk: int = 64,
          backend: str = "cpu", skip_alignment: str = "none") -> None:
    """Load the model and serve until interrupted: `slots` requests decode together in
    one batch (one forward pass per step), or, with batching=False, on `slots` sessions
    of their own.

    `api_key` (default: $FFNSKIP_API_KEY) requires `Authorization: Bearer <key>` on every
    route but /health. On a loopback `host` only loopback Host headers are accepted (DNS
    rebinding); on any other address a server without a key prints a warning.
    """
    _require()
    import os
    import sys

    import uvicorn

    from .engine import Engine
    from .guard import DEFAULT_BODY_SECONDS, DEFAULT_HEAD_SECONDS, DEFAULT_MAX_BODY, is_loopback, protocol_class

    if api_key is None:
        api_key = os.environ.get("FFNSKIP_API_KEY") or None
    loopback = is_loopback(host)
    if not loopback and api_key is None:
        print(f"ffnskip: WARNING: listening on {host}, a non-loopback address, without an API key: anyone who "
              "can reach this port can use the model. Set --api-key (or FFNSKIP_API_KEY), or put an "
              "authenticating proxy in front.", file=sys.stderr, flush=True)
    from ..models import resolve_model   # after the warning: a wrong MODEL stops the command here

    model_path = resolve_model(model_path)
    max_waiting = max_waiting if max_waiting is not None else _default_max_waiting()
    engine = Engine(model_path, slots=slots, max_queue=max_queue, n_ctx=n_ctx, n_threads=n_threads,
                    skip=skip, model_name=model_name, batching=batching, prefill_chunk=prefill_chunk,
                    backend=backend, skip_alignment=skip_alignment)
    from .app import create_app as make

    app = make(engine, api_key=api_key, loopback_only=loopback,
               max_body=max_body if max_body is not None else DEFAULT_MAX_BODY,
               body_seconds=body_timeout if body_timeout is not None else DEFAULT_BODY_SECONDS)
    layout = (f"a batch of up to {slots} sequence(s) on {engine.n_threads} thread(s)" if engine.batching
              else f"{slots} session(s) x {engine.n_threads} thread(s)")
    print(f"ffnskip: serving '{engine.model_id}' on http://{host}:{port}/v1 with {layout}, "
          f"n_ctx {engine.n_ctx}, queue {max_queue}, skip policy "
          f"{engine.skip_fields['policy']}{', API key required' if api_key else ''}", flush=True)
    protocol = protocol_class(head_timeout if head_timeout is not None else DEFAULT_HEAD_SECONDS, max_waiting)
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5,
                    http=protocol, timeout_keep_alive=5, h11_max_incomplete_event_size=16 * 1024)
    finally:
        engine.close()


def _default_max_waiting() -> int:
    """Connections that may wait for their request head: half the open-file limit
    (after raising the soft limit to the hard one), so sockets never run out."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = hard if hard != resource.RLIM_INFINITY else 65536
        if soft != resource.RLIM_INFINITY and soft < want:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, 65536), hard))
                soft = min(want, 65536)
            except (ValueError, OSError):
                pass
        limit = soft if soft != resource.RLIM_INFINITY else 65536
    except ImportError:   # not on POSIX
        limit = 512
    return max(8, min(1024, limit // 2))
