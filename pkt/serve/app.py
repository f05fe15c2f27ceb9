"""The HTTP routes: OpenAI-compatible chat completions with a personality per request.

Endpoints: ``GET /`` (the chat page), ``GET /health``, ``GET /v1/models``,
``GET /v1/models/{id}``, ``POST /v1/chat/completions`` (JSON, or server-sent
``chat.completion.chunk`` events ending with ``data: [DONE]`` when ``stream`` is true).
The body is validated by :mod:`pkt.serve.schema`; the work is done by
:class:`pkt.serve.service.Service` (one decoding batch, a personality per row).

A streaming request that waits for an identification (a trait's first use) is answered
at once with its headers and SSE comment lines, ``: identifying openness (high: 12/227
answers), 34 s``, until its first chunk; an error after that point is an ``error`` event in
the stream. A plain request waits silently: ``GET /health`` shows the identification
(``identifying``), and the server logs its progress.

Every error is an OpenAI-style JSON body ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pkt.errors import PktError
from pkt.serve import page
from pkt.serve.engine import Completion
from pkt.serve.metrics import prometheus
from pkt.serve.personas import RequestError, example_ids, parse_model
from pkt.serve.schema import ChatCompletionRequest, ChatRequest, parse_chat
from pkt.serve.service import Busy, Job, Service
from pkt.serve.settings import Settings

POLL_S = 0.25  # how often a waiting request looks at its client and at the progress


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(e: Exception) -> JSONResponse:
    if isinstance(e, RequestError):
        headers = {"Retry-After": str(e.retry_after)} if isinstance(e, Busy) else None
        return JSONResponse(error_body(str(e), e.type, e.param, e.code), status_code=e.status,
                            headers=headers)
    if isinstance(e, PktError):
        return JSONResponse(error_body(str(e), "invalid_request_error", None, "pkt_error"),
                            status_code=400)
    return JSONResponse(error_body(f"internal error: {type(e).__name__}: {e}", "server_error",
                                   None, "internal_error"), status_code=500)


def _gone() -> JSONResponse:
    return JSONResponse(error_body("client disconnected", code="cancelled"), 499)


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class CancellingStream(StreamingResponse):
    """A streaming response that sets ``cancel`` however it ends (done, disconnect, error)."""

    def __init__(self, content, cancel: threading.Event, **kw):
        super().__init__(content, **kw)
        self.cancel = cancel

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.cancel.set()


class Reply:
    """One answer's id, chunks, usage and headers."""

    def __init__(self, req: ChatRequest, fingerprint: str):
        self.req, self.fingerprint = req, fingerprint
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.headers = {"X-PKT-Personality": req.spec.label}

    def extra(self, info: dict) -> dict:
        spec = self.req.spec
        return {"personality": {"label": spec.label,
                                "method": spec.method if spec.profile else None,
                                "identified": info["identified"],
                                "settings": info["settings"]}}

    def head(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created,
                "model": self.req.model, "system_fingerprint": self.fingerprint}

    def chunk(self, delta: dict, finish: str | None = None) -> dict:
        return {**self.head("chat.completion.chunk"),
                "choices": [{"index": 0, "delta": delta, "logprobs": None,
                             "finish_reason": finish}]}

    @staticmethod
    def usage(out: Completion) -> dict:
        return {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
                "total_tokens": out.prompt_tokens + out.completion_tokens}


def create_app(lm, settings: Settings | None = None) -> FastAPI:
    """The FastAPI app serving ``lm`` (a :class:`pkt.models.LoadedModel`)."""
    settings = settings or Settings()
    service = Service(lm, settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        service.close()  # the decoding thread ends with the server

    app = FastAPI(title="pkt serve", description="personality trait induction, "
                  "OpenAI-compatible", docs_url="/docs", redoc_url=None, lifespan=lifespan)
    app.state.service = service
    base = lm.name

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return JSONResponse(error_body(str(exc.detail), "invalid_request_error", None, code),
                            status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request, exc: RequestValidationError):
        return JSONResponse(error_body(str(exc.errors())[:500], "invalid_request_error"),
                            status_code=422)

    @app.exception_handler(Exception)
    async def server_error(_request, exc: Exception):
        return error_response(exc)

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page.HTML)

    @app.get("/health")
    async def health():
        return service.health()

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        return PlainTextResponse(prometheus(service.health()),
                                 media_type="text/plain; version=0.0.4")

    def model_card(mid: str) -> dict:
        return {"id": mid, "object": "model", "created": 0, "owned_by": "pkt"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card(m) for m in [base, *example_ids(base)]]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        try:
            parse_model(model_id, base, settings.method)
        except RequestError as e:
            return error_response(e)
        return model_card(model_id)

    async def next_event(job: Job, request: Request, stream: bool = False):
        """The next event of a request's thread; None (and cancel) if the client went
        away; with ``stream``, ``("waiting", None)`` once an identification is under way."""
        while True:
            try:
                return await asyncio.wait_for(job.queue.get(), timeout=POLL_S)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    job.cancel.set()
                    return None
                if stream and service.identifying is not None:
                    return ("waiting", None)

    def waiting_line(job: Job) -> tuple[str | None, str | None]:
        """(what is waited for, the comment line) while a stream waits for its first token."""
        ident = service.identifying
        if ident is None:
            return None, None
        what = ident.text()
        line = f"identifying {what}" if ident.owner is job.cancel else \
            f"waiting for the model: identifying {what} for another request"
        return what, f": {line}, {ident.elapsed:.0f} s\n\n"

    # the body is read and validated by hand (any content type, OpenAI's error shapes); its
    # schema still goes to /docs
    defs, body_schema = _body_schema()

    @app.post("/v1/chat/completions", openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": body_schema}}}})
    async def chat(request: Request):
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return error_response(RequestError(f"the request body is not valid JSON ({e})",
                                               None, "invalid_json"))
        try:
            req = parse_chat(body, base, settings)
            service.admit()
        except RequestError as e:
            return error_response(e)
        job = service.start(req)
        first = await next_event(job, request, stream=req.stream)
        if first is None:  # the client left while waiting
            return _gone()
        if first[0] == "error":
            return error_response(first[1])
        reply = Reply(req, lm.fingerprint)
        if first[0] == "waiting":  # a stream: its headers now, progress comments until ready
            ident = service.identifying
            if ident is not None and ident.owner is job.cancel:
                reply.headers["X-PKT-Identifying"] = ident.trait
            return stream(reply, job, None)
        info = first[1]
        if info["identified"]:
            reply.headers["X-PKT-Identified"] = ",".join(info["identified"])
        if req.stream:
            return stream(reply, job, info)
        parts = []
        while True:
            ev = await next_event(job, request)
            if ev is None:
                return _gone()
            if ev[0] == "delta":
                parts.append(ev[1])
            elif ev[0] == "error":
                return error_response(ev[1])
            else:
                out = ev[1]
                break
        return JSONResponse({
            **reply.head("chat.completion"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(parts)},
                         "logprobs": None, "finish_reason": out.finish_reason}],
            "usage": reply.usage(out), **reply.extra(info)}, headers=reply.headers)

    def stream(reply: Reply, job: Job, info: dict | None) -> CancellingStream:
        q = job.queue

        async def events():
            nonlocal info
            try:
                shown, sent_at = None, 0.0
                while info is None:  # waiting for the personality (identification)
                    what, line = waiting_line(job)
                    if line and (what != shown or
                                 time.monotonic() - sent_at >= settings.progress_interval):
                        shown, sent_at = what, time.monotonic()
                        yield line
                    try:
                        ev = await asyncio.wait_for(q.get(), timeout=POLL_S)
                    except asyncio.TimeoutError:
                        continue
                    if ev[0] == "error":
                        yield _sse(_error_event(ev[1]))
                        yield "data: [DONE]\n\n"
                        return
                    info = ev[1]
                yield _sse({**reply.chunk({"role": "assistant", "content": ""}),
                            **reply.extra(info)})
                while True:
                    ev = await q.get()
                    if ev[0] == "delta":
                        yield _sse(reply.chunk({"content": ev[1]}))
                    elif ev[0] == "error":
                        yield _sse(_error_event(ev[1]))
                        break
                    else:
                        out = ev[1]
                        yield _sse(reply.chunk({}, out.finish_reason))
                        if reply.req.include_usage:
                            yield _sse({**reply.head("chat.completion.chunk"), "choices": [],
                                        "usage": reply.usage(out)})
                        break
                yield "data: [DONE]\n\n"
            finally:
                job.cancel.set()

        return CancellingStream(events(), job.cancel, media_type="text/event-stream",
                                headers={**reply.headers, "Cache-Control": "no-cache",
                                         "X-Accel-Buffering": "no"})

    plain_openapi = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            spec = plain_openapi()
            spec.setdefault("components", {}).setdefault("schemas", {}).update(defs)
        return app.openapi_schema

    app.openapi = openapi
    return app


def _body_schema() -> tuple[dict, dict]:
    """(the nested models' schemas, the request's schema) for the OpenAPI document."""
    schema = ChatCompletionRequest.model_json_schema(
        ref_template="#/components/schemas/{model}")
    return schema.pop("$defs", {}), schema


def _error_event(e: Exception) -> dict:
    return error_body(str(e), getattr(e, "type", "server_error"), getattr(e, "param", None),
                      getattr(e, "code", None))

