"""The service behind the routes: the model, its decoder, the personality cache, the one
lock around generation, identification's progress, and the counters.

Concurrency rule: the model is shared and personality hooks live on it, so one request at a
time holds :attr:`Service.lock` for its whole generation (building or identifying its
personality, applying the hooks, decoding); the others wait for it in their own threads.
A request whose client goes away stops decoding at the next token and gives the lock up.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field

from pkt.errors import PktError
from pkt.serve import progress
from pkt.serve.engine import Completion, Decoder, Sampling
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
    completion_tokens: int = 0
    last: dict = field(default_factory=dict)


@dataclass
class Job:
    """A request's thread as the event loop sees it: its events, its cancel flag."""

    queue: asyncio.Queue
    cancel: threading.Event


class Service:
    """The model, its decoder, the personality cache, and the one lock around generation."""

    def __init__(self, lm, settings: Settings):
        self.lm, self.settings = lm, settings
        self.decoder = Decoder(lm)
        self.lock = FifoLock()
        self.busy = False
        self.stats = Stats()
        self.building: progress.Identifying | None = None  # the personality being built
        self.personas = PersonalityCache(lm, settings.identify, settings.n_search,
                                         settings.search_max_new_tokens, settings.seed,
                                         settings.cache_dir, settings.data_path,
                                         settings.cache_size, settings.params)

    @property
    def identifying(self) -> progress.Identifying | None:
        """The identification under way (a build that has shown a bar or run a while)."""
        b = self.building
        return b if b is not None and b.visible else None

    def preload(self, specs) -> None:
        """Identify / compute the personalities ``specs`` (shorthand strings) now."""
        for text in specs or ():
            spec = parse_shorthand(str(text), self.settings.method, "serve.preload")
            with self.lock:
                _, new = self.personas.get(spec, progress=True)
            log.info("preloaded %s%s", spec.label, f" (identified {', '.join(new)})" if new
                     else "")

    def _ids(self, messages: list[dict]) -> list[int]:
        ids = self.decoder.prompt_ids(messages)
        ctx = self.decoder.context_length
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
        """(Personality, traits identified) for ``req``; a build not in memory is watched
        (its progress in :attr:`identifying`), after a check that the messages alone fit
        the context (no identification for a request that cannot be answered)."""
        if self.personas.cached(req.spec):
            return self.personas.get(req.spec)
        self._ids(req.messages)  # the rewrite only adds to them
        spec = req.spec
        status = progress.Identifying(spec.label, [e.trait for e in spec.profile],
                                      spec.method, owner)
        self.building = status
        try:
            with progress.watch(status, self.settings.progress_interval):
                return self.personas.get(spec)
        finally:
            self.building = None
            if status.bars:
                log.info("built %s in %.1f s", spec.label, status.elapsed)

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
            pers, new = self.personality(req, owner=cancel)
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
            st = self.stats  # counted before the answer goes out (a /health after it sees it)
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
            emit(("done", out))
        except Exception as e:  # reported to the client; the server carries on
            self.stats.errors += 1
            if not isinstance(e, PktError):
                log.exception("request failed")
            emit(("error", e))
        finally:
            self.busy = False
            self.lock.release()

    def start(self, req: ChatRequest) -> Job:
        """The request's thread, event queue and cancel flag (call from the event loop)."""
        loop = asyncio.get_running_loop()
        job = Job(asyncio.Queue(), threading.Event())

        def emit(ev):
            try:
                loop.call_soon_threadsafe(job.queue.put_nowait, ev)
            except RuntimeError:  # the loop is gone (server shutting down)
                job.cancel.set()

        self.stats.requests += 1
        threading.Thread(target=self.work, args=(req, emit, job.cancel), daemon=True,
                         name="pkt-serve-request").start()
        return job

    def health(self) -> dict:
        s, st = self.settings, self.stats
        ident = self.identifying
        return {"status": "ok", "model": self.lm.name, "method": s.method,
                "methods": served_methods(), "identify": s.identify, "n_search": s.n_search,
                "search_max_new_tokens": s.search_max_new_tokens,
                "max_tokens": s.max_tokens, "max_tokens_limit": s.max_tokens_limit,
                "busy": self.busy, "waiting": self.lock.waiting,
                "identifying": ident.snapshot() if ident is not None else None,
                "context_length": self.decoder.context_length,
                "requests": st.requests, "completed": st.completed, "cancelled": st.cancelled,
                "errors": st.errors, "completion_tokens": st.completion_tokens,
                "identified": list(self.personas.identified), "last": st.last}
