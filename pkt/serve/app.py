"""The HTTP application: OpenAI-compatible chat completions with a personality per request.

Endpoints: ``GET /`` (the chat page), ``GET /health``, ``GET /v1/models``,
``GET /v1/models/{id}``, ``POST /v1/chat/completions`` (JSON, or server-sent
``chat.completion.chunk`` events ending with ``data: [DONE]`` when ``stream`` is true).

Concurrency rule: the model is shared and personality hooks live on it, so one request at a
time holds :attr:`Service.lock` for its whole generation (building or identifying its
personality, applying the hooks, decoding); the others wait for it in their own threads.
A request whose client goes away stops decoding at the next token and gives the lock up.

Every error is an OpenAI-style JSON body ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pkt.errors import PktError
from pkt.serve import page
from pkt.serve.engine import Completion, Decoder, Sampling
from pkt.serve.personas import (
    PersonalityCache,
    RequestError,
    Spec,
    example_ids,
    parse_field,
    parse_model,
    parse_shorthand,
    served_methods,
)

log = logging.getLogger("pkt.serve")

ROLES = ("system", "developer", "user", "assistant")
MAX_STOPS = 4


@dataclass
class Settings:
    """The ``serve`` block of ``conf/serve.yaml`` (plus where caches and data live)."""

    identify: bool = True
    # identification's budget: null = the runner's (the whole search split, search_gen)
    n_search: int | None = None
    search_max_new_tokens: int | None = None
    max_tokens: int = 128
    method: str = "neuron"
    temperature: float = 0.0
    repetition_penalty: float = 1.15
    seed: int = 0
    cache_size: int = 64
    preload: tuple = ()
    cache_dir: str | None = None
    data_path: str | None = None
    # per method, its parameters beyond the class defaults (serve.params), e.g.
    # {"neuron": {"strength": 1.5}}: the same keys as conf/method/<name>.yaml
    params: dict = field(default_factory=dict)


@dataclass
class ChatRequest:
    model: str
    messages: list[dict]
    spec: Spec
    sampling: Sampling
    stream: bool = False
    include_usage: bool = False


@dataclass
class Stats:
    requests: int = 0
    completed: int = 0
    cancelled: int = 0
    errors: int = 0
    completion_tokens: int = 0
    last: dict = field(default_factory=dict)


# -- request parsing -------------------------------------------------------------------------

def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _number(body: dict, key: str, default, lo: float | None = None, hi: float | None = None,
            integer: bool = False, lo_open: bool = False):
    if body.get(key) is None:
        return default
    x = body[key]
    kind = "an integer" if integer else "a number"
    if not _is_number(x) or (integer and isinstance(x, float) and not x.is_integer()):
        raise RequestError(f"'{key}' must be {kind}, got {json.dumps(x)[:40]}", key,
                           "invalid_type")
    if not math.isfinite(x):
        raise RequestError(f"'{key}' must be a finite number, got {x}", key, "invalid_value")
    below = lo is not None and (x <= lo if lo_open else x < lo)
    if below or (hi is not None and x > hi):
        rng = (f"> {lo:g}" if lo_open else f">= {lo:g}") if lo is not None else ""
        rng += (" and " if rng and hi is not None else "") + (f"<= {hi:g}" if hi is not None
                                                               else "")
        raise RequestError(f"'{key}' must be {rng}, got {x:g}", key, "invalid_value")
    return int(x) if integer else float(x)


def _content(m: dict, i: int) -> str:
    c = m.get("content")
    if isinstance(c, str):
        return c
    if isinstance(c, list):  # content parts: text only
        texts = []
        for j, part in enumerate(c):
            if not isinstance(part, dict) or part.get("type") != "text" or \
                    not isinstance(part.get("text"), str):
                raise RequestError(f"messages[{i}].content[{j}]: only text parts "
                                   f"{{\"type\": \"text\", \"text\": ...}} are supported",
                                   f"messages[{i}].content", "invalid_value")
            texts.append(part["text"])
        return "".join(texts)
    if c is None:
        raise RequestError(f"Missing required parameter: 'messages[{i}].content'.",
                           f"messages[{i}].content", "missing_required_parameter")
    raise RequestError(f"messages[{i}].content must be a string or a list of text parts",
                       f"messages[{i}].content", "invalid_type")


def parse_messages(v) -> list[dict]:
    if v is None:
        raise RequestError("Missing required parameter: 'messages'.", "messages",
                           "missing_required_parameter")
    if not isinstance(v, list) or not v:
        raise RequestError("'messages' must be a non-empty array of {role, content} objects",
                           "messages", "invalid_type" if not isinstance(v, list) else
                           "invalid_value")
    out = []
    for i, m in enumerate(v):
        if not isinstance(m, dict):
            raise RequestError(f"messages[{i}] must be an object with role and content",
                               f"messages[{i}]", "invalid_type")
        role = m.get("role")
        if role not in ROLES:
            raise RequestError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got "
                               f"{json.dumps(role)[:40]}", f"messages[{i}].role",
                               "invalid_value")
        out.append({"role": "system" if role == "developer" else role,
                    "content": _content(m, i)})
    return out


def parse_stop(v) -> tuple[str, ...]:
    if v is None:
        return ()
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise RequestError("'stop' must be a string or an array of strings", "stop",
                           "invalid_type")
    if len(stops) > MAX_STOPS:
        raise RequestError(f"'stop' takes at most {MAX_STOPS} strings, got {len(stops)}",
                           "stop", "invalid_value")
    return tuple(s for s in stops if s)


def parse_chat(body, base: str, settings: Settings) -> ChatRequest:
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object", None, "invalid_type")
    if body.get("model") is None:
        raise RequestError("Missing required parameter: 'model'.", "model",
                           "missing_required_parameter")
    from_model = parse_model(body["model"], base, settings.method)
    messages = parse_messages(body.get("messages"))
    if body.get("personality") is not None:
        if from_model.profile:
            raise RequestError("the personality is given twice (in the model name and in "
                               "'personality'); give it once", "personality",
                               "invalid_personality")
        default = from_model.method if "@" in body["model"] else settings.method
        spec = parse_field(body["personality"], default)
    else:
        spec = from_model
    if body.get("n") not in (None, 1):
        raise RequestError(f"only n=1 is supported, got {json.dumps(body['n'])[:40]}", "n",
                           "invalid_value")
    max_tokens = _number(body, "max_completion_tokens", None, 1, integer=True)
    max_tokens = _number(body, "max_tokens", max_tokens, 1, integer=True) or settings.max_tokens
    temperature = _number(body, "temperature", settings.temperature, 0, 2)
    top_p = _number(body, "top_p", 1.0, 0, 1, lo_open=True)
    seed = _number(body, "seed", None, integer=True)
    rp = _number(body, "repetition_penalty", settings.repetition_penalty, 0, 10, lo_open=True)
    for flag in ("stream", "ignore_eos"):
        if body.get(flag) is not None and not isinstance(body[flag], bool):
            raise RequestError(f"'{flag}' must be a boolean", flag, "invalid_type")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise RequestError("'stream_options' must be an object", "stream_options",
                           "invalid_type")
    sampling = Sampling(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                        stop=parse_stop(body.get("stop")), repetition_penalty=rp,
                        ignore_eos=bool(body.get("ignore_eos")))
    return ChatRequest(body["model"], messages, spec, sampling, bool(body.get("stream")),
                       bool(opts.get("include_usage")))


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(e: Exception) -> JSONResponse:
    if isinstance(e, RequestError):
        return JSONResponse(error_body(str(e), e.type, e.param, e.code), status_code=e.status)
    if isinstance(e, PktError):
        return JSONResponse(error_body(str(e), "invalid_request_error", None, "pkt_error"),
                            status_code=400)
    return JSONResponse(error_body(f"internal error: {type(e).__name__}: {e}", "server_error",
                                   None, "internal_error"), status_code=500)


# -- the service -----------------------------------------------------------------------------

class FifoLock:
    """A lock granted in arrival order; a waiter whose ``cancel`` event is set leaves the
    queue. Also a plain context manager (``with lock:``)."""

    def __init__(self):
        self._cv = threading.Condition()
        self._queue: deque = deque()
        self._held = False

    def acquire(self, timeout: float | None = None, cancel: threading.Event | None = None,
                poll: float = 0.05) -> bool:
        me = object()
        end = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            self._queue.append(me)
            try:
                while self._held or self._queue[0] is not me:
                    if cancel is not None and cancel.is_set():
                        return False
                    if end is not None and time.monotonic() >= end:
                        return False
                    self._cv.wait(poll)
                self._held = True
                return True
            finally:
                self._queue.remove(me)
                self._cv.notify_all()

    def release(self) -> None:
        with self._cv:
            if not self._held:
                raise RuntimeError("release of an unheld FifoLock")
            self._held = False
            self._cv.notify_all()

    def locked(self) -> bool:
        return self._held

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


class Service:
    """The model, its decoder, the personality cache, and the one lock around generation."""

    def __init__(self, lm, settings: Settings):
        self.lm, self.settings = lm, settings
        self.decoder = Decoder(lm)
        self.lock = FifoLock()
        self.busy = False
        self.stats = Stats()
        self.personas = PersonalityCache(lm, settings.identify, settings.n_search,
                                         settings.search_max_new_tokens, settings.seed,
                                         settings.cache_dir, settings.data_path,
                                         settings.cache_size, settings.params)

    def preload(self, specs) -> None:
        """Identify / compute the personalities ``specs`` (shorthand strings) now."""
        for text in specs or ():
            spec = parse_shorthand(str(text), self.settings.method, "serve.preload")
            with self.lock:
                _, new = self.personas.get(spec, progress=True)
            log.info("preloaded %s%s", spec.label, f" (identified {', '.join(new)})" if new
                     else "")

    def prompt(self, req: ChatRequest, pers) -> list[int]:
        """The request's messages with the last user turn rewritten by the personality
        (the neutral evaluation prompt, or the persona prompt), tokenised."""
        msgs = [dict(m) for m in req.messages]
        for m in reversed(msgs):
            if m["role"] == "user":
                m["content"] = pers.rewrite(m["content"])
                break
        ids = self.decoder.prompt_ids(msgs)
        ctx = self.decoder.context_length
        if ctx is not None and len(ids) >= ctx:
            raise RequestError(f"This model's maximum context length is {ctx} tokens. However, "
                               f"your messages resulted in {len(ids)} tokens.", "messages",
                               "context_length_exceeded")
        return ids

    def work(self, req: ChatRequest, emit, cancel: threading.Event) -> None:
        """One request, in its own thread: wait for the lock, build the personality, decode.

        ``emit`` gets ``("ready", info)`` (or ``("error", exc)``) first, then ``("delta",
        text)`` events and a closing ``("done", Completion)`` or ``("error", exc)``.
        """
        if not self.lock.acquire(cancel=cancel):
            emit(("error", RequestError("cancelled while waiting", code="cancelled")))
            return
        t0 = time.perf_counter()
        out = Completion()
        try:
            self.busy = True
            pers, new = self.personas.get(req.spec)
            ids = self.prompt(req, pers)
            s = req.sampling
            ctx = self.decoder.context_length
            if ctx is not None and len(ids) + s.max_tokens > ctx:
                s = Sampling(**{**s.__dict__, "max_tokens": ctx - len(ids)})
            emit(("ready", {"identified": new, "prompt_tokens": len(ids),
                            "settings": pers.info["settings"]}))
            with pers.apply():
                for delta in self.decoder.stream(ids, s, out, cancel):
                    emit(("delta", delta))
            emit(("done", out))
            st = self.stats
            st.completed += out.finish_reason != "cancelled"
            st.cancelled += out.finish_reason == "cancelled"
            st.completion_tokens += out.completion_tokens
            st.last = {"personality": req.spec.label, "finish_reason": out.finish_reason,
                       "prompt_tokens": out.prompt_tokens,
                       "completion_tokens": out.completion_tokens, "decode_steps": out.steps,
                       "max_tokens": s.max_tokens,
                       "seconds": round(time.perf_counter() - t0, 3)}
            log.info("chat %s: %d+%d tokens, %s, %.2fs", req.spec.label, out.prompt_tokens,
                     out.completion_tokens, out.finish_reason, time.perf_counter() - t0)
        except Exception as e:  # reported to the client; the server carries on
            self.stats.errors += 1
            if not isinstance(e, PktError):
                log.exception("request failed")
            emit(("error", e))
        finally:
            self.busy = False
            self.lock.release()

    def start(self, req: ChatRequest):
        """The request's thread, event queue and cancel flag (call from the event loop)."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()

        def emit(ev):
            try:
                loop.call_soon_threadsafe(q.put_nowait, ev)
            except RuntimeError:  # the loop is gone (server shutting down)
                cancel.set()

        self.stats.requests += 1
        threading.Thread(target=self.work, args=(req, emit, cancel), daemon=True,
                         name="pkt-serve-request").start()
        return q, cancel


async def next_event(q: asyncio.Queue, request: Request, cancel: threading.Event):
    """The next event of a request's thread; None (and cancel) if the client went away."""
    while True:
        try:
            return await asyncio.wait_for(q.get(), timeout=0.25)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                cancel.set()
                return None


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


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def create_app(lm, settings: Settings | None = None) -> FastAPI:
    """The FastAPI app serving ``lm`` (a :class:`pkt.models.LoadedModel`)."""
    settings = settings or Settings()
    service = Service(lm, settings)
    app = FastAPI(title="pkt serve", description="personality trait induction, "
                  "OpenAI-compatible", docs_url="/docs", redoc_url=None)
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
        st = service.stats
        return {"status": "ok", "model": base, "method": settings.method,
                "methods": served_methods(), "identify": settings.identify,
                "n_search": settings.n_search,
                "search_max_new_tokens": settings.search_max_new_tokens,
                "busy": service.busy, "waiting": service.lock.waiting,
                "context_length": service.decoder.context_length,
                "requests": st.requests, "completed": st.completed, "cancelled": st.cancelled,
                "errors": st.errors, "completion_tokens": st.completion_tokens,
                "identified": list(service.personas.identified), "last": st.last}

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

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return error_response(RequestError(f"the request body is not valid JSON ({e})",
                                               None, "invalid_json"))
        try:
            req = parse_chat(body, base, settings)
        except RequestError as e:
            return error_response(e)
        q, cancel = service.start(req)
        first = await next_event(q, request, cancel)
        if first is None:  # the client left while waiting
            return JSONResponse(error_body("client disconnected", code="cancelled"), 499)
        if first[0] == "error":
            return error_response(first[1])
        info = first[1]
        rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        headers = {"X-PKT-Personality": req.spec.label}
        if info["identified"]:
            headers["X-PKT-Identified"] = ",".join(info["identified"])
        extra = {"personality": {"label": req.spec.label, "method": req.spec.method
                                 if req.spec.profile else None,
                                 "identified": info["identified"],
                                 "settings": info["settings"]}}

        def usage(out: Completion) -> dict:
            return {"prompt_tokens": out.prompt_tokens,
                    "completion_tokens": out.completion_tokens,
                    "total_tokens": out.prompt_tokens + out.completion_tokens}

        if not req.stream:
            parts = []
            while True:
                ev = await next_event(q, request, cancel)
                if ev is None:
                    return JSONResponse(error_body("client disconnected", code="cancelled"), 499)
                if ev[0] == "delta":
                    parts.append(ev[1])
                elif ev[0] == "error":
                    return error_response(ev[1])
                else:
                    out = ev[1]
                    break
            return JSONResponse({
                "id": rid, "object": "chat.completion", "created": created,
                "model": req.model, "system_fingerprint": lm.fingerprint,
                "choices": [{"index": 0, "message": {"role": "assistant",
                                                     "content": "".join(parts)},
                             "logprobs": None, "finish_reason": out.finish_reason}],
                "usage": usage(out), **extra}, headers=headers)

        def chunk(delta: dict, finish: str | None = None) -> dict:
            return {"id": rid, "object": "chat.completion.chunk", "created": created,
                    "model": req.model, "system_fingerprint": lm.fingerprint,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                 "finish_reason": finish}]}

        async def events():
            try:
                yield _sse({**chunk({"role": "assistant", "content": ""}), **extra})
                while True:
                    ev = await q.get()
                    if ev[0] == "delta":
                        yield _sse(chunk({"content": ev[1]}))
                    elif ev[0] == "error":
                        e = ev[1]
                        yield _sse(error_body(str(e), getattr(e, "type", "server_error"),
                                              getattr(e, "param", None),
                                              getattr(e, "code", None)))
                        break
                    else:
                        out = ev[1]
                        yield _sse(chunk({}, out.finish_reason))
                        if req.include_usage:
                            yield _sse({"id": rid, "object": "chat.completion.chunk",
                                        "created": created, "model": req.model,
                                        "system_fingerprint": lm.fingerprint, "choices": [],
                                        "usage": usage(out)})
                        break
                yield "data: [DONE]\n\n"
            finally:
                cancel.set()

        return CancellingStream(events(), cancel, media_type="text/event-stream",
                                headers={**headers, "Cache-Control": "no-cache",
                                         "X-Accel-Buffering": "no"})

    return app
