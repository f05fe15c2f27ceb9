"""A sweep (``python -m pkt.run -m ...``) on any Hydra launcher: its launcher checked before
the first job, and one summary after the last.

Before any job (:func:`check_launcher`): a launcher from hydra-submitit-launcher
(``hydra/launcher=local``, ``hydra/launcher=slurm_gpu``) needs that plugin (the ``slurm``
extra), and a SLURM launcher needs SLURM on this machine (``sbatch`` on PATH); either is one
line ``pkt: error: ...`` and exit status 2, not a traceback after the first job.

A job that fails with a user error does not stop the sweep: it leaves ``error.txt`` (its one
line) in its run dir, as a single run does, and the other jobs go on; with
hydra-submitit-launcher that line would otherwise end in a log file under ``.submitit/``.

After the last job (:func:`finish`) the command writes ``summary.md`` and ``summary.csv``
into the sweep dir: one row per job (number, status ok / failed with the error line,
method, trait, aspect, model, strength, trait score, fluency, perplexity, capability ratios,
seconds, run dir, overrides), the numbers read by :mod:`pkt.report`'s own parser; with the
W&B logger the table also goes into a run of ``job_type=summary`` in the sweep's W&B group
(the group every job's run is in: ``logger.group``, else the sweep dir's name, after
``tag-`` when a tag is set). Every failed job is one line on stderr, ``pkt: error: sweep
job #N (overrides): <its error>``, and the command exits with status 2.

The main process learns where the sweep is from :class:`SweepStart`, a Hydra callback
that the runner adds to a sweep's command line (``hydra.callbacks.pkt_sweep``): Hydra calls
its ``on_multirun_start`` with the sweep's config in the process that launches the jobs,
whichever launcher runs them.
"""

from __future__ import annotations

import csv
import io
import logging
import shutil
from dataclasses import asdict
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from pkt.errors import EXIT, PktError

log = logging.getLogger(__name__)

# the hydra override that registers SweepStart (a hydra.* override: not part of any job's
# overrides, so not of the command that repeats a job)
CALLBACK = f"++hydra.callbacks.pkt_sweep._target_={__name__}.SweepStart"
SUBMITIT = "hydra_plugins.hydra_submitit_launcher"
COLUMNS = ["job", "status", "error"]  # then pkt.report's CSV columns, then "overrides"

# the sweep this process launches (set by SweepStart.on_multirun_start)
STARTED: dict = {}


class SweepStart(Callback):
    """Records the sweep dir, the logger and the tag of the sweep this process launches."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        STARTED.clear()
        STARTED["dir"] = Path(str(config.hydra.sweep.dir)).absolute()
        try:
            node = config.get("logger")
            STARTED["logger"] = OmegaConf.to_container(node, resolve=True) if node else {}
        except Exception:  # an unresolvable logger value: the jobs report it
            STARTED["logger"] = {}
        STARTED["tag"] = config.get("tag")


# ------------------------------------------------------------------ before the first job


def _flag(argv: list[str]) -> bool:
    return bool({"-m", "--multirun"} & set(argv))


def _overrides(argv: list[str]) -> list[str]:
    """The command line's overrides that are not sweeps (as Hydra composes the sweep's own
    config); a bad override is left for Hydra and the validation to report."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, out = OverridesParser.create(), []
    for a in argv:
        if a.startswith("-"):
            continue
        try:
            (o,) = parser.parse_overrides([a])
        except Exception:  # a flag's value (--cfg job), or Hydra's to report
            continue
        if not o.is_sweep_override():
            out.append(a)
    return out


def have_submitit() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(SUBMITIT) is not None
    except (ImportError, ValueError):
        return False


def check_launcher(argv: list[str]) -> bool:
    """Whether ``argv`` launches a sweep (``-m``, or a config that sets ``hydra.mode:
    MULTIRUN``, e.g. ``experiment=compare``); if so, that its launcher can run here. Raises
    PktError (one line) for a submitit launcher without its plugin or SLURM without sbatch."""
    fixed = _overrides(argv)
    keys = {a.lstrip("+~").partition("=")[0] for a in fixed}
    if not _flag(argv) and not keys & {"experiment", "hydra.mode", "hydra/launcher"}:
        return False  # a single run by every config pkt ships: nothing to compose
    from hydra import compose, initialize_config_dir

    from pkt import hydra_setup  # noqa: F401 (pkt's resolvers)
    from pkt.resources import CONF_DIR

    named = [a.partition("=")[2] for a in fixed if a.lstrip("+").startswith("hydra/launcher=")]
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=fixed, return_hydra_config=True)
    except Exception as e:
        if "submitit" in str(e) and not have_submitit():
            raise PktError(f"hydra/launcher={named[-1] if named else '...'} needs the "
                           "hydra-submitit-launcher plugin: pip install -e '.[slurm]' (or pip "
                           "install hydra-submitit-launcher)") from None
        return _flag(argv)  # Hydra and the sweep's validation say what is wrong
    multirun = _flag(argv) or str(cfg.hydra.get("mode")) in ("MULTIRUN", "RunMode.MULTIRUN")
    if not multirun:
        return False
    target = str(cfg.hydra.launcher.get("_target_", ""))
    choice = cfg.hydra.runtime.choices.get("hydra/launcher") or target
    if target.startswith(SUBMITIT) and not have_submitit():
        raise PktError(f"hydra/launcher={choice} needs the hydra-submitit-launcher plugin: "
                       "pip install -e '.[slurm]'")
    if target.endswith(".SlurmLauncher") and shutil.which("sbatch") is None:
        raise PktError(f"hydra/launcher={choice} submits the sweep's jobs to SLURM, but there "
                       "is no SLURM on this machine (no sbatch on PATH): start the sweep on a "
                       "SLURM login node, or run its jobs here with hydra/launcher=local")
    return True


# ------------------------------------------------------------------ after the last job


def _load_yaml(path: Path):
    import yaml

    try:
        return yaml.load(path.read_text(encoding="utf-8"),
                         Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError):
        return None


def _plain(x) -> str | None:
    """A config value as written, unless it is an interpolation (not resolved here)."""
    return None if x is None or (isinstance(x, str) and "${" in x) else str(x)


def _first_line(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return "error.txt is unreadable"
    return lines[0] if lines else "failed (error.txt is empty)"


def job_rows(sweep: Path) -> list[dict]:
    """One row per job dir under ``sweep`` (a folder with ``.hydra/overrides.yaml``), in job
    order: ``ok`` with its metrics, or ``failed`` with its error line."""
    from pkt.records import read_metrics
    from pkt.report import CSV_COLUMNS, _parse, natural_key

    rows = []
    for ov in sorted(sweep.rglob(".hydra/overrides.yaml"), key=natural_key):
        d = ov.parent.parent
        if ".submitit" in d.relative_to(sweep).parts:
            continue
        overrides = _load_yaml(ov)
        overrides = [str(o) for o in overrides] if isinstance(overrides, list) else []
        hyd = _load_yaml(d / ".hydra" / "hydra.yaml") or {}
        num = ((hyd.get("hydra") or {}).get("job") or {}).get("num") if isinstance(hyd, dict) \
            else None
        if not isinstance(num, int):
            head = d.name.split("_", 1)[0]
            num = int(head) if head.isdigit() else None
        row = {c: None for c in COLUMNS + CSV_COLUMNS + ["overrides"]}
        row.update(job=num, run_dir=str(d), overrides=overrides)
        metrics, error = d / "metrics.json", d / "error.txt"
        if metrics.is_file():
            try:
                run = asdict(_parse(read_metrics(metrics), str(d)))
                row.update({c: run[c] for c in CSV_COLUMNS})
                if run.get("profile"):
                    row["trait"] = run["profile"]
            except (OSError, ValueError) as e:
                row["error"] = f"unreadable metrics.json ({e})"
        if error.is_file():
            row["error"] = _first_line(error)
        elif not metrics.is_file():
            row["error"] = "no metrics.json or error.txt: the job did not finish (see its run.log)"
        row["status"] = "failed" if row["error"] else "ok"
        if row["method"] is None:  # a failed job: what it was, from its composed config
            cfg = _load_yaml(d / ".hydra" / "config.yaml") or {}
            if isinstance(cfg, dict):
                m = cfg.get("method") if isinstance(cfg.get("method"), dict) else {}
                name = _plain(m.get("name"))
                variant = _plain(m.get("variant"))
                row["method"] = f"{name}_{variant}" if name and variant else name
                t = cfg.get("trait") if isinstance(cfg.get("trait"), dict) else {}
                prof = cfg.get("profile") if isinstance(cfg.get("profile"), dict) else {}
                if prof.get("traits"):  # a profile run (several traits)
                    row["trait"] = _plain(prof.get("name")) or "profile"
                else:
                    row["trait"], row["aspect"] = _plain(t.get("name")), _plain(cfg.get("aspect"))
                mod = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
                row["model"] = _plain(mod.get("name"))
        rows.append(row)
    return sorted(rows, key=lambda r: (r["job"] is None, r["job"] or 0))


def _f(x, fmt="{:.2f}") -> str:
    from pkt.report import DASH

    return DASH if x is None else fmt.format(x)


def _cell(x) -> str:
    from pkt.report import DASH

    return DASH if x in (None, "") else str(x).replace("|", "\\|").replace("\n", " ")


def render_markdown(sweep: Path, rows: list[dict], group: str | None) -> str:
    n_failed = sum(r["status"] != "ok" for r in rows)
    out = [f"# Sweep summary: {sweep.name}", "",
           f"`{sweep}`: {len(rows)} job(s), {len(rows) - n_failed} ok, {n_failed} failed."
           + (f" W&B group `{group}`." if group else ""), "",
           "Trait score 1–5 (mean over the test questions), fluency (a judge's, when one "
           "scored), ppl (the plain model's perplexity of the answers), MC and ppl ratio "
           "(capability with the intervention / without). The comparison tables and plots: "
           f"`python -m pkt.report {sweep}`.", ""]
    header = ["job", "status", "method", "trait", "aspect", "strength", "trait score",
              "fluency", "ppl", "MC ratio", "ppl ratio", "seconds", "run dir", "error"]
    out += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        try:
            rel = Path(r["run_dir"]).relative_to(sweep)
        except ValueError:
            rel = r["run_dir"]
        cells = [_cell(r["job"]), r["status"], _cell(r["method"]), _cell(r["trait"]),
                 _cell(r["aspect"]), _f(r["strength"], "{:g}"), _f(r["trait_score_mean"]),
                 _f(r["fluency_mean"]), _f(r["ppl_mean"]), _f(r["capability_mc_ratio"]),
                 _f(r["capability_ppl_ratio"]), _f(r["total_seconds"], "{:.0f}"),
                 f"`{rel}`", _cell(r["error"])]
        out.append("| " + " | ".join(cells) + " |")
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        import shlex

        out += ["", "## Failed jobs", "", "Each one repeated alone:", ""]
        out += [f"- #{_cell(r['job'])}: {r['error']}  \n  `python -m pkt.run "
                f"{' '.join(shlex.quote(o) for o in r['overrides'])}`" for r in failed]
    return "\n".join(out) + "\n"


def render_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows([{k: "" if v is None else " ".join(v) if isinstance(v, list) else v
                  for k, v in r.items()} for r in rows])
    return buf.getvalue()


def wandb_group(logger: dict, tag: str | None, sweep: Path) -> str:
    """The W&B group of a sweep's runs, as pkt.run's build_tracker names it."""
    group = logger.get("group") or sweep.name
    return f"{tag}-{group}" if tag else group


def write_summary(sweep: Path, logger: dict | None = None, tag: str | None = None,
                  wandb: bool = True) -> tuple[Path, list[dict]]:
    """``summary.md`` and ``summary.csv`` in ``sweep``; with a W&B logger (and ``wandb``),
    the table in a ``job_type=summary`` run of the sweep's group. Returns (summary.md, rows)."""
    from pkt.artifacts import write_text_atomic

    logger = logger or {}
    rows = job_rows(sweep)
    is_wandb = str(logger.get("_target_", "")).endswith("WandbTracker")
    group = wandb_group(logger, tag, sweep) if is_wandb else None
    md = sweep / "summary.md"
    write_text_atomic(sweep / "summary.csv", render_csv(rows))
    write_text_atomic(md, render_markdown(sweep, rows, group))
    if is_wandb and wandb and rows:
        try:
            from pkt.tracking import WandbTracker

            tracker = WandbTracker(run_dir=sweep, run_config={"sweep_dir": str(sweep)},
                                   name="summary", group=group,
                                   project=logger.get("project", "pkt"),
                                   entity=logger.get("entity"),
                                   mode=logger.get("mode", "offline"), job_type="summary",
                                   tags=logger.get("tags") or [])
            try:
                tracker.log_table("summary", [{**r, "overrides": " ".join(r["overrides"])}
                                              for r in rows])
                tracker.log_summary({"jobs": len(rows),
                                     "failed": sum(r["status"] != "ok" for r in rows)})
            finally:
                tracker.finish()
        except Exception as e:  # the files are written; W&B is a copy
            log.warning("could not log the sweep summary to W&B: %s: %s", type(e).__name__, e)
    return md, rows


def finish(quiet: bool = False) -> int:
    """After the sweep this process launched (nothing if none started): the summary, one
    ``pkt: error:`` line per failed job, and the exit status (2 when a job failed, else 0).
    ``quiet``: the sweep was stopped (Ctrl-C, SIGTERM, a bug's traceback): the files only."""
    from pkt import cli as cmdline

    if not STARTED or not Path(STARTED["dir"]).is_dir():
        return EXIT["ok"]
    sweep = Path(STARTED["dir"])
    try:
        md, rows = write_summary(sweep, STARTED.get("logger"), STARTED.get("tag"),
                                 wandb=not quiet)
    except Exception as e:
        if quiet:
            return EXIT["ok"]
        raise PktError(f"could not write the sweep summary in {sweep}: {e}") from None
    finally:
        STARTED.clear()
    if quiet:
        return EXIT["ok"]
    failed = [r for r in rows if r["status"] != "ok"]
    for r in failed:
        cmdline.say(f"sweep job #{r['job']} ({' '.join(r['overrides'])}): {r['error']}")
    print(f"summary: {md} ({len(rows) - len(failed)} ok, {len(failed)} failed)", flush=True)
    return EXIT["usage"] if failed else EXIT["ok"]
