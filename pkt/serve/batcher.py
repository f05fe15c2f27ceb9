"""Continuous batching: one decoding batch, a different personality on every row.

One scheduler thread owns the serving model. Between two decode steps it admits waiting
requests (their prompts in one forward pass, each from its longest cached prefix,
:mod:`pkt.serve.prefill`, then copied into the batch's cache, :mod:`pkt.serve.rowcache`),
samples every row's next token with the row's own settings (temperature, top-p, seed, stop
strings, ``max_tokens``, repetition penalty, ``ignore_eos``), hands out each row's new text,
retires the rows that finished, were cancelled or hit a stop string, and runs one forward
pass for all the others. Every row carries its personality's edit (:mod:`pkt.rows`): NPTI
tables, ActAdd or DPN-LE vectors, a profile's composition, or nothing (the plain model and
prompting, whose difference is the prompt); the edits of all rows are applied in the same
forward pass.

A row decodes exactly as it would alone: the same prefill, the same positions, its own
edit at its own decode step, the same sampling code on its own logits. The batch changes
only the shapes of the matrix products, which can change float rounding (tested equal
token for token on the tiny model in float64; see the serving docs for float32).
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from pkt.generation import eos_ids, repetition_penalty
from pkt.kvcache import sliding_window
from pkt.rows import RowEdit, RowTables
from pkt.serve.engine import Completion, Sampling, held_back, sample_next, stop_cut
from pkt.serve.prefill import prefill
from pkt.serve.rowcache import PromptCache, RowCache

log = logging.getLogger("pkt.serve")


class QueueFull(Exception):
    """More requests wait for the batch than ``max_waiting``."""


@dataclass
class Row:
    """One request in (or waiting for) the batch."""

    ids: list[int]
    sampling: Sampling
    edit: RowEdit | None
    emit: Callable  # ("delta", text), then ("done", Completion) or ("error", exc)
    cancel: threading.Event = field(default_factory=threading.Event)
    out: Completion = field(default_factory=Completion)
    label: str = "none"
    on_admit: Callable | None = None  # called when the row leaves the queue
    on_done: Callable | None = None  # called with the row before ("done", ...) is emitted
    # the scheduler's state
    gen: torch.Generator | None = None
    sent: int = 0  # characters handed out
    pos: int = 0  # tokens in the cache (the next input's position)
    t_submit: float = field(default_factory=time.perf_counter)
    t_first: float | None = None
    t_done: float | None = None


class Batcher:
    """The scheduler: :meth:`submit` a :class:`Row`; events go out through its ``emit``."""

    def __init__(self, lm, max_rows: int = 16, max_waiting: int = 64,
                 prompt_cache_tokens: int = 0):
        self.model, self.tokenizer = lm.model, lm.tokenizer
        self.eos = eos_ids(self.model, self.tokenizer)
        self.device = next(self.model.parameters()).device
        vocab = self.model.get_output_embeddings().weight.shape[0]
        self._eos_cols = torch.tensor(sorted(e for e in self.eos if e < vocab), dtype=torch.long,
                                      device=self.device)
        self.window = sliding_window(self.model.config)
        self.max_rows, self.max_waiting = int(max_rows), int(max_waiting)
        # prompts' keys and values for newcomers that start the same way (not with a
        # sliding attention window, whose cache this module does not model)
        self.prompts = PromptCache(prompt_cache_tokens) if prompt_cache_tokens > 0 and \
            self.window is None else None
        self.cv = threading.Condition()
        self.waiting: deque[Row] = deque()
        self.rows: list[Row] = []
        self.model_lock = threading.Lock()  # held while the scheduler uses the model
        self.stopping = False
        self.steps = 0  # decode forwards so far
        self.prefills = 0  # prefill forwards so far (newcomers that arrive together share one)
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else 0)
        self.recent: deque[tuple[float, int]] = deque()  # (time, tokens) of the last seconds
        self.finished: deque[Row] = deque(maxlen=512)
        self._reset()
        self.thread = threading.Thread(target=self._run, daemon=True, name="pkt-serve-batch")
        self.thread.start()

    def _reset(self) -> None:
        self.cache = RowCache(self.model)
        self.rows, self.logits, self.seen, self.tables = [], None, None, None

    # -- the queue ----------------------------------------------------------------------
    def submit(self, row: Row) -> None:
        with self.cv:
            if len(self.waiting) >= self.max_waiting:
                raise QueueFull(f"{len(self.waiting)} requests are waiting for the batch")
            row.t_submit = time.perf_counter()
            self.waiting.append(row)
            self.cv.notify_all()

    def stop(self) -> None:
        with self.cv:
            self.stopping = True
            self.cv.notify_all()
        self.thread.join(10)

    def _fits(self, row: Row) -> bool:
        """A model with sliding-window attention shares the batch only while no row's
        slots can leave its window (the window counts slots, padding included)."""
        if self.window is None or not self.rows:
            return True
        need = max(self.cache.length, len(row.ids)) + max(
            r.sampling.max_tokens for r in [*self.rows, row])
        return need <= self.window

    def _take(self) -> list[Row] | None:
        with self.cv:
            while not self.rows and not self.waiting and not self.stopping:
                self.cv.wait()
            if self.stopping:
                return None
            new, room = [], self.max_rows - len(self.rows)
            for r in [r for r in self.waiting if r.cancel.is_set()]:  # gone before their turn
                self.waiting.remove(r)
                new.append(r)
            while self.waiting and room > 0 and self._fits(self.waiting[0]):
                new.append(self.waiting.popleft())
                room -= 1
            return new

    def _run(self) -> None:
        while True:
            new = self._take()
            if new is None:
                return
            with self.model_lock, torch.no_grad():
                try:
                    self._iteration(new)
                except Exception as e:  # every row of the batch gets the error; serving goes on
                    log.exception("decoding batch failed")
                    for r in {id(r): r for r in [*self.rows, *new]}.values():
                        r.emit(("error", e))
                    self._reset()

    # -- one step -----------------------------------------------------------------------
    def _iteration(self, new: list[Row]) -> None:
        live = []
        for r in new:
            if r.on_admit is not None:
                r.on_admit()
            if r.cancel.is_set():
                r.out.finish_reason = "cancelled"
                self._done(r)
            else:
                live.append(r)
        if live:
            self._prefill(live)
        if not self.rows:
            return
        tokens = self._sample()
        keep = [b for b, (r, t) in enumerate(zip(self.rows, tokens)) if self._advance(r, t)]
        if len(keep) < len(self.rows):
            self.cache.keep(keep)
            self.rows = [self.rows[b] for b in keep]
            self.seen, self.tables = self.seen[keep], None
            tokens = [tokens[b] for b in keep]
        if not self.rows:
            self._reset()
            return
        self._decode(tokens)

    def _prefill(self, new: list[Row]) -> None:
        """The newcomers' prompts in one forward pass (one each with a sliding attention
        window), then their rows join the batch (:func:`pkt.serve.prefill.prefill`)."""
        for r in new:
            r.out.prompt_tokens = len(r.ids)
            if r.sampling.temperature > 0:
                r.gen = torch.Generator(device=self.device)
                r.gen.manual_seed(int(r.sampling.seed if r.sampling.seed is not None
                                      else secrets.randbits(63)) % (2**63))
        groups = [new] if self.window is None else [[r] for r in new]
        for group in groups:
            logits, caches, passes = prefill(self.model, [r.ids for r in group],
                                             [r.edit for r in group], self.prompts, self.pad_id)
            self.prefills += passes
            vocab = logits.shape[-1]
            seen = torch.zeros(len(group), vocab, dtype=torch.bool, device=self.device)
            for b, (r, one) in enumerate(zip(group, caches)):
                self.cache.admit(one)
                seen[b, torch.tensor([t for t in r.ids if t < vocab], dtype=torch.long,
                                     device=self.device)] = True
                r.pos = len(r.ids)
                self.rows.append(r)
            self.seen = seen if self.seen is None else torch.cat([self.seen, seen])
            self.logits = logits if self.logits is None else torch.cat([self.logits, logits])
        self.tables = None

    def _sample(self) -> list[int]:
        """Every row's next token from its logits: its repetition penalty, ``ignore_eos``,
        then argmax or a draw from its own generator (the single-request code per row)."""
        rows, scores = self.rows, self.logits.float()
        pens = [r.sampling.repetition_penalty for r in rows]
        for pen in sorted(set(pens)):
            idx = [b for b, p in enumerate(pens) if p == pen]
            if len(idx) == len(rows):
                scores = repetition_penalty(scores, self.seen, pen)
            else:
                scores[idx] = repetition_penalty(scores[idx], self.seen[idx], pen)
        ignore = [b for b, r in enumerate(rows) if r.sampling.ignore_eos]
        if ignore and self._eos_cols.numel():
            scores[torch.tensor(ignore, device=self.device)[:, None], self._eos_cols[None, :]] = -math.inf
        tokens = scores.argmax(-1).tolist()
        for b, r in enumerate(rows):
            if r.sampling.temperature > 0:
                tokens[b] = int(sample_next(scores[b : b + 1], r.sampling, r.gen))
        return tokens

    def _advance(self, r: Row, t: int) -> bool:
        """Row ``r`` took token ``t``: its text out, and whether it goes on decoding."""
        s, out = r.sampling, r.out
        now = time.perf_counter()
        if r.t_first is None:
            r.t_first = now
        out.token_ids.append(t)
        self.recent.append((now, 1))
        text = self.tokenizer.decode([i for i in out.token_ids if i not in self.eos],
                                     skip_special_tokens=True)
        cut = stop_cut(text, s.stop) if s.stop else None
        if cut is not None:
            out.text, out.finish_reason = text[:cut], "stop"
            if cut > r.sent:
                r.emit(("delta", text[r.sent : cut]))
            r.sent = cut
            self._done(r)
            return False
        ready = len(text) - held_back(text, s.stop)
        if ready > r.sent:
            r.emit(("delta", text[r.sent : ready]))
            r.sent = ready
        out.text = text
        if t in self.eos:
            out.finish_reason = "stop"
        elif len(out.token_ids) >= s.max_tokens:
            out.finish_reason = "length"
        elif r.cancel.is_set():
            out.finish_reason = "cancelled"
        if out.finish_reason is not None:
            if len(out.text) > r.sent:
                r.emit(("delta", out.text[r.sent :]))
            self._done(r)
            return False
        return True

    def _done(self, r: Row) -> None:
        r.t_done = time.perf_counter()
        self.finished.append(r)
        if r.on_done is not None:
            r.on_done(r)
        r.emit(("done", r.out))

    def _decode(self, tokens: list[int]) -> None:
        """One forward pass of every row's latest token, each with its own edit."""
        rows, dev = self.rows, self.device
        nxt = torch.tensor(tokens, dtype=torch.long, device=dev)
        self.seen[torch.arange(len(rows), device=dev), nxt] = True
        if self.tables is None:  # the rows changed: their edits stacked again
            horizon = max(r.sampling.max_tokens for r in rows) + 1
            self.tables = RowTables(self.model, [r.edit for r in rows], horizon)
        self.tables.at([r.out.steps + int(r.edit is not None and r.edit.include_prompt)
                        for r in rows])
        mask = self.cache.grow()
        pos = torch.tensor([[r.pos] for r in rows], dtype=torch.long, device=dev)
        with self.tables.hooks():
            self.logits = self.model(input_ids=nxt.unsqueeze(1), attention_mask=mask,
                                     position_ids=pos, cache=self.cache.cache,
                                     use_cache=True).logits[:, -1]
        for r in rows:
            r.pos += 1
            r.out.steps += 1
        self.steps += 1

    # -- figures ------------------------------------------------------------------------
    def figures(self, window_s: float = 10.0) -> dict:
        """Rows decoding, requests waiting, output tokens/s over the last ``window_s``
        seconds, and latency / time-to-first-token percentiles of recent requests."""
        now = time.perf_counter()
        while self.recent and now - self.recent[0][0] > window_s:
            self.recent.popleft()
        done = [r for r in list(self.finished) if r.t_first is not None]
        lat = sorted(r.t_done - r.t_submit for r in done)
        ttft = sorted(r.t_first - r.t_submit for r in done)
        rows = sum(r.out.finish_reason is None for r in list(self.rows))  # not yet answered
        return {"rows": rows, "max_rows": self.max_rows,
                "waiting": len(self.waiting), "max_waiting": self.max_waiting,
                "decode_steps": self.steps, "prefill_passes": self.prefills,
                "tokens_per_s": round(sum(n for _t, n in list(self.recent)) / window_s, 2),
                "latency_s": _percentiles(lat), "ttft_s": _percentiles(ttft),
                "recent_requests": len(done),
                "prompt_cache": None if self.prompts is None else {
                    "entries": len(self.prompts.entries), "tokens": self.prompts.tokens,
                    "max_tokens": self.prompts.max_tokens, "hits": self.prompts.hits,
                    "reused_tokens": self.prompts.reused}}


def _percentiles(xs: list[float]) -> dict:
    if not xs:
        return {"p50": None, "p95": None}
    pick = lambda q: xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]  # noqa: E731
    return {"p50": round(pick(0.5), 4), "p95": round(pick(0.95), 4)}
