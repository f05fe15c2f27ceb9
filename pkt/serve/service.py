"""The service behind the routes: the model, the decoding batch, the personality cache,
identification's progress, and the counters.

Concurrency: one scheduler thread (:class:`pkt.serve.batcher.Batcher`) owns the serving
model and decodes every admitted request in one batch, each row with its own personality.
A request's own thread only prepares it: it finds (or builds) the personality, tokenises the
prompt and hands the row to the batch. Building a personality that is not in memory
(identifying a trait, computing a vector, strength=auto) runs on a *copy* of the model, one
build at a time, beside the batch: the requests already decoding do not wait for it, the
one that needs it does (or gets HTTP 409 with ``serve.identify=false``). Past
``serve.max_waiting`` requests not yet decoding, a new one gets HTTP 429 with a
``Retry-After``.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import math
import threading
import time
from dataclasses import dataclass, field

from pkt.errors import PktError
from pkt.serve import progress
from pkt.serve.batcher import Batcher, QueueFull, Row
from pkt.serve.engine import Completion, Sampling
from pkt.serve.lock import FifoLock
from pkt.serve.personas import PersonalityCache, RequestError, parse_shorthand, served_methods
from pkt.serve.schema import ChatRequest
from pkt.serve.settings import Settings

log = logging.getLogger("pkt.serve")


@dataclass
class Stats:
    requests: int = 0
    completed: int = 0
    cancelled: int = 0
    errors: int = 0
    rejected: int = 0  # HTTP 429
    completion_tokens: int = 0
    last: dict = field(default_factory=dict)


@dataclass
class Job:
    """A request's thread as the event loop sees it: its events, its cancel flag."""

    queue: asyncio.Queue
    cancel: threading.Event


class Busy(RequestError):
    """Too many requests wait for the batch (HTTP 429, ``retry_after`` seconds)."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message, None, "queue_full", status=429, type="rate_limit_error")
        self.retry_after = retry_after


def replica(lm):
    """A copy of ``lm`` (model and tokenizer) for building personalities beside the batch."""
    other = copy.copy(lm)
    other.model = copy.deepcopy(lm.model)
    other.tokenizer = copy.deepcopy(lm.tokenizer)
    return other


class Service:
    """The model, the decoding batch, the personality cache and the counters."""

    def __init__(self, lm, settings: Settings):
        self.lm, self.settings = lm, settings
        self.tokenizer = lm.tokenizer
        cfg = lm.model.config
        self.context_length = int(getattr(cfg, "max_position_embeddings", 0) or 0) or None
        self.batcher = Batcher(lm, settings.max_batch, settings.max_waiting,
                               settings.prompt_cache_tokens)
        self.build_lock = FifoLock()  # one personality build at a time
        self._builder = None  # the model copy builds run on (made at the first build)
        self._mu = threading.Lock()
        self.pending = 0  # requests accepted and not yet decoding
        self.stats = Stats()
        self.building: progress.Identifying | None = None  # the personality being built
        self.personas = PersonalityCache(lm, settings.identify, settings.n_search,
                                         settings.search_max_new_tokens, settings.seed,
                                         settings.cache_dir, settings.data_path,
                                         settings.cache_size, settings.params,
                                         build_lm=self.builder)

    def builder(self):
        if self._builder is None:
            self._builder = replica(self.lm)
        return self._builder

    def close(self) -> None:
        self.batcher.stop()

    @property
    def identifying(self) -> progress.Identifying | None:
        """The identification under way (a build that has shown a bar or run a while)."""
        b = self.building
        return b if b is not None and b.visible else None

    def preload(self, specs) -> None:
        """Identify / compute the personalities ``specs`` (shorthand strings) now."""
        for text in specs or ():
            spec = parse_shorthand(str(text), self.settings.method, "serve.preload")
            with self.build_lock:
                _, new = self.personas.get(spec, progress=True)
            log.info("preloaded %s%s", spec.label, f" (identified {', '.join(new)})" if new
                     else "")

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """Chat messages through the model's chat template, tokenised like pkt.generation."""
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                  tokenize=False)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _ids(self, messages: list[dict]) -> list[int]:
        ids = self.prompt_ids(messages)
        ctx = self.context_length
        if ctx is not None and len(ids) >= ctx:
            raise RequestError(f"This model's maximum context length is {ctx} tokens. However, "
                               f"your messages resulted in {len(ids)} tokens.", "messages",
                               "context_length_exceeded")
        return ids

    def prompt(self, req: ChatRequest, pers) -> list[int]:
        """The request's messages with the last user turn rewritten by the personality
        (the neutral evaluation prompt, or the persona prompt), tokenised."""
        msgs = [dict(m) for m in req.messages]
        for m in reversed(msgs):
            if m["role"] == "user":
                m["content"] = pers.rewrite(m["content"])
                break
        return self._ids(msgs)

    def personality(self, req: ChatRequest, owner=None):
        """(Personality, traits identified) for ``req``; a build not in memory waits for
        the build lock and is watched (its progress in :attr:`identifying`), after a check
        that the messages alone fit the context."""
        if self.personas.cached(req.spec) or not self.personas.needs_model(req.spec):
            return self.personas.get(req.spec)
        self._ids(req.messages)  # the rewrite only adds to them
        if not self.build_lock.acquire(cancel=owner):
            raise RequestError("cancelled while waiting", code="cancelled")
        spec = req.spec
        status = progress.Identifying(spec.label, [e.trait for e in spec.profile],
                                      spec.method, owner)
        try:
            if self.personas.cached(spec):  # built by the request before this one
                return self.personas.get(spec)
            self.building = status
            with progress.watch(status, self.settings.progress_interval):
                return self.personas.get(spec)
        finally:
            self.building = None
            self.build_lock.release()
            if status.bars:
                log.info("built %s in %.1f s", spec.label, status.elapsed)

    # -- requests -------------------------------------------------------------------------
    def admit(self) -> None:
        """Count a new request, or refuse it (:class:`Busy`) past ``serve.max_waiting``."""
        with self._mu:
            if self.pending >= self.settings.max_waiting:
                self.stats.rejected += 1
                lat = self.batcher.figures()["latency_s"]["p50"] or 1.0
                retry = max(1, math.ceil(lat * (self.pending + 1) / self.settings.max_batch))
                raise Busy(f"the server is busy: {self.pending} requests are waiting for the "
                           f"decoding batch (serve.max_waiting={self.settings.max_waiting}); "
                           f"retry after {retry} s", retry)
            self.pending += 1
            self.stats.requests += 1

    def _left_queue(self) -> None:
        with self._mu:
            self.pending -= 1

    def _finished(self, row: Row) -> None:
        out, st = row.out, self.stats  # counted before the answer goes out
        st.completed += out.finish_reason != "cancelled"
        st.cancelled += out.finish_reason == "cancelled"
        st.completion_tokens += out.completion_tokens
        st.last = {"personality": row.label, "finish_reason": out.finish_reason,
                   "prompt_tokens": out.prompt_tokens,
                   "completion_tokens": out.completion_tokens, "decode_steps": out.steps,
                   "max_tokens": row.sampling.max_tokens,
                   "seconds": round(time.perf_counter() - row.t_submit, 3)}
        log.info("chat %s: %d+%d tokens, %s, %.2fs", row.label, out.prompt_tokens,
                 out.completion_tokens, out.finish_reason, time.perf_counter() - row.t_submit)

    def work(self, req: ChatRequest, emit, cancel: threading.Event) -> None:
        """One request, in its own thread: its personality, its prompt, then its row in
        the batch. ``emit`` gets ``("ready", info)`` (or ``("error", exc)``) first, then
        ``("delta", text)`` events and a closing ``("done", Completion)`` or ``("error",
        exc)`` from the batch."""
        try:
            pers, new = self.personality(req, owner=cancel)
            ids = self.prompt(req, pers)
            s = req.sampling
            ctx = self.context_length
            if ctx is not None and len(ids) + s.max_tokens > ctx:
                s = Sampling(**{**s.__dict__, "max_tokens": ctx - len(ids)})
            edit = pers.row_edit()
            emit(("ready", {"identified": new, "prompt_tokens": len(ids),
                            "settings": pers.info["settings"]}))
            row = Row(ids, s, edit, self._emitter(emit), cancel, Completion(),
                      req.spec.label, on_admit=self._left_queue, on_done=self._finished)
            self.batcher.submit(row)
        except Exception as e:  # reported to the client; the server carries on
            self._left_queue()
            if isinstance(e, QueueFull):
                e = Busy(f"the server is busy: {e}", 1)
            self.stats.errors += 1
            if not isinstance(e, PktError):
                log.exception("request failed")
            emit(("error", e))

    def _emitter(self, emit):
        def out(ev):
            if ev[0] == "error":
                self.stats.errors += 1
            emit(ev)

        return out

    def start(self, req: ChatRequest) -> Job:
        """The request's thread, event queue and cancel flag (call from the event loop,
        after :meth:`admit`)."""
        loop = asyncio.get_running_loop()
        job = Job(asyncio.Queue(), threading.Event())

        def emit(ev):
            try:
                loop.call_soon_threadsafe(job.queue.put_nowait, ev)
            except RuntimeError:  # the loop is gone (server shutting down)
                job.cancel.set()

        threading.Thread(target=self.work, args=(req, emit, job.cancel), daemon=True,
                         name="pkt-serve-request").start()
        return job

    def health(self) -> dict:
        s, st = self.settings, self.stats
        ident = self.identifying
        batch = self.batcher.figures()
        return {"status": "ok", "model": self.lm.name, "method": s.method,
                "methods": served_methods(), "identify": s.identify, "n_search": s.n_search,
                "search_max_new_tokens": s.search_max_new_tokens,
                "max_tokens": s.max_tokens, "max_tokens_limit": s.max_tokens_limit,
                "busy": batch["rows"] > 0, "waiting": self.pending, "batch": batch,
                "identifying": ident.snapshot() if ident is not None else None,
                "context_length": self.context_length,
                "requests": st.requests, "completed": st.completed, "cancelled": st.cancelled,
                "errors": st.errors, "rejected": st.rejected,
                "completion_tokens": st.completion_tokens,
                "identified": list(self.personas.identified), "last": st.last}
