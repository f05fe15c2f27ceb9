"""Blind annotation: ``python -m pkt.annotate make|score``.

``make RUN_DIR [RUN_DIR ...] --out DIR [--per-condition N] [--seed S] [--force]`` samples
answers per (method, trait, aspect) condition into a shuffled packet with opaque ids
(``packet.jsonl``, ``packet.csv``), a rubric for annotators (``rubric.md``), and a key that
must stay with the experimenter (``key.json``), plus ``manifest.json`` and ``README.md``.

``score DIR RATINGS [RATINGS ...] [--names A B ...] [--skip-invalid]`` validates one
ratings file per annotator and writes ``annotation.md``, ``annotation.json`` and
``annotation.png`` into DIR: condition means, high − low separation, fluency, agreement
between annotators and with the runs' own trait scores.

A user error is one line ``pkt: error: ...`` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pkt.annotation.packet import load_key, make_packet
from pkt.annotation.ratings import Ratings, check, read_ratings
from pkt.errors import PktError


def annotator_names(files: list[str], names: list[str] | None) -> list[str]:
    """``--names`` (one per file, distinct) or the files' stems, made distinct."""
    if names is not None:
        if len(names) != len(files):
            raise PktError(f"--names gives {len(names)} name(s) for {len(files)} ratings file(s)")
        if len(set(names)) != len(names):
            raise PktError("--names must be distinct")
        return list(names)
    out: list[str] = []
    for f in files:
        stem, name, k = Path(f).stem, Path(f).stem, 2
        while name in out:
            name, k = f"{stem}-{k}", k + 1
        out.append(name)
    return out


def score_packet(packet_dir: str | Path, files: list[str | Path], names: list[str] | None = None,
                 skip_invalid: bool = False, warn=None) -> dict:
    """Validate the ratings files against the packet's key, write the outputs; the figures."""
    from pkt.annotation.summary import build_figures, write_outputs

    if not files:
        raise PktError("no ratings files given")
    key = load_key(packet_dir)
    annotators: list[Ratings] = []
    warnings: list[str] = []
    for f, name in zip(files, annotator_names([str(f) for f in files], names)):
        r = read_ratings(f, key, name=name)
        warnings += check(r, skip_invalid)
        annotators.append(r)
    for w in warnings:
        (warn or _warn)(w)
    fig = build_figures(packet_dir, key, annotators, warnings)
    fig["outputs"] = {k: str(p) for k, p in write_outputs(packet_dir, fig).items()}
    return fig


def _warn(message: str) -> None:
    print(f"pkt: warning: {message}", file=sys.stderr)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pkt.annotate",
                                 description="Blind human or LLM annotation of pkt runs.")
    sub = ap.add_subparsers(dest="command", required=True)
    mk = sub.add_parser("make", help="write a blind packet, rubric and key from run directories")
    mk.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                    help="python -m pkt.run run directories, or sweep folders holding them")
    mk.add_argument("--out", required=True, type=Path, help="packet folder to write")
    mk.add_argument("--per-condition", type=int, default=20, metavar="N",
                    help="answers drawn per (method, trait, aspect) (default 20)")
    mk.add_argument("--seed", type=int, default=0, help="sampling and shuffling seed (default 0)")
    mk.add_argument("--force", action="store_true", help="replace a packet already in --out")
    mk.add_argument("--traits", nargs="+", metavar="TRAIT",
                    help="only answers to these traits' questions (e.g. of profile runs)")
    sc = sub.add_parser("score", help="validate ratings and write annotation.md/.json/.png")
    sc.add_argument("packet_dir", metavar="DIR", help="a folder written by 'make'")
    sc.add_argument("ratings", nargs="+", metavar="RATINGS",
                    help="one file per annotator: JSON lines or CSV (id,trait,fluency)")
    sc.add_argument("--names", nargs="+", metavar="NAME", help="annotator names, one per file")
    sc.add_argument("--skip-invalid", action="store_true",
                    help="leave invalid lines out (with a warning) instead of failing")
    return ap


def main(argv: list[str] | None = None) -> int:
    from pkt import cli as cmdline

    args = parser().parse_args(argv)

    def work() -> None:
        if args.command == "make":
            m = make_packet(args.run_dirs, args.out, per_condition=args.per_condition,
                            seed=args.seed, force=args.force, traits=args.traits)
            print(f"wrote {m['n_items']} items from {m['n_conditions']} conditions to {args.out} "
                  f"(give annotators packet.csv or packet.jsonl and rubric.md, never key.json)")
        else:
            fig = score_packet(args.packet_dir, args.ratings, args.names, args.skip_invalid)
            print(fig["outputs"]["md"])

    return cmdline.guarded(work)


def cli() -> None:
    raise SystemExit(main())


if __name__ == "__main__":
    cli()
