"""The OpenAI-compatible HTTP face: /v1/models, /v1/completions, /v1/chat/completions
(streamed as server-sent events or not), /health, /metrics.

Every failure answers with OpenAI's error body ({"error": {"message", "type", "param",
"code"}}): 400 bad request (also a prompt plus max_tokens beyond the context:
"context_length_exceeded", as OpenAI answers), 401 missing or wrong API key, 404
unknown model or route, 408 / 413 body too slow / too large, 429 every slot busy and
the queue full (with Retry-After), 500 engine failure. A handler never lets an
exception take the process down. Tokenizing and chat-template rendering run on worker
threads, so a large prompt does not stall the event loop.
"""
from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from typing import Any, AsyncIterator, Dict, List, Optional, Tuple

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..chat import chat_tokens
from .engine import Engine, Job
from .guard import DEFAULT_BODY_SECONDS, DEFAULT_MAX_BODY, Gate
from .schemas import ChatCompletionRequest, CompletionRequest, _Sampling, error_body
from .slots import QueueFull

# engine finish reasons -> OpenAI's
_FINISH = {"length": "length", "context_full": "length", "stop": "stop", "eos": "stop", "cancelled": "stop"}
_ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics")


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(self.message, self.type, self.param, self.code), status_code=self.status)


class _CountRequests:
    """ASGI middleware: counts responses by endpoint and status for /metrics."""

    def __init__(self, app: Any, engine: Engine) -> None:
        self.app, self.engine = app, engine

    async def __call__(self, scope: Dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]

        async def send_status(message: Dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope.get("path", "")
            endpoint = next((e for e in _ENDPOINTS if path == e or path.startswith(e + "/")), "other")
            self.engine.metrics.count_request(endpoint, status[0])


class _JobStream(StreamingResponse):
    """A streaming response that cancels its generation however it ends (finished,
    client gone, server stopping), so the slot is freed at once."""

    def __init__(self, content: AsyncIterator[str], job: Job) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.job = job

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        except ClientDisconnect:
            pass   # the client left mid-stream: nothing more to send
        finally:
            self.job.cancel.set()


def _validation_message(exc: RequestValidationError) -> Tuple[str, Optional[str]]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}", None
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid value")
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return (f"{param}: {msg}" if param else msg) + more, param


async def _wait_disconnect(request: Request) -> None:
    """Returns when the client goes away (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _bad_text(value: Any, path: str) -> Optional[str]:
    """The path of the first string in a request that UTF-8 cannot encode (a lone
    surrogate such as "\ud800", which JSON escapes can carry), else None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
    elif isinstance(value, dict):
        for k, v in value.items():
            found = _bad_text(v, f"{path}.{k}" if path else str(k))
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = _bad_text(v, f"{path}[{i}]")
            if found:
                return found
    return None


def _check_text(body: Any) -> None:
    bad = _bad_text(body.model_dump(exclude_none=True), "")
    if bad:
        raise APIError(400, f"{bad}: not valid Unicode text (a lone surrogate such as \\ud800)",
                       param=bad.split(".")[0].split("[")[0])


def create_app(engine: Engine, *, api_key: Optional[str] = None, loopback_only: bool = False,
               max_body: int = DEFAULT_MAX_BODY, body_seconds: float = DEFAULT_BODY_SECONDS) -> FastAPI:
    """The app; `api_key` requires `Authorization: Bearer <key>` on every route but
    /health, `loopback_only` rejects Host headers that are not loopback names (set it
    when the server listens on loopback: it stops DNS rebinding), `max_body` bounds a
    request body in bytes."""
    app = FastAPI(title="ffnskip", version="0.1.0", docs_url=None, redoc_url=None)
    app.state.engine = engine
    app.add_middleware(Gate, api_key=api_key, loopback_only=loopback_only, max_body=max_body,
                       body_seconds=body_seconds)
    app.add_middleware(_CountRequests, engine=engine)   # outermost: counts the gate's answers too

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return APIError(400, message, param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if exc.status_code == 404 else None
        message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
        return JSONResponse(error_body(message, "invalid_request_error", None, code), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(error_body(f"internal error: {exc}", "server_error"), status_code=500)

    # ---- status -----------------------------------------------------------------
    @app.get("/health")
    async def health() -> Dict[str, Any]:
        return {"status": "ok", "model": engine.model_id, "pid": os.getpid(), **engine.gauges()}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(engine.metrics.render(engine.gauges), media_type="text/plain; version=0.0.4")

    def model_card() -> Dict[str, Any]:
        return {"id": engine.model_id, "object": "model", "created": int(app.state.started), "owned_by": "ffnskip",
                "n_ctx": engine.n_ctx}

    app.state.started = time.time()

    @app.get("/v1/models")
    async def list_models() -> Dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> Dict[str, Any]:
        if model_id != engine.model_id:
            raise APIError(404, f"the model '{model_id}' does not exist (this server serves '{engine.model_id}')",
                           param="model", code="model_not_found")
        return model_card()

    # ---- generation ---------------------------------------------------------------
    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        _check_text(body)
        if body.echo:
            raise APIError(400, "echo is not supported", param="echo")
        if body.suffix:
            raise APIError(400, "suffix is not supported", param="suffix")
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise APIError(400, "one prompt per request, please (a list of prompts is not supported)", param="prompt")
            prompt = prompt[0]
        if isinstance(prompt, str):
            tokens = await asyncio.to_thread(engine.tokenize, prompt, chat=False)
        else:
            tokens = list(prompt)
            bad = [t for t in tokens if not 0 <= t < engine.model.n_vocab]
            if bad:
                raise APIError(400, f"token id {bad[0]} is out of range [0, {engine.model.n_vocab})", param="prompt")
        return await _generate(body, tokens, request, chat=False, default_max_tokens=16)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        _check_text(body)
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        try:
            # contents as text, markup as special tokens; a looping template times out
            tokens = await asyncio.to_thread(chat_tokens, engine.model, messages)
        except ValueError as e:   # template errors (raise_exception, bad roles) are the client's
            raise APIError(400, f"could not render the chat template: {e}", param="messages")
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        return await _generate(body, tokens, request, chat=True, default_max_tokens=-1, max_tokens=max_tokens)

    async def _generate(body: _Sampling, tokens: List[int], request: Request, *, chat: bool,
                        default_max_tokens: int, max_tokens: Optional[int] = None) -> Response:
        if body.model is not None and body.model != engine.model_id:
            raise APIError(404, f"the model '{body.model}' does not exist (this server serves '{engine.model_id}')",
                           param="model", code="model_not_found")
        if body.logprobs:
            raise APIError(400, "logprobs are not supported", param="logprobs")
        if not tokens:
            raise APIError(400, "the prompt is empty", param="prompt")
        param = "messages" if chat else "prompt"
        if len(tokens) > engine.n_ctx:
            raise APIError(400, f"This model's maximum context length is {engine.n_ctx} tokens; the prompt has "
                                f"{len(tokens)}", param=param, code="context_length_exceeded")
        kwargs, policy = _engine_args(body, max_tokens if max_tokens is not None else body.max_tokens, default_max_tokens)
        if kwargs["max_tokens"] > 0 and len(tokens) + kwargs["max_tokens"] > engine.n_ctx:
            # as OpenAI: the prompt plus the completion must fit; no silent clamping
            raise APIError(400, f"This model's maximum context length is {engine.n_ctx} tokens; you requested "
                                f"{len(tokens) + kwargs['max_tokens']} ({len(tokens)} in the {param}, "
                                f"{kwargs['max_tokens']} for the completion)",
                           param="max_completion_tokens" if getattr(body, "max_completion_tokens", None) is not None
                           else "max_tokens",
                           code="context_length_exceeded")

        try:
            slot = await _acquire(request)
        except QueueFull as e:
            return JSONResponse(error_body(str(e), "rate_limit_error", None, "queue_full"), status_code=429,
                                headers={"Retry-After": "1"})
        if slot is None:   # the client left while waiting
            return Response(status_code=499)
        job = engine.start(slot, tokens, kwargs)
        first = await job.events.get()
        if first[0] == "error":
            raise _engine_error(first[1])

        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        head = {"id": rid, "created": created, "model": engine.model_id}
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return _JobStream(_events(job, head, chat, policy, include_usage), job)
        return await _collect(job, head, chat, policy, request)

    async def _acquire(request: Request):
        if engine.pool.n_busy < engine.pool.n_slots and not engine.pool.queue_length:
            return await engine.pool.acquire()
        acquire = asyncio.ensure_future(engine.pool.acquire())
        gone = asyncio.ensure_future(_wait_disconnect(request))
        try:
            done, _ = await asyncio.wait({acquire, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if acquire in done:
            return acquire.result()   # raises QueueFull
        acquire.cancel()
        try:
            await acquire
        except (asyncio.CancelledError, QueueFull):
            pass
        return None

    def _engine_args(body: _Sampling, max_tokens: Optional[int], default_max_tokens: int) -> Tuple[Dict[str, Any], str]:
        kwargs: Dict[str, Any] = {
            "max_tokens": default_max_tokens if max_tokens is None else max_tokens,
            "temperature": 1.0 if body.temperature is None else body.temperature,
            "top_p": 1.0 if body.top_p is None else body.top_p,
            "ignore_eos": body.ignore_eos,
        }
        for name in ("seed", "frequency_penalty", "presence_penalty", "top_k", "min_p", "repeat_penalty", "repeat_last_n"):
            value = getattr(body, name)
            if value is not None:
                kwargs[name] = value
        if body.stop is not None:
            stops = [body.stop] if isinstance(body.stop, str) else list(body.stop)
            if any(not s for s in stops):
                raise APIError(400, "stop strings must not be empty", param="stop")
            if stops:
                kwargs["stop"] = stops
        policy = engine.skip_fields["policy"]
        if body.ffnskip is not None:
            try:
                skip = engine.request_skip(body.ffnskip.model_dump(exclude_none=True))
            except (ValueError, TypeError) as e:
                raise APIError(400, f"ffnskip: {e}", param="ffnskip")
            if skip is not None:
                kwargs["skip"] = skip
                policy = skip["policy"]
        return kwargs, policy

    def _usage(result: Any, policy: str) -> Dict[str, Any]:
        s = result.stats
        n_prompt, n_out = len(result.prompt_tokens), len(result.tokens)
        return {
            "prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out,
            "ffnskip": {
                "policy": policy,
                "skip_ratio": s.get("skip_ratio", 0.0),
                "skip_ratio_after_warmup": s.get("skip_ratio_after_warmup", 0.0),
                "ffn_total": s.get("ffn_total", 0),
                "ffn_skipped": s.get("ffn_skipped", 0),
                "skip_steps": s.get("skip_steps", 0),
                "skip_steps_after_warmup": s.get("skip_steps_after_warmup", 0),
                "skipped_per_layer": list(s.get("skipped_per_layer", [])),
                "cached_prompt_tokens": s.get("n_cached_tokens", 0),
                "prompt_tokens_per_second": s.get("prompt_tokens_per_second", 0.0),
                "decode_tokens_per_second": s.get("decode_tokens_per_second", 0.0),
            },
        }

    def _chunk(head: Dict[str, Any], chat: bool, text: Optional[str], finish: Optional[str] = None,
               role: bool = False) -> Dict[str, Any]:
        if chat:
            delta: Dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
                delta["content"] = ""
            elif text is not None:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {**head, "object": "chat.completion.chunk", "choices": [choice]}
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return {**head, "object": "text_completion", "choices": [choice]}

    async def _events(job: Job, head: Dict[str, Any], chat: bool, policy: str, include_usage: bool) -> AsyncIterator[str]:
        def sse(obj: Dict[str, Any]) -> str:
            return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"

        if chat:
            yield sse(_chunk(head, chat, None, role=True))
        while True:
            event = await job.events.get()
            if event[0] == "piece":
                yield sse(_chunk(head, chat, event[1]))
            elif event[0] == "done":
                result = event[1]
                usage = _usage(result, policy)
                final = _chunk(head, chat, None if chat else "", finish=_FINISH.get(result.finish_reason, "stop"))
                final["usage"] = usage
                yield sse(final)
                if include_usage:
                    yield sse({**head, "object": final["object"], "choices": [], "usage": usage})
                break
            else:   # an engine failure mid-stream: the status line is sent already
                err = _engine_error(event[1])
                yield sse(error_body(err.message, err.type, err.param, err.code))
                break
        yield "data: [DONE]\n\n"

    async def _collect(job: Job, head: Dict[str, Any], chat: bool, policy: str, request: Request) -> Response:
        gone = []

        def on_gone(_: asyncio.Future) -> None:
            gone.append(True)
            job.cancel.set()

        watcher = asyncio.ensure_future(_wait_disconnect(request))
        watcher.add_done_callback(lambda f: f.cancelled() or on_gone(f))
        try:
            while True:
                event = await job.events.get()
                if event[0] == "done":
                    break
                if event[0] == "error":
                    raise _engine_error(event[1])
        finally:
            watcher.cancel()
            job.cancel.set()
        result = event[1]
        if gone:   # nobody to answer; counted as 499 (client closed), not 200
            return Response(status_code=499)
        finish = _FINISH.get(result.finish_reason, "stop")
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": result.text}, "logprobs": None,
                      "finish_reason": finish}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": result.text, "logprobs": None, "finish_reason": finish}
            obj = "text_completion"
        return JSONResponse({**head, "object": obj, "choices": [choice], "usage": _usage(result, policy)})

    return app


def _engine_error(exc: BaseException) -> APIError:
    if isinstance(exc, (ValueError, TypeError)):
        return APIError(400, str(exc))
    return APIError(500, f"generation failed: {exc}", type_="server_error")
