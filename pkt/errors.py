"""pkt's user-facing errors (a leaf module: it imports nothing from pkt).

A :class:`PktError` is reported by every entry point as one line, ``pkt: error: ...``,
never as a traceback. Exit codes (the same for ``pkt.run``, ``pkt.serve``, ``pkt.annotate``,
``pkt.report``, ``pkt.rescore`` and the ``pkt`` console script): see :data:`EXIT`.
"""

from __future__ import annotations

# exit codes of every pkt command
EXIT = {
    "ok": 0,
    "error": 1,  # a run that started failed (bad data, a model that will not load, ...)
    "usage": 2,  # a bad command line or config value, found before any work started
    "interrupted": 130,  # Ctrl-C or SIGTERM
}


class PktError(Exception):
    """A user-facing error: reported as one line, never as a traceback."""


class UsageError(PktError):
    """A bad command line or config value, found before any work (exit status 2)."""
