"""NPTI step 1: persona role-play generation, then streamed activation statistics."""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from pkt import prompts
from pkt.artifacts import ArtifactStore, key_hash
from pkt.bars import AnswerBar
from pkt.cli import interrupt_code
from pkt.dataset import Bench
from pkt.errors import PktError
from pkt.faults import fault_point
from pkt.generation import GenConfig, GenStats, chat_prompt, generate, identification_dtype
from pkt.hooks import Scope
from pkt.models import LoadedModel
from pkt.neurons.sites import shape
from pkt.neurons.stats import ActivationStats, recording

log = logging.getLogger(__name__)

ASPECTS = ("high", "low")
STATS_VERSION = 3  # 2: bins closed on the right; 3: recorded during generation (pkt engine)


class NotIdentified(PktError):
    """Neuron statistics were asked for from the cache only, and none are cached."""


def stats_key(lm: LoadedModel, bench: Bench, seed: int, gen: GenConfig) -> dict:
    return {
        "stage": "npti-statistics",
        "version": STATS_VERSION,
        "model": lm.name,
        "model_fingerprint": lm.fingerprint,
        "trait": bench.trait,
        "data_hash": bench.data_hash,
        "n_search": len(bench.search),
        "search_ids": [int(r["_line"]) for r in bench.search],
        "seed": seed,
        "max_new_tokens": gen.max_new_tokens,
        "repetition_penalty": gen.repetition_penalty,
        "dtype": str(identification_dtype(lm.model, gen.dtype)).removeprefix("torch."),
        "prompt": prompts.ROLEPLAY,
    }


# where NPTI's statistics are read (method.source): the persona answers' generated tokens
# (the paper), or the last token of each role-play prompt (nothing generated; DPN-LE's place)
SOURCES = ("answers", "prompts")


def prompt_stats_key(lm: LoadedModel, bench: Bench, seed: int) -> dict:
    """The cache key of :func:`prompt_statistics` (``source=prompts``)."""
    return {
        "stage": "npti-statistics", "version": STATS_VERSION, "source": "prompts",
        "position": "last", "model": lm.name, "model_fingerprint": lm.fingerprint,
        "trait": bench.trait, "data_hash": bench.data_hash, "n_search": len(bench.search),
        "search_ids": [int(r["_line"]) for r in bench.search], "seed": seed,
        "dtype": str(next(lm.model.parameters()).dtype).removeprefix("torch."),
        "prompt": prompts.ROLEPLAY,
    }


@torch.no_grad()
def prompt_statistics(lm: LoadedModel, bench: Bench, seed: int, batch_size: int = 8,
                      progress: bool = True) -> dict:
    """NPTI's statistics (``P(a > 0)``, p95, moments per neuron at ``mlp.act``) over the
    *last token of each role-play prompt* instead of the answers' tokens: one position per
    (persona, question) pair and aspect, the position that produces the first answer token,
    with the model as loaded; nothing is generated (``responses`` is empty)."""
    from pkt.hooks import position_ids

    n_layers, width = shape(lm.model)
    device = next(lm.model.parameters()).device
    out: dict = {"responses": []}
    for aspect in ASPECTS:
        texts = roleplay_prompts(lm, bench, aspect, seed)
        lengths = [len(x) for x in lm.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        order = [texts[i] for i in sorted(range(len(texts)), key=lambda i: (lengths[i], i))]
        stats = ActivationStats(n_layers, width, device=device, moments=True)
        scope = Scope.marked()
        with recording(lm.model, stats, scope, count_tokens=True):
            for s in tqdm(range(0, len(order), batch_size), desc=f"prompt activations ({aspect})",
                          disable=not progress):
                enc = lm.tokenizer(order[s : s + batch_size], return_tensors="pt",
                                   padding=True, add_special_tokens=False)
                ids, attn = enc["input_ids"].to(device), enc["attention_mask"].to(device)
                last = (attn * torch.arange(attn.shape[1], device=device)).argmax(-1)
                mask = torch.zeros(ids.shape, dtype=torch.bool, device=device)
                mask[torch.arange(ids.shape[0], device=device), last] = True
                scope.mark(mask)
                lm.model(input_ids=ids, attention_mask=attn, position_ids=position_ids(attn),
                         use_cache=False)
        out[f"{aspect}.prob"] = stats.prob().cpu()
        out[f"{aspect}.p95"] = stats.percentile(0.95).cpu()
        out[f"{aspect}.counts"] = stats.counts.cpu()
        out[f"{aspect}.tokens"] = stats.tokens
        out[f"{aspect}.mean"], out[f"{aspect}.var"] = (x.cpu() for x in stats.mean_var())
    return out


def roleplay_prompts(lm: LoadedModel, bench: Bench, aspect: str, seed: int) -> list[str]:
    return [chat_prompt(lm.tokenizer, prompts.roleplay(bench.persona_for(aspect, i, seed),
                                                       r["question"]))
            for i, r in enumerate(bench.search)]


CHUNK_BATCHES = 2  # persona-answer batches per checkpoint


class Interrupted(PktError):
    """Identification stopped by the user (Ctrl-C) or SIGTERM; the chunks done are kept.
    ``code``: the exit status it stands for (130 or 143)."""

    def __init__(self, message: str, code: int = 130):
        super().__init__(message)
        self.code = code


def _checkpoint_dir(store: ArtifactStore, key: dict) -> Path:
    return store.root / "partial" / key_hash(key)


CHECKPOINT_VERSION = 2  # one file per aspect (version 1 was two files, written in turn)


def _checkpoint_file(ck: Path, aspect: str) -> Path:
    return ck / f"{aspect}.ckpt.safetensors"


def _read_checkpoint(ck: Path, aspect: str) -> tuple[dict, dict] | None:
    """(tensors, metadata) of one aspect's checkpoint file, or None when there is none."""
    f = _checkpoint_file(ck, aspect)
    if not f.is_file():
        return None
    with safe_open(str(f), framework="pt") as h:
        meta = json.loads(h.metadata()["pkt"])
        tensors = {k: h.get_tensor(k) for k in h.keys()}
    return tensors, meta


def checkpoint_problem(t: dict, meta: dict, stats: ActivationStats) -> str | None:
    """Why a checkpoint cannot be the statistics of its answers (None: consistent). Every
    recorded token falls in exactly one bin of every neuron, so each neuron's bins add up
    to the token count; the answers it lists account for the same tokens."""
    hist = t.get("hist")
    if hist is None or tuple(hist.shape) != tuple(stats.hist.shape):
        return f"histogram shape {None if hist is None else tuple(hist.shape)}"
    tokens = int(meta["tokens"])
    per_neuron = hist.to(torch.int64).view(stats.n_layers, stats.width, -1).sum(-1)
    if tokens < 0 or not bool((per_neuron == tokens).all()):
        return f"bins do not add up to its {tokens} tokens"
    counted = sum(len(d["response_ids"]) for d in meta["done"])
    if counted != tokens:
        return f"its answers hold {counted} tokens, its histogram {tokens}"
    return None


def _load_checkpoint(ck: Path, key: dict, aspect: str, stats: ActivationStats,
                     batch_size: int) -> list[dict]:
    """Restore one aspect's histogram and answers from ``ck``; returns the answers done.

    The checkpoint is one file (histogram, sums and the answers it covers, written
    atomically) and is checked before use: one that is unreadable or inconsistent is a
    warning and is not used (identification starts that aspect again). A checkpoint made
    with another batch size is not used either (its batches, hence its float rounding,
    would differ from the rest of the run's).
    """
    try:
        got = _read_checkpoint(ck, aspect)
        if got is None:
            return []
        t, meta = got
        if meta.get("version") != CHECKPOINT_VERSION or \
                meta.get("key") != json.loads(json.dumps(key, default=str)) or \
                meta.get("batch_size") != batch_size:
            log.info("not resuming from %s: made for another key or batch size", ck)
            return []
        bad = checkpoint_problem(t, meta, stats)
        if bad:
            log.warning("not resuming from the %s checkpoint in %s: %s; answering it again",
                        aspect, ck, bad)
            return []
        stats.hist.copy_(t["hist"].to(stats.hist.device, torch.int64).view_as(stats.hist))
        stats.sum.copy_(t["sum"])
        stats.sumsq.copy_(t["sumsq"])
        stats.tokens = int(meta["tokens"])
        return list(meta["done"])
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, json.JSONDecodeError,
            SafetensorError) as e:
        log.warning("ignoring an unreadable identification checkpoint in %s (%s)", ck,
                    type(e).__name__)
        stats.hist.zero_()
        stats.sum.zero_()
        stats.sumsq.zero_()
        stats.tokens = 0
        return []


def _save_checkpoint(ck: Path, key: dict, aspect: str, stats: ActivationStats,
                     done: list[dict], batch_size: int) -> None:
    """The histogram, sums and the answers they cover in ONE file, replaced atomically: a
    process killed at any point leaves the previous checkpoint or this one, never a mix."""
    ck.mkdir(parents=True, exist_ok=True)
    f = _checkpoint_file(ck, aspect)
    tmp = f.with_name(f".{f.name}.{os.getpid()}.tmp")
    meta = {"version": CHECKPOINT_VERSION, "key": key, "batch_size": batch_size,
            "tokens": stats.tokens, "done": done}
    # counts per bin stay far below 2**31 for any realistic search split
    save_file({"hist": stats.hist.to(torch.int32).cpu(), "sum": stats.sum.cpu(),
               "sumsq": stats.sumsq.cpu()}, str(tmp),
              metadata={"pkt": json.dumps(meta, default=str, ensure_ascii=False)})
    fault_point("checkpoint.written")
    os.replace(tmp, f)


def _answer_aspect(lm: LoadedModel, model, bench: Bench, aspect: str, seed: int,
                   gen: GenConfig, progress: bool, gen_stats: GenStats | None,
                   checkpoint: Path | None, key: dict | None, position: int = 0,
                   quiet: bool = False) -> tuple[ActivationStats, dict[int, dict]]:
    """One aspect's persona answers, recorded into a fresh histogram (resumed from
    ``checkpoint`` when it holds part of them); returns the histogram and the answers."""
    n_layers, width = shape(lm.model)
    device = next(lm.model.parameters()).device
    texts = roleplay_prompts(lm, bench, aspect, seed)
    ids = [lm.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    order = sorted(range(len(texts)), key=lambda i: ids[i])  # the engine's own order
    stats = ActivationStats(n_layers, width, device=device, moments=True)
    done = _load_checkpoint(checkpoint, key, aspect, stats, gen.batch_size) if checkpoint else []
    answers: dict[int, dict] = {d["i"]: d for d in done}
    if answers and not quiet:
        log.info("resuming identification (%s): %d of %d persona answers kept", aspect,
                 len(answers), len(texts))
    chunk = max(1, CHUNK_BATCHES * gen.batch_size)
    todo = [i for i in order if i not in answers]
    # moves at every decode step (this module's tqdm: a server may wrap it to watch it)
    bar = AnswerBar(len(texts), f"persona answers ({aspect})", progress and bool(todo),
                    gen.max_new_tokens, initial=len(answers), factory=tqdm, position=position)
    scope = Scope.marked()
    saved = len(answers)  # in the checkpoint on disk
    try:
        for s in range(0, len(todo), chunk):
            part = todo[s : s + chunk]
            # one generate() per batch, so the bar moves every batch: ``part`` is in the
            # engine's order already, so these are the batches one call would make
            subs = [part[b : b + gen.batch_size] for b in range(0, len(part), gen.batch_size)]
            for k, sub in enumerate(subs):
                bar.start(len(sub))
                with recording(model, stats, scope, count_tokens=True):
                    gens = generate(model, lm.tokenizer, [texts[i] for i in sub], gen,
                                    progress=False, stats=gen_stats, scope=scope,
                                    on_step=bar.step)
                for i, g in zip(sub, gens):
                    answers[i] = {"i": i, "text": g.text, "response_ids": g.response_ids}
                n_tokens = sum(len(g.response_ids) for g in gens)
                if k < len(subs) - 1:
                    bar.end(n_tokens)
            if checkpoint is not None:
                _save_checkpoint(checkpoint, key, aspect, stats,
                                 [answers[i] for i in order if i in answers], gen.batch_size)
                saved = len(answers)
            bar.end(n_tokens)  # after the save: an answer the bar counts is kept
    except KeyboardInterrupt as e:
        bar.close()
        raise Interrupted(
            f"interrupted: kept {saved if checkpoint else 0} of {len(texts)} persona answers "
            f"({aspect}) "
            + (f"in {checkpoint}; run the same command again to resume" if checkpoint
               else "(no checkpoint folder: nothing kept)"), interrupt_code(e)) from None
    bar.close()
    return stats, answers


def resolve_workers(workers, device) -> int:
    """Processes that answer the two aspects side by side: ``auto`` is 2 on a CPU with at
    least two cores (one core each: at this model size torch's threads barely help, two
    processes answer about twice as fast), 1 elsewhere (a GPU, one core)."""
    if workers == "auto":
        return 2 if torch.device(device).type == "cpu" and (os.cpu_count() or 1) >= 2 else 1
    return max(1, min(int(workers), len(ASPECTS)))


def die_with_parent(parent: int) -> None:
    """This (forked) process ends when ``parent`` does, even by ``kill -9``: the kernel's
    parent-death signal on Linux, else a thread that watches the parent's pid."""
    import signal

    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, signal.SIGKILL, 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
            raise OSError
    except (OSError, AttributeError):
        import threading
        import time

        def watch():
            while os.getppid() == parent:
                time.sleep(0.5)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent:  # the parent died before the signal was set
        os._exit(1)


def _aspect_worker(conn, threads: int, parent: int, *args) -> None:
    """A forked worker: one aspect's answers into the shared checkpoint folder; it reports
    through ``conn`` and never prints a traceback (the parent reports). It dies with its
    parent; SIGTERM stops it like Ctrl-C (its finished chunks are kept)."""
    import signal

    die_with_parent(parent)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    torch.set_num_threads(threads)
    gen_stats = GenStats()
    try:
        _answer_aspect(*args[:7], gen_stats, *args[7:])
        conn.send(("ok", gen_stats.tokens, gen_stats.seconds))
    except (Interrupted, KeyboardInterrupt):
        conn.send(("interrupted", gen_stats.tokens, gen_stats.seconds))
    except BaseException as e:  # noqa: BLE001 - reported by the parent, in one line
        conn.send(("error", f"{type(e).__name__}: {e}" if not isinstance(e, PktError) else str(e)))
    finally:
        conn.close()


def _answer_in_workers(lm: LoadedModel, model, bench: Bench, seed: int, gen: GenConfig,
                       progress: bool, gen_stats: GenStats | None, checkpoint: Path,
                       key: dict) -> None:
    """Both aspects' answers in two forked processes (one aspect each), written to
    ``checkpoint`` chunk by chunk as the one-process route does; the caller then reads the
    finished checkpoint, so both routes give the same statistics from the same answers."""
    import multiprocessing as mp
    import signal

    ctx = mp.get_context("fork")
    threads = max(1, torch.get_num_threads() // len(ASPECTS))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # no fork warning from tokenizers
    tqdm.get_lock()  # the workers' bars share the parent's lock (one draws at a time)
    procs = []
    for k, aspect in enumerate(ASPECTS):
        recv, send = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_aspect_worker, daemon=True,
                        args=(send, threads, os.getpid(), lm, model, bench, aspect, seed, gen,
                              progress, checkpoint, key, k))
        p.start()
        send.close()
        procs.append((aspect, p, recv))
    results = {}
    stopped_by = 130
    try:
        for aspect, p, recv in procs:
            try:
                results[aspect] = recv.recv()
            except EOFError:  # died without a word (killed, out of memory)
                p.join()
                results[aspect] = ("error", f"worker process exited with code {p.exitcode}")
            p.join()
    except KeyboardInterrupt as e:
        stopped_by = interrupt_code(e)
        for _a, p, _r in procs:
            if p.is_alive():
                os.kill(p.pid, signal.SIGINT)  # each keeps its finished chunks
        for _a, p, _r in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
        results = {a: ("interrupted",) for a in ASPECTS}
    for _a, _p, recv in procs:
        recv.close()
    if gen_stats is not None:
        for r in results.values():
            if r[0] in ("ok", "interrupted") and len(r) == 3:
                gen_stats.tokens += r[1]
                gen_stats.seconds += r[2]
    bad = [(a, r) for a, r in results.items() if r[0] == "error"]
    if bad:
        raise PktError(f"identification failed ({bad[0][0]}): {bad[0][1][1]}")
    if any(r[0] == "interrupted" for r in results.values()):
        kept = []
        for aspect in ASPECTS:
            try:
                got = _read_checkpoint(checkpoint, aspect)
                n_done = len(got[1]["done"]) if got else 0
            except (OSError, ValueError, KeyError, SafetensorError):
                n_done = 0
            kept.append(f"{n_done} of {len(bench.search)} persona answers ({aspect})")
        raise Interrupted(f"interrupted: kept {' and '.join(kept)} in {checkpoint}; "
                          f"run the same command again to resume", stopped_by)


def compute_statistics(lm: LoadedModel, bench: Bench, seed: int, gen: GenConfig,
                       progress: bool = True, gen_stats: GenStats | None = None,
                       checkpoint: Path | None = None, key: dict | None = None) -> dict:
    """Generate persona answers for both aspects and gather P(a > 0) and p95 per neuron.

    The activations are recorded while the answers are generated: at each forward pass the
    positions that produce a generated token (the last prompt position, then every decode
    step of a row that is still generating) go into the streaming histogram, the same
    values a teacher-forced pass over prompt + answer would see (npti.md), without that
    second pass. Work goes in chunks of ``CHUNK_BATCHES`` batches of the prompts in the
    engine's order; with ``checkpoint`` each finished chunk is saved there (histogram and
    answers), and a later call with the same key resumes after the last saved chunk, with
    the same result as an uninterrupted run (integer counts add up exactly, and the
    batches are the same). With ``checkpoint`` and ``gen.workers`` > 1 (or ``auto`` on a
    multi-core CPU) the two aspects are answered in two forked processes side by side.
    """
    out: dict = {"responses": []}
    device = next(lm.model.parameters()).device
    model = lm.model
    dtype = identification_dtype(model, gen.dtype)
    if dtype != next(model.parameters()).dtype:  # a copy in that precision (search_gen.dtype)
        model = copy.deepcopy(model).to(dtype)
    parallel = checkpoint is not None and resolve_workers(gen.workers, device) > 1
    if parallel:
        _answer_in_workers(lm, model, bench, seed, gen, progress, gen_stats, checkpoint, key)
    for aspect in ASPECTS:
        stats, answers = _answer_aspect(lm, model, bench, aspect, seed, gen, progress,
                                        gen_stats, checkpoint, key, quiet=parallel)
        out[f"{aspect}.prob"] = stats.prob().cpu()
        out[f"{aspect}.p95"] = stats.percentile(0.95).cpu()
        out[f"{aspect}.counts"] = stats.counts.cpu()
        out[f"{aspect}.tokens"] = stats.tokens
        out[f"{aspect}.mean"], out[f"{aspect}.var"] = (x.cpu() for x in stats.mean_var())
        for i, r in enumerate(bench.search):
            a = answers[i]
            out["responses"].append({
                "aspect": aspect, "question": r["question"],
                "persona": bench.persona_for(aspect, i, seed), "response": a["text"],
                "n_tokens": len(a["response_ids"]),
                # the generated ids (DPN-LE's method.source=answers reads its statistics
                # over exactly these tokens)
                "response_ids": [int(t) for t in a["response_ids"]],
            })
    return out


def load_or_compute(store: ArtifactStore, lm: LoadedModel, bench: Bench, seed: int,
                    gen: GenConfig, recompute: bool = False, progress: bool = True,
                    gen_stats: GenStats | None = None,
                    compute: bool = True, source: str = "answers") -> tuple[dict, Path, bool]:
    """Statistics for both aspects from the cache, or computed and cached. Returns (stats, dir, hit).

    ``compute=False``: the cache only; :class:`NotIdentified` when nothing is cached.
    ``source="prompts"``: :func:`prompt_statistics` (last prompt token, nothing generated;
    ``gen.batch_size`` prompts per forward) under its own key.
    """
    if source not in SOURCES:
        raise PktError(f"unknown method.source '{source}' (choose from: {', '.join(SOURCES)})")
    key = stats_key(lm, bench, seed, gen) if source == "answers" else \
        prompt_stats_key(lm, bench, seed)
    got = None if recompute else _cached_statistics(store, key, lm)
    if got is not None:
        return (*got, True)
    if not compute:
        raise NotIdentified(f"{bench.trait} is not identified yet for {lm.name} with these "
                            f"settings ({len(bench.search)} search questions, "
                            + (f"{gen.max_new_tokens} tokens)" if source == "answers"
                               else "statistics from the prompts)"))
    # one process identifies a key at a time; another one waits, then reuses its result
    with store.computing("statistics", key):
        got = None if recompute else _cached_statistics(store, key, lm, quiet=True)
        if got is not None:
            return (*got, True)
        ck = _checkpoint_dir(store, key)
        if source == "prompts":
            st = prompt_statistics(lm, bench, seed, gen.batch_size, progress)
        else:
            st = compute_statistics(lm, bench, seed, gen, progress=progress,
                                    gen_stats=gen_stats, checkpoint=ck, key=key)

        def write(tmp: Path):
            tensors = {k: v.contiguous() for k, v in st.items() if isinstance(v, torch.Tensor)}
            save_file(tensors, str(tmp / "statistics.safetensors"))
            with open(tmp / "responses.jsonl", "w", encoding="utf-8") as f:
                for r in st["responses"]:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")

        tokens = {f"{a}.tokens": st[f"{a}.tokens"] for a in ASPECTS}
        path = store.save("statistics", key, write, extra={"tokens": tokens})
        shutil.rmtree(ck, ignore_errors=True)
    return st, path, False


def _cached_statistics(store: ArtifactStore, key: dict, lm: LoadedModel,
                       quiet: bool = False) -> tuple[dict, Path] | None:
    """The cached statistics of ``key`` if they are there and usable (checked), else None."""
    path = store.load("statistics", key)
    if path is None:
        return None
    try:
        st = read_statistics(path)
        bad = statistics_problem(st, lm)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
        st, bad = None, f"unreadable ({type(e).__name__})"
    if bad is None:
        log.info("reusing cached neuron statistics %s", path)
        return st, path
    if not quiet:
        log.warning("cached neuron statistics %s are not usable (%s): computing them again",
                    path, bad)
    return None


def statistics_problem(st: dict, lm: LoadedModel) -> str | None:
    """Why cached statistics cannot be used (None: they can): shapes of this model, counts
    within 0..tokens, one answer per search question and aspect."""
    n_layers, width = shape(lm.model)
    for a in ASPECTS:
        c, tokens = st.get(f"{a}.counts"), st.get(f"{a}.tokens")
        if c is None or tokens is None:
            return f"no {a} counts"
        if tuple(c.shape) != (n_layers, width):
            return f"{a} counts of shape {tuple(c.shape)}, the model has {(n_layers, width)}"
        if int(tokens) < 1 or bool((c < 0).any()) or bool((c > int(tokens)).any()):
            return f"{a} counts outside 0..{int(tokens)} tokens"
    n = {a: sum(r["aspect"] == a for r in st["responses"]) for a in ASPECTS}
    if n["high"] != n["low"]:
        return f"{n['high']} high and {n['low']} low answers"
    return None


def read_statistics(path: Path) -> dict:
    st: dict = dict(load_file(str(Path(path) / "statistics.safetensors")))
    meta = json.loads((Path(path) / "meta.json").read_text())
    st.update(meta.get("tokens", {}))
    st["responses"] = read_responses(path)
    return st


def read_responses(path: Path) -> list[dict]:
    with open(Path(path) / "responses.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
