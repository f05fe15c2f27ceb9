"""Progress bars that move while the work runs, not only between batches.

A batch of answers takes tens of seconds on a CPU, and a capability probe as long, so a
bar that moves once per batch or per probe stands still that long. Two kinds of bar here:

* :class:`AnswerBar`, over answers generated: it moves at each decode step by the answers'
  worth of work done (a row's share is its tokens over ``max_new_tokens``; a row that stops
  early counts whole), so its percentage and ETA move every step. The count it shows
  (``12/48 answers``) is of finished answers only, and the tokens per second so far.
  Within a batch it moves in steps of ``1/STEPS`` answer and stops short of the batch's
  end until :meth:`AnswerBar.end`: its count (tqdm's ``n``) is exact at every batch end.
* :func:`item_bar`, a plain bar over teacher-forced items (capability probes, perplexity),
  ticked per batch.

Both are tqdm bars shown only with ``progress`` (``disable=not progress``), redrawn at most
every ``MININTERVAL`` seconds.
"""

from __future__ import annotations

import time

from tqdm.auto import tqdm

STEPS = 64  # within a batch the bar moves in 1/64 answer: sums of these are exact floats
MININTERVAL = 0.5  # seconds between two redraws
# the count shown is the finished answers (the postfix), not tqdm's fractional n
FORMAT = "{l_bar}{bar}| [{elapsed}<{remaining}{postfix}]"


def item_bar(total: int | None, desc: str, progress: bool, unit: str = "item", factory=None):
    """A bar over ``total`` items, ticked with ``update(n)`` after each batch; drawn once
    its work has taken ``MININTERVAL`` (nothing for quick work, or a bar closed unused),
    or by ``reset(total)`` (a probe starting on it)."""
    return (factory or tqdm)(total=total, desc=desc, unit=unit, disable=not progress,
                             mininterval=MININTERVAL, delay=MININTERVAL)


class AnswerBar:
    """A bar over ``total`` answers of at most ``max_new_tokens`` tokens, moved at each
    decode step (:meth:`step`, the callback of :func:`pkt.generation.decode_batch`).

    ``factory``: the tqdm class to build it with (a module's own ``tqdm`` name, which a
    server may wrap to watch it). Per batch: :meth:`start`, then :meth:`step` per decode
    step, then :meth:`end` (the bar's count lands on the answers finished, exactly).
    """

    def __init__(self, total: int, desc: str, progress: bool, max_new_tokens: int,
                 initial: int = 0, factory=None, **kw):
        self.total, self.done, self.max_new_tokens = total, initial, max(1, max_new_tokens)
        self.tokens, self.t0 = 0, time.perf_counter()
        self._rows = self._slots = self._q = self._k = self._alive = self._batch_tokens = 0
        self.bar = (factory or tqdm)(total=total, initial=initial, desc=desc, unit="q",
                                     disable=not progress, bar_format=FORMAT,
                                     mininterval=MININTERVAL, miniters=0,
                                     postfix=self._text(), **kw)

    def _text(self) -> str:
        dt = time.perf_counter() - self.t0
        rate = f", {self.tokens / dt:.0f} tok/s" if self.tokens and dt > 0 else ""
        return f"{self.done}/{self.total} answers{rate}"

    def _postfix(self) -> None:
        self.bar.set_postfix_str(self._text(), refresh=False)

    def start(self, rows: int) -> None:
        """A batch of ``rows`` answers begins."""
        self._rows, self._alive = rows, rows
        self._slots = self._q = self._k = self._batch_tokens = 0

    def step(self, new_tokens: int, alive: int) -> None:
        """One decode step: ``new_tokens`` tokens generated (one per row still generating),
        ``alive`` rows go on generating after it."""
        self._k += 1
        self._batch_tokens += new_tokens
        self.tokens += new_tokens
        # each token fills a slot of its row; a row that stopped fills its remaining slots
        self._slots += new_tokens + (self._alive - alive) * (self.max_new_tokens - self._k)
        self._alive = alive
        q = min(self._slots * STEPS // self.max_new_tokens, self._rows * STEPS - 1)
        if q > self._q:
            self._postfix()
            self.bar.update((q - self._q) / STEPS)
            self._q = q

    def end(self, tokens: int | None = None) -> None:
        """The batch is done (and, for a caller that saves it, saved): the count moves to
        its end, drawn now; ``tokens``: the batch's answer tokens (the steps count them
        before an answer is trimmed)."""
        if tokens is not None:
            self.tokens += tokens - self._batch_tokens
        self.done += self._rows
        self._postfix()
        if not self.bar.update((self._rows * STEPS - self._q) / STEPS):
            self.bar.refresh()  # every count of finished answers is drawn
        self._rows = self._q = self._slots = self._batch_tokens = 0

    def close(self) -> None:
        self.bar.close()
