"""Fault injection for crash-consistency tests (a leaf module: standard library only).

``fault_point(name)`` is a no-op unless the environment variable ``PKT_FAULT`` names this
point (``name`` or ``name@N`` for its N-th passage, 1-based): then the process dies at once,
as ``kill -9`` would, without cleanup. Tests set it to stop a run between two writes.
"""

from __future__ import annotations

import os
import signal

_seen: dict[str, int] = {}


def fault_point(name: str) -> None:
    want = os.environ.get("PKT_FAULT")
    if not want:
        return
    point, _, nth = want.partition("@")
    if point != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
