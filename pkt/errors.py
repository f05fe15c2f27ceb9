"""pkt's user-facing errors (a leaf module: it imports nothing from pkt).

A :class:`PktError` is reported by every entry point as one line, ``pkt: error: ...``,
never as a traceback. Exit codes (the same for ``pkt.run``, ``pkt.serve``, ``pkt.annotate``,
``pkt.report``, ``pkt.rescore`` and the ``pkt`` console script): see :data:`EXIT`.
"""

from __future__ import annotations

# exit codes of every pkt command (pkt.cli applies them)
EXIT = {
    "ok": 0,
    "bug": 1,  # an unexpected failure: Python's traceback
    "usage": 2,  # a user error: bad command line, config value, data, artifact, endpoint
    "interrupted": 130,  # Ctrl-C
    "terminated": 143,  # SIGTERM (timeout, kill, a scheduler)
}


class PktError(Exception):
    """A user-facing error: reported as one line, never as a traceback."""


