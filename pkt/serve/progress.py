"""What a personality build is doing while requests wait for it (identification's progress).

Identifying a trait (NPTI's persona answers, ActAdd's and DPN's activations) can take
minutes. pkt reports that work with tqdm bars (one per aspect, e.g. ``persona answers
(high)``), shown only with ``progress=True``. While :func:`watch` is open, every bar the
watching thread opens (or a process it forks: identification answers the two aspects in
two forked workers) also reports its count to an :class:`Identifying` status, whatever
its ``disable`` flag; bars elsewhere are untouched. The server shows that status in
``/health``, as SSE comments to streaming requests, and as a log line every
``serve.progress_interval`` seconds.

The bars are read by wrapping the ``tqdm`` name of the modules that identify (no hook in
them): :func:`install` replaces it with :class:`ReportingBar`, a tqdm subclass that is a
plain tqdm when no watch is open.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import sys
import threading
import time
from datetime import datetime, timezone

from tqdm.auto import tqdm as _tqdm

log = logging.getLogger("pkt.serve")

# the modules whose bars are identification's (persona answers, activations, statistics)
MODULES = ("pkt.neurons.identify", "pkt.neurons.stats", "pkt.methods.actadd",
           "pkt.methods.dpn")
REVEAL_S = 1.0  # a build without a bar counts as an identification after this long

# the open watches by thread (a forked worker keeps its parent's thread id)
_active: dict[int, _Watch] = {}


class Identifying:
    """One personality build: its traits and method, when it started, its bars."""

    def __init__(self, label: str, traits: list[str], method: str, owner=None):
        self.label, self.traits, self.method, self.owner = label, traits, method, owner
        self.started = time.time()
        self.t0 = time.monotonic()
        self.bars: dict[str, dict] = {}  # "trait|desc" -> {trait, stage, done, total}
        self.last: str | None = None  # the bar that moved last
        self.note: str | None = None  # a method's log line since then (strength=auto: ...)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    @property
    def visible(self) -> bool:
        """Whether this build is an identification (a bar moved, or it takes a while)."""
        return bool(self.bars) or self.elapsed >= REVEAL_S

    def update(self, key: str, trait: str | None, stage: str, done: int, total) -> None:
        if trait:  # the data's title ("Openness") as the request named it
            trait = next((t for t in self.traits if t.lower() == trait.lower()), trait.lower())
        self.bars[key] = {"trait": trait, "stage": stage, "done": int(done),
                          "total": None if total is None else int(total)}
        self.last, self.note = key, None

    @property
    def trait(self) -> str:
        bar = self.bars.get(self.last) if self.last else None
        return (bar and bar["trait"]) or ", ".join(self.traits) or self.label

    def step(self) -> str | None:
        """What it does now: ``high: 12/227 answers`` (both aspects when they run side by
        side: ``high: 12/227, low: 10/227 answers``), or a method's last log line."""
        if self.note:
            return self.note
        bar = self.bars.get(self.last) if self.last else None
        if bar is None:
            return None
        family = bar["stage"].partition(" (")[0]
        parts = []
        for b in list(self.bars.values()):
            head, _, aspect = b["stage"].partition(" (")
            if b["trait"] == bar["trait"] and head == family:
                count = f"{b['done']}/{b['total']}" if b["total"] else str(b["done"])
                parts.append(f"{aspect.rstrip(')')}: {count}" if aspect else count)
        if family == "persona answers":
            return f"{', '.join(parts)} answers"
        return f"{family} {', '.join(parts)}"

    def text(self) -> str:
        """``openness (high: 12/227 answers)``; without a bar yet, ``openness``."""
        step = self.step()
        return f"{self.trait} ({step})" if step else self.trait

    def snapshot(self) -> dict:
        bar = self.bars.get(self.last) if self.last else None
        return {"trait": self.trait, "traits": self.traits, "method": self.method,
                "personality": self.label,
                "started": datetime.fromtimestamp(self.started, timezone.utc)
                .isoformat(timespec="seconds"),
                "elapsed": round(self.elapsed, 1), "progress": self.step(),
                "bar": dict(bar) if bar else None}


class _Notes(logging.Handler):
    """The methods' log lines from the watching thread (strength=auto's probes) as notes."""

    def __init__(self, status: Identifying, thread: int):
        super().__init__(logging.INFO)
        self.status, self.thread = status, thread

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread and record.name.startswith("pkt.methods"):
            with contextlib.suppress(Exception):
                self.status.note = record.getMessage()[:200]


class _Watch:
    def __init__(self, status: Identifying, interval: float):
        self.status, self.interval = status, interval
        self.pid, self.thread = os.getpid(), threading.get_ident()
        self.rfd, self.wfd = os.pipe()
        os.set_blocking(self.wfd, False)
        self.stop = threading.Event()

    def report(self, key: str, trait, stage: str, done: int, total) -> None:
        if os.getpid() == self.pid:
            self.status.update(key, trait, stage, done, total)
            return
        line = json.dumps([key, trait, stage, done, total]) + "\n"  # a forked worker
        with contextlib.suppress(OSError):  # a full pipe drops the line
            os.write(self.wfd, line.encode()[:4000])

    def run(self) -> None:
        """Read the workers' reports; log a progress line every ``interval`` seconds."""
        buf, last_log = b"", time.monotonic()
        while not self.stop.is_set():
            ready, _, _ = select.select([self.rfd], [], [], 0.2)
            if ready:
                buf += os.read(self.rfd, 65536)
                *lines, buf = buf.split(b"\n")
                for raw in lines:
                    with contextlib.suppress(ValueError, TypeError):
                        self.status.update(*json.loads(raw))
            if time.monotonic() - last_log >= self.interval and self.status.visible:
                last_log = time.monotonic()
                log.info("identifying %s for %s: %.0f s", self.status.text(),
                         self.status.label, self.status.elapsed)


@contextlib.contextmanager
def watch(status: Identifying, interval: float = 2.0):
    """While open, identification's bars in this thread (and its forked workers) report to
    ``status``, and a line is logged every ``interval`` seconds."""
    install()
    w = _Watch(status, interval)
    reader = threading.Thread(target=w.run, daemon=True, name="pkt-serve-progress")
    notes = _Notes(status, w.thread)
    logging.getLogger("pkt").addHandler(notes)
    _active[w.thread] = w
    reader.start()
    try:
        yield status
    finally:
        _active.pop(w.thread, None)
        logging.getLogger("pkt").removeHandler(notes)
        w.stop.set()
        with contextlib.suppress(OSError):
            os.write(w.wfd, b"\n")  # wake the reader now
        reader.join(2)
        os.close(w.wfd)
        os.close(w.rfd)


def _trait_from_stack(depth: int = 8) -> str | None:
    """The trait of the data the bar walks (a ``bench`` a few frames up), if any."""
    f = sys._getframe(2)
    for _ in range(depth):
        if f is None:
            break
        trait = getattr(f.f_locals.get("bench"), "trait", None)
        if isinstance(trait, str):
            return trait
        f = f.f_back
    return None


class ReportingBar(_tqdm):
    """tqdm, plus: while a :func:`watch` is open in this thread, its count goes to it."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._pkt = None
        self._pkt_iterating = False
        w = _active.get(threading.get_ident()) if _active else None
        if w is None:
            return
        iterable = args[0] if args else kw.get("iterable")
        total = kw.get("total", args[2] if len(args) > 2 else None)
        if total is None and iterable is not None:
            with contextlib.suppress(TypeError):
                total = len(iterable)
        stage = str(kw.get("desc") or (args[1] if len(args) > 1 else "") or "working")
        trait = _trait_from_stack()
        self._pkt = [w, f"{trait}|{stage}", trait, stage, int(kw.get("initial") or 0), total]
        self._pkt_send(0)

    def _pkt_send(self, n) -> None:
        if self._pkt is not None:
            p = self._pkt
            p[4] += n
            p[0].report(p[1], p[2], p[3], p[4], p[5])

    def update(self, n=1):
        out = super().update(n)
        if not self._pkt_iterating:
            self._pkt_send(n or 0)
        return out

    def __iter__(self):
        self._pkt_iterating = True
        try:
            for obj in super().__iter__():
                yield obj
                self._pkt_send(1)
        finally:
            self._pkt_iterating = False


def install() -> None:
    """Wrap the ``tqdm`` of the identifying modules (once; idempotent)."""
    for name in MODULES:
        mod = sys.modules.get(name)
        if mod is None:
            with contextlib.suppress(ImportError):
                mod = __import__(name, fromlist=["tqdm"])
        if mod is not None and getattr(mod, "tqdm", None) is _tqdm:
            mod.tqdm = ReportingBar
