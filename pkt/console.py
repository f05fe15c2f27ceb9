"""``pkt``: the command installed with pkt (``[project.scripts]``), one word per entry point.

``pkt run [overrides]`` is ``python -m pkt.run [overrides]``; likewise ``pkt serve``,
``pkt annotate``, ``pkt report`` and ``pkt rescore``. Standard library only until a command
is chosen: its module (torch, Hydra) loads then.
"""

from __future__ import annotations

import os
import signal
import sys
from importlib import import_module

# command -> (module, entry point, summary). Hydra's entry points (run, serve: cli) read
# sys.argv and exit themselves; the others (main) take the arguments, return an exit status.
COMMANDS = {
    "run": ("pkt.run", "cli", "run one experiment, or a sweep with -m (Hydra overrides)"),
    "serve": ("pkt.serve.__main__", "cli", "chat page and OpenAI-compatible API (Hydra overrides)"),
    "annotate": ("pkt.annotate", "main", "blind annotation packets: make one, score the ratings"),
    "report": ("pkt.report", "main", "tables and plots over run or sweep folders"),
    "rescore": ("pkt.eval.rescore", "main", "score finished runs again with the trait scorer"),
}

USAGE = "usage: pkt <command> [arguments]   (pkt <command> --help: the command's own help)"


def help_text() -> str:
    width = max(map(len, COMMANDS))
    rows = [f"  {name:<{width}}  {summary}" for name, (_, _, summary) in COMMANDS.items()]
    return "\n".join([USAGE, "", "Neuron-based personality trait induction (NPTI) for LLMs.",
                      "", "commands:", *rows, "",
                      "e.g. pkt run method=neuron trait=agreeableness aspect=low"])


def _interrupted_while_loading(signum, frame) -> None:
    """Ctrl-C while the command's modules load: one line, exit status 130 (as pkt.run)."""
    os.write(2, b"pkt: error: interrupted (nothing was kept)\n")
    os._exit(130)


def _load(module: str, name: str):
    """The entry point, imported with Ctrl-C as one line meanwhile (if SIGINT is Python's)."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return getattr(import_module(module), name)  # ignored (a background job): leave it
    signal.signal(signal.SIGINT, _interrupted_while_loading)
    try:
        return getattr(import_module(module), name)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(help_text())
        return 0
    if args[0] == "--version":
        from pkt import __version__

        print(f"pkt {__version__}")
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"pkt: error: unknown command '{command}' (choose from: {', '.join(COMMANDS)})",
              file=sys.stderr)
        return 2
    module, name, _ = COMMANDS[command]
    entry = _load(module, name)
    # Hydra and argparse name the program after sys.argv[0] and read the rest
    sys.argv = [f"pkt {command}", *rest]
    if name == "cli":
        entry()
        return 0
    return entry(rest)


if __name__ == "__main__":
    raise SystemExit(main())
