"""What every pkt command does around its work, once: one-line errors, exit codes, Ctrl-C
and SIGTERM, the pre-flight of a command line.

Used by ``pkt.run``, ``pkt.serve``, ``pkt.annotate``, ``pkt.report``, ``pkt.rescore`` and
the ``pkt`` console script. Exit codes (:data:`pkt.errors.EXIT`): 0 done; 2 a user error
(a bad command line, config value, data file, artifact or endpoint: one line
``pkt: error: ...``); 1 an unexpected failure (a bug: its traceback); 130 interrupted by
Ctrl-C, 143 by SIGTERM (what ``timeout``, ``kill`` and schedulers send), each with one line
saying what was kept. Standard library only at import time.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from pkt.errors import EXIT, PktError
from pkt.resources import CONF_DIR


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be: the same clean-up, exit status 143."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def handle_sigterm() -> None:
    """SIGTERM stops the command the way Ctrl-C does (keeping what Ctrl-C keeps)."""
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _raise_terminated)


def interrupt_code(e: BaseException | None) -> int:
    return EXIT["terminated"] if isinstance(e, Terminated) else EXIT["interrupted"]


def user_error(e: BaseException | None) -> PktError | None:
    """The PktError behind ``e`` (Hydra wraps errors raised inside ``instantiate``)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, PktError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def close_progress_bars() -> None:
    """End every open tqdm bar with its newline, so that the error line is a line of its own."""
    tqdm = sys.modules.get("tqdm")
    if tqdm is None:
        return
    for bar in list(getattr(tqdm.tqdm, "_instances", ())):
        try:
            bar.close()
        except Exception:
            pass


def say(message: str) -> None:
    """The one error line: ``pkt: error: <message>`` on stderr."""
    close_progress_bars()
    print(f"pkt: error: {message}", file=sys.stderr, flush=True)


def fail(message: str, code: int = EXIT["usage"]) -> SystemExit:
    say(message)
    return SystemExit(code)


def guarded(work: Callable[[], int | None], interrupted: str = "interrupted") -> int:
    """``work()`` with pkt's error handling: a PktError (also one wrapped by Hydra) or an
    OSError on the user's files is one line and exit status 2; Ctrl-C / SIGTERM one line
    (``interrupted``) and 130 / 143. Returns the exit status."""
    handle_sigterm()
    try:
        code = work()
    except KeyboardInterrupt as e:
        say(interrupted)
        return interrupt_code(e)
    except OSError as e:
        say(f"{e.strerror or e}: {e.filename or ''}".rstrip(": "))
        return EXIT["usage"]
    except Exception as e:
        err = user_error(e)
        if err is None:
            raise
        say(str(err))
        return EXIT["usage"]
    return EXIT["ok"] if code is None else int(code)


def preflight_or_exit(argv: list[str], check: Callable[[list[str]], None]) -> None:
    """``check(argv)``; a PktError is one line on stderr and exit status 2."""
    try:
        check(argv)
    except PktError as e:
        raise fail(str(e)) from None


def early_interrupt_handler(message: str) -> Callable:
    """A SIGINT handler for the seconds while heavy modules load (nothing to clean up yet)."""

    def handler(signum, frame) -> None:
        os.write(2, f"pkt: error: {message}\n".encode())
        os._exit(EXIT["interrupted"])

    return handler


# -- the pre-flight of a Hydra command line (pkt.run, pkt.serve) ----------------------
def config_groups() -> dict[str, list[str]]:
    out = {}
    for d in sorted(CONF_DIR.iterdir()):
        if d.is_dir() and d.name != "hydra":
            out[d.name] = sorted(p.stem for p in d.glob("*.yaml"))
    return out


# Hydra's own command-line flags: those that take a value, and those that take none
HYDRA_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name",
                     "-cn", "--config-dir", "-cd", "--experimental-rerun", "--shell-completion",
                     "-sc"}
HYDRA_OPTIONAL_VALUE_FLAGS = {"--info", "-i"}
HYDRA_FLAGS = {"--help", "-h", "--hydra-help", "--version", "--resolve", "--run", "-r",
               "--multirun", "-m"} | HYDRA_VALUE_FLAGS | HYDRA_OPTIONAL_VALUE_FLAGS


def check_words(argv: list[str], prog: str, example: str) -> None:
    """Options Hydra does not know (``--trait openness``) and bare words (``trait openness``):
    one line that says how overrides are written, instead of Hydra's parser errors."""
    takes_value = False
    for arg in argv:
        if takes_value:
            takes_value = False
            if not arg.startswith("-"):
                continue
        if arg.startswith("-"):
            flag = arg.partition("=")[0]
            if flag not in HYDRA_FLAGS:
                raise PktError(f"unknown option '{flag}': {prog} takes Hydra overrides written "
                               f"key=value, e.g. {example} ({prog} --help lists the config)")
            takes_value = flag in HYDRA_VALUE_FLAGS | HYDRA_OPTIONAL_VALUE_FLAGS and "=" not in arg
        elif "=" not in arg and not arg.startswith("~"):
            raise PktError(f"'{arg}' is not an override: write key=value, e.g. {example}")


def check_writable(path: Path, what: str = "output folder") -> None:
    """``path`` (or its first existing ancestor) must be a writable directory."""
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir() or not os.access(p, os.W_OK | os.X_OK):
        raise PktError(f"{what} is not writable: {path} ({p} is "
                       f"{'not a directory' if not p.is_dir() else 'read-only'})")
