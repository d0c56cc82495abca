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


def create_app(engine: Any) -> Any:
    """The FastAPI app serving `engine` (an :class:`ffnskip.server.engine.Engine`)."""
    _require()
    from .app import create_app as make

    return make(engine)


def __getattr__(name: str) -> Any:
    if name == "Engine":
        from .engine import Engine

        return Engine
    raise AttributeError(name)


def serve(model_path: str, *, host: str = "127.0.0.1", port: int = 8000, slots: int = 1, max_queue: int = 16,
          n_ctx: int = 0, n_threads: int = 0, skip: Any = None, model_name: str | None = None,
          log_level: str = "info") -> None:
    """Load the model, build `slots` sessions and serve until interrupted."""
    _require()
    import uvicorn

    from .engine import Engine

    engine = Engine(model_path, slots=slots, max_queue=max_queue, n_ctx=n_ctx, n_threads=n_threads,
                    skip=skip, model_name=model_name)
    app = create_app(engine)
    print(f"ffnskip: serving '{engine.model_id}' on http://{host}:{port}/v1 with {slots} slot(s) x "
          f"{engine.n_threads} thread(s), n_ctx {engine.n_ctx}, queue {max_queue}, skip policy "
          f"{engine.skip_fields['policy']}", flush=True)
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
    finally:
        engine.close()
