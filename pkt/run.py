"""The runner: ``python -m pkt.run method=neuron trait=agreeableness [overrides]``.

compose -> validate (pkt.validation: config values, judge endpoint) -> bench -> model -> method.prepare() -> method.respond(test questions) ->
evaluators -> generations.jsonl + metrics.json + run_info.json (+ a W&B run).

Ctrl-C anywhere is one line, ``pkt: error: interrupted ...`` (saying what was kept), and exit
status 130; the W&B run is still finished.
"""
# ruff: noqa: E402 (the SIGINT handler for start-up goes before the heavy imports)

from __future__ import annotations

import os
import signal
import sys

NOT_KEPT = "interrupted (nothing of this run was kept as a result)"


def _interrupted_while_starting(signum, frame) -> None:
    """Ctrl-C while the modules below load (seconds): nothing exists yet to clean up."""
    os.write(2, f"pkt: error: {NOT_KEPT}\n".encode())
    os._exit(130)  # pkt.errors.EXIT["interrupted"], not imported yet


# installed before the heavy imports (torch, transformers) so that an early Ctrl-C is one
# line too; cli() hands SIGINT back to Python. A SIGINT that is ignored (a background job
# of a non-interactive shell) stays ignored.
if __name__ == "__main__" and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _interrupted_while_starting)

import logging
import platform
import random
import subprocess
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from pkt import cli as cmdline
from pkt import (
    hydra_setup,  # noqa: F401 (pkt's config resolvers)
    profiles,
)
from pkt import records as records_io
from pkt.artifacts import write_json_atomic
from pkt.errors import EXIT, PktError
from pkt.generation import GenConfig
from pkt.methods import Outputs, registry
from pkt.records import make_record
from pkt.resources import CONF_DIR, REPO_DIR
from pkt.traits import Trait
from pkt.validation import validate

log = logging.getLogger("pkt.run")

ASPECTS = ("high", "low")
PACKAGES = ("pkt", "torch", "transformers", "hydra-core", "omegaconf", "peft", "lightning",
            "wandb", "accelerate", "safetensors", "gguf", "sentence-transformers", "numpy")


def preflight(argv: list[str]) -> None:
    """Reject unknown config choices (trait=nonsense, ...) with one clear line, before Hydra."""
    cmdline.check_words(argv, "python -m pkt.run", "trait=openness")
    groups = cmdline.config_groups()
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, _, value = arg.partition("=")
        key = key.lstrip("+~")
        if "(" in value or not value:
            continue  # sweep functions (range, glob, choice...) are checked by Hydra
        values = [v.strip() for v in value.split(",")]
        if key in groups and key != "experiment" or key == "experiment" and value != "null":
            for v in values:
                if v not in groups[key] and v != "null":
                    raise PktError(f"unknown {key} '{v}' (choose from: {', '.join(groups[key])})")
        if key == "aspect":
            for v in values:
                if v not in ASPECTS:
                    raise PktError(f"unknown aspect '{v}' (choose from: high, low)")
        if key in ("paths.output_dir", "hydra.run.dir", "hydra.sweep.dir") and "$" not in value:
            cmdline.check_writable(Path(value))


@contextmanager
def timed(timings: dict, name: str):
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(time.perf_counter() - t0, 3)


def versions() -> dict:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    try:
        if REPO_DIR is None:  # an installed pkt: its version is in versions()
            return None
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_DIR, capture_output=True,
                           text=True, timeout=5)
        return r.stdout.strip() if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def build_tracker(cfg: DictConfig, run_dir: Path, label: str, what: str | None = None):
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    group = cfg.logger.get("group") or (Path(hc.sweep.dir).name if multirun else None)
    if group and cfg.get("tag"):
        group = f"{cfg.tag}-{group}"
    name = f"{label}-{what or f'{cfg.trait.name}-{cfg.aspect}'}-{cfg.model.name}"
    if multirun:
        name = f"{hc.job.num}-{name}"
    resolved = OmegaConf.to_container(cfg, resolve=True)
    return instantiate(cfg.logger, run_dir=run_dir, run_config=resolved, name=name, group=group,
                       _recursive_=False, _convert_="all")


def scored_traits(cfg: DictConfig, profile, multi: bool) -> list[str]:
    """Whose test questions a run answers: ``score_traits=own`` (the induced trait or the
    profile's traits), ``all`` (those first, then the other Big Five), ``auto`` (own for a
    single-trait run, all for a profile)."""
    mode = cfg.get("score_traits", "auto") or "auto"
    if mode not in ("auto", "own", "all"):
        raise PktError(f"unknown score_traits '{mode}' (choose from: auto, own, all)")
    own = [e.trait for e in profile]
    if mode == "own" or (mode == "auto" and not multi):
        return own
    return own + [t for t in profiles.TRAIT_NAMES if t not in own]


def check_contexts(lm, cfg: DictConfig, method, benches: dict, asked: list, profile) -> None:
    """Before any work: every test prompt plus gen.max_new_tokens, and (for methods that
    answer the search split) every role-play prompt plus search_gen.max_new_tokens, fit the
    model's context; a question that does not is one line naming its file and line."""
    from pkt.generation import chat_prompt, check_context

    tok = lm.tokenizer
    check_context(lm, [(f"{benches[t].files.get('test', t)}:{r['_line']}",
                        chat_prompt(tok, method.rewrite(r["question"], i)))
                       for i, (t, r) in enumerate(asked)], int(cfg.gen.max_new_tokens), "gen")
    if registry.accepts(cfg.method.name, "search_gen") and "search_gen" in cfg:
        from pkt.neurons.identify import roleplay_prompts

        for e in profile:
            b = benches[e.trait]
            for aspect in ASPECTS:
                texts = roleplay_prompts(lm, b, aspect, int(cfg.seed))
                check_context(lm, [(f"{b.files.get('search', e.trait)}:{r['_line']}", x)
                                   for r, x in zip(b.search, texts)],
                              int(cfg.search_gen.max_new_tokens), "search_gen")


def run(cfg: DictConfig) -> dict:
    timings: dict = {}
    t_start = time.perf_counter()
    if cfg.aspect not in ASPECTS:
        raise PktError(f"unknown aspect '{cfg.aspect}' (choose from: high, low)")
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise PktError(f"output folder is not writable: {run_dir} ({e.strerror})") from None
    # every value checkable without data or model (and the judge endpoint), before any work
    validate(cfg)
    cmdline.check_writable(Path(cfg.paths.cache_dir), "cache folder (paths.cache_dir, PKT_CACHE)")
    profile = profiles.from_run_config(cfg)
    multi = profiles.is_profile_run(cfg)
    scored = scored_traits(cfg, profile, multi)
    seed_everything(int(cfg.seed))
    label = cfg.method.name + (f"_{cfg.method.variant}" if "variant" in cfg.method else "")
    tracker = build_tracker(cfg, run_dir, label, profiles.slug(profile.label) if multi else None)
    ok = stopped = False
    try:
        # every object is built before the expensive work: a bad eval.* fails in seconds
        evaluator = instantiate(cfg.eval, _convert_="all")
        with timed(timings, "load_data"):
            benches = {t: instantiate(cfg.data, trait=t)
                       for t in dict.fromkeys([*(e.trait for e in profile), *scored])}
        with timed(timings, "load_model"):
            lm = instantiate(cfg.model).load()

        params = {k: v for k, v in OmegaConf.to_container(cfg.method, resolve=True).items()
                  if k != "name" and not str(k).startswith("_")}
        method = registry.compose(
            lm, profile, cfg.method.name, lambda t: benches[t],
            trait_for=lambda t: Trait.from_cfg(cfg.trait) if t == cfg.trait.name and not multi
            else Trait.load(t),
            seed=int(cfg.seed), gen=GenConfig.from_cfg(cfg.gen),
            cache_dir=Path(cfg.paths.cache_dir), progress=True, params=params,
            as_profile=multi)
        ctx = method.ctx
        if multi:
            log.info("method %s, profile %s, model %s", method.label, profile.label, lm.name)
        else:
            log.info("method %s, trait %s (%s), model %s", method.label, ctx.bench.trait,
                     cfg.aspect, lm.name)
        asked = [(t, r) for t in scored for r in benches[t].test]
        questions = [r["question"] for _, r in asked]
        check_contexts(lm, cfg, method, benches, asked, profile)
        with timed(timings, "prepare"):
            prepared = method.prepare(Outputs(run_dir, tracker))
        log.info("%d test questions (%s)", len(questions), ", ".join(scored))
        with timed(timings, "respond"):
            gens = method.respond(questions)
        params = method.describe()

        def aspect_of(t: str) -> str | None:
            return profile.aspect_of(t) if multi else (cfg.aspect if t == cfg.trait.name else None)

        records = [make_record(r["_line"], q, g.text, len(g.response_ids), method.label, t,
                               aspect_of(t), lm.name, params, profile.label if multi else None)
                   for (t, r), q, g in zip(asked, questions, gens)]

        def write_generations():
            records_io.write_generations(run_dir, records)

        metrics = {
            "method": method.label,
            "trait": None if multi else cfg.trait.name, "aspect": None if multi else cfg.aspect,
            **({"profile": {**profile.to_dict(), "label": profile.label}} if multi else {}),
            "model": lm.name, "seed": int(cfg.seed), "n": len(records),
            "mean_response_tokens": sum(r["n_tokens"] for r in records) / max(len(records), 1),
            "gen_tokens_per_s": round(ctx.gen_stats.tokens_per_s, 2),
            "params": params, **prepared.metrics,
        }
        write_json_atomic(run_dir / "run_info.json", {
            "command": repeat_command(),
            "overrides": list(HydraConfig.get().overrides.task),
            "data_hash": {t: b.data_hash for t, b in benches.items()} if multi
            else benches[cfg.trait.name].data_hash,
            "data_files": {t: b.files for t, b in benches.items()} if multi
            else benches[cfg.trait.name].files,
            "model_fingerprint": lm.fingerprint, "artifacts": prepared.artifacts,
            "seed": int(cfg.seed), "git_commit": git_commit(), "versions": versions(),
            "resolved_config": ".hydra/config.yaml",
        })
        try:
            with timed(timings, "evaluate"):
                metrics.update(evaluator.evaluate(ctx, method, records, gens))
        except BaseException as e:
            metrics["evaluation_error"] = ("interrupted" if isinstance(e, KeyboardInterrupt)
                                           else str(cmdline.user_error(e) or type(e).__name__))
            metrics["timings"] = timings
            write_generations()  # kept, with whatever scores were attached so far
            records_io.write_metrics(run_dir, metrics)
            raise
        timings["total"] = round(time.perf_counter() - t_start, 3)
        metrics["timings"] = timings
        write_generations()
        records_io.write_metrics(run_dir, metrics)
        tracker.log_table("generations", [{k: v for k, v in r.items() if k != "params"}
                                          for r in records])
        tracker.log_summary(metrics)
        log.info("wrote %d generations and metrics to %s", len(records), run_dir)
        ok = True
        if not HydraConfig.get().mode == RunMode.MULTIRUN:  # a sweep summarises at its end
            from pkt.summary import run_summary

            wandb_dir = run_dir / "wandb" if getattr(tracker, "run", None) is not None else None
            print("\n".join(run_summary(metrics, run_dir, wandb_dir)), flush=True)
        return metrics
    except BaseException as e:
        stopped = isinstance(e, KeyboardInterrupt) or is_interrupt(cmdline.user_error(e))
        raise
    finally:
        finish_tracker(tracker, 0 if ok else 130 if stopped else 1)


def repeat_command() -> str:
    """The command that repeats this job: ``python -m pkt.run`` and the job's own overrides
    (a sweep job's composed values, whichever launcher started it; not ``sys.argv``, which
    is the whole sweep's, or submitit's ``.submitit/%j`` folder)."""
    import shlex

    hc = HydraConfig.get()
    name = hc.job.get("config_name")
    words = ["python", "-m", "pkt.run", *([f"--config-name={name}"] if name and name != "config"
                                           else []), *hc.overrides.task]
    return " ".join(shlex.quote(str(w)) for w in words)


def finish_tracker(tracker, exit_code: int) -> None:
    """Finish the W&B run; when the run already failed (or was interrupted), a failure to
    finish is a warning, so that the line the user sees is about the first error."""
    if exit_code == 0:
        tracker.finish(exit_code=0)
        return
    try:
        tracker.finish(exit_code=exit_code)
    except Exception as e:
        log.warning("could not finish the tracker run: %s: %s", type(e).__name__,
                    str(e).strip().splitlines()[0] if str(e).strip() else "")


def is_interrupt(err: PktError | None) -> bool:
    """A PktError that stands for Ctrl-C or SIGTERM (identification's, which says what it
    kept)."""
    if err is None:
        return False
    from pkt.neurons.identify import Interrupted

    return isinstance(err, Interrupted)


def what_was_kept(run_dir: Path | None) -> str:
    """The ``interrupted ...`` message for a Ctrl-C in the runner: which results are on disk."""
    if run_dir is not None and (run_dir / "generations.jsonl").is_file():
        if (run_dir / "metrics.json").is_file():
            return (f"interrupted while scoring; the generations are kept in {run_dir} "
                    f"(metrics.json has evaluation_error: interrupted)")
        return f"interrupted; the generations are kept in {run_dir} (no metrics)"
    return NOT_KEPT


def write_error(run_dir: Path | None, message: str) -> None:
    """A failed run leaves its log and ``error.txt`` (the one line), never metrics.json."""
    if run_dir is None or not run_dir.is_dir():
        return
    try:
        (run_dir / "error.txt").write_text(message + "\n", encoding="utf-8")
    except OSError:
        pass


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig):
    try:
        run_dir = Path(HydraConfig.get().runtime.output_dir)
    except Exception:
        run_dir = None
    try:
        run(cfg)
    except KeyboardInterrupt as e:
        message = what_was_kept(run_dir)
        write_error(run_dir, message)
        raise cmdline.fail(message, cmdline.interrupt_code(e)) from None
    except Exception as e:
        err = cmdline.user_error(e)
        if err is None and isinstance(e, OSError):  # the machine's: a full disk, permissions
            err = PktError(f"{e.strerror or e}: {e.filename or ''}".rstrip(": "))
        sweep_job = HydraConfig.get().mode == RunMode.MULTIRUN
        if err is None:  # a bug: Hydra's traceback, and its first line in error.txt
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            write_error(run_dir, f"unexpected {type(e).__name__}" + (f": {first}" if first else ""))
            if sweep_job:
                log.exception("unexpected error")  # into this job's run.log
            raise
        write_error(run_dir, str(err))
        if is_interrupt(err):
            raise cmdline.fail(str(err), getattr(err, "code", EXIT["interrupted"])) from None
        if sweep_job:  # the other jobs go on; the line is said at the sweep's end (pkt.sweep)
            log.error("%s", err)
            return None
        raise cmdline.fail(str(err)) from None


def launch(multirun: bool) -> None:
    """``main()``; after a sweep, its summary (pkt.sweep: summary.md/.csv in the sweep dir,
    one ``pkt: error:`` line per failed job and exit status 2 when a job failed)."""
    from pkt import sweep

    if not multirun:
        main()
        return
    sys.argv.append(sweep.CALLBACK)  # tells pkt.sweep where the sweep's dir is
    try:
        main()
    except BaseException:
        sweep.finish(quiet=True)  # the summary of what ran; the line the user sees is the stop's
        raise
    code = cmdline.guarded(sweep.finish)
    if code:
        raise SystemExit(code)


def sweep_launcher(argv: list[str]) -> bool:
    """Whether ``argv`` is a sweep; its launcher must run here (SLURM without sbatch, a
    missing plugin: one line and exit status 2, before any job)."""
    from pkt.sweep import check_launcher

    try:
        return check_launcher(argv)
    except PktError as e:
        raise cmdline.fail(str(e)) from None


def cli() -> None:
    if signal.getsignal(signal.SIGINT) is _interrupted_while_starting:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    cmdline.handle_sigterm()
    try:
        cmdline.preflight_or_exit(sys.argv[1:], preflight)
        multirun = sweep_launcher(sys.argv[1:])
        from pkt.validation import check_composes, validate_sweep

        if {"-m", "--multirun"} & set(sys.argv[1:]):
            cmdline.preflight_or_exit(sys.argv[1:], validate_sweep)  # every job, first
        elif not {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i",
                  "--shell-completion", "-sc"} & {a.partition("=")[0] for a in sys.argv[1:]}:
            cmdline.preflight_or_exit(sys.argv[1:], check_composes)
        launch(multirun)
    except KeyboardInterrupt as e:  # outside a job: composing the config, Hydra's own work
        raise cmdline.fail(NOT_KEPT, cmdline.interrupt_code(e)) from None


if __name__ == "__main__":
    cli()
