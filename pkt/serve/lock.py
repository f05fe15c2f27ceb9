"""The build lock (one personality build at a time): granted in arrival order, and a
waiter may leave the queue."""

from __future__ import annotations

import threading
import time
from collections import deque


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
