"""pkt benchmarks: every figure is a ratio measured in one process on the same inputs.

    python experiments/bench/run_bench.py [--model smollm2_135m] [--skip-run] [--out FILE]

1. generation throughput with NPTI induction / without (batch sizes 1, 8, 32; same prompts,
   a fixed number of new tokens), target >= 0.95;
2. identification statistics pass / plain forward pass over the same tokens, target >= 0.90;
3. peak memory of the statistics pass at 1x, 4x and 16x the tokens (fresh processes);
4. cold and cached wall time of `make run`'s command (unless --skip-run).

Timings are interleaved so that a slow spell of the machine hits both sides: generation
switches the hooks on for every other decode step inside one ``generate`` call (ratio of
the mean step times); the statistics pass times the plain and the recording forward of
the same batch back to back (median of the per-batch ratios). Whole ``generate`` calls
with and without induction, in alternating pairs, are recorded next to them.
Results go to experiments/bench/results.json with a machine description and load average.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pkt import prompts  # noqa: E402
from pkt.artifacts import write_json_atomic  # noqa: E402
from pkt.dataset import load_bench  # noqa: E402
from pkt.generation import chat_prompt  # noqa: E402
from pkt.hooks import Scope  # noqa: E402
from pkt.neurons.induce import Induction  # noqa: E402
from pkt.neurons.select import NeuronSet  # noqa: E402
from pkt.neurons.sites import shape  # noqa: E402
from pkt.neurons.stats import ActivationStats, padded_batch, recording  # noqa: E402


def load(model: str):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    import pkt.hydra_setup  # noqa: F401

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"model={model}"])
    return instantiate(cfg.model).load()


def random_set(n_layers, width, n, seed):
    g = torch.Generator().manual_seed(seed)
    ix = torch.randperm(n_layers * width, generator=g)[:n]
    return NeuronSet(ix // width, ix % width, 0.1 + 0.2 * torch.rand(n, generator=g),
                     torch.rand(n, generator=g), 0.5 + torch.rand(n, generator=g))


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine() -> dict:
    return {"platform": platform.platform(), "processor": cpu_name(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def questions(n: int) -> list[str]:
    b = load_bench(str(ROOT / "pkt" / "dataset" / "data"), "agreeableness", n_test=None)
    qs = [r["question"] for r in b.test]
    return (qs * (n // len(qs) + 1))[:n]


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def gen_time(model, enc: dict, pad_id: int, new_tokens: int) -> float:
    """Seconds for one greedy ``generate`` call of exactly ``new_tokens`` tokens."""
    device = enc["input_ids"].device
    sync(device)
    t = time.perf_counter()
    model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                   repetition_penalty=1.15, pad_token_id=pad_id, temperature=None, top_p=None,
                   top_k=None)
    sync(device)
    return time.perf_counter() - t


def paired(run_a, run_b, rounds: int) -> dict:
    """Time ``run_a`` and ``run_b`` back to back ``rounds`` times, alternating the order.

    Returns the times and the median / spread of the per-round ratios a / b.
    """
    ta, tb = [], []
    for i in range(rounds):
        if i % 2 == 0:
            ta.append(run_a())
            tb.append(run_b())
        else:
            tb.append(run_b())
            ta.append(run_a())
    ratios = [a / b for a, b in zip(ta, tb)]
    return {"a_s": ta, "b_s": tb, "ratio": statistics.median(ratios),
            "ratio_min": min(ratios), "ratio_max": max(ratios)}


def edit_cost(ind: Induction, bs: int, device, reps: int = 200) -> float:
    """Seconds per decode step spent in the edit itself (all layers), measured directly."""
    x = torch.randn(bs, 1, ind.width, device=device, dtype=ind.dtype)
    with torch.no_grad():
        for _ in range(10):
            for layer in range(ind.n_layers):
                if ind.has_add[layer] or ind.has_opp[layer]:
                    ind.edit(layer, x)
        sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            for layer in range(ind.n_layers):
                if ind.has_add[layer] or ind.has_opp[layer]:
                    ind.edit(layer, x)
        sync(device)
    return (time.perf_counter() - t) / reps


class StepAlternator:
    """A logits processor that times every decode step and switches the induction hooks on
    for every other step, so hooked and plain steps of one ``generate`` call alternate.

    The processor runs once per step, between two forwards: the interval between two of its
    calls is one whole decode step (forward, logits processing, token choice). Hook
    registration happens outside the timed interval, as it does once per call in real use.
    """

    def __init__(self, ind: Induction, device, phase: int):
        self.ind, self.device, self.phase = ind, device, phase
        self.ctx = None
        self.last = None
        self.hooked = False
        self.step = 0
        self.times: dict[bool, list[float]] = {True: [], False: []}

    def __call__(self, input_ids, scores):
        sync(self.device)
        now = time.perf_counter()
        if self.last is not None:
            self.times[self.hooked].append(now - self.last)
        self.hooked = (self.step + self.phase) % 2 == 1
        if self.hooked and self.ctx is None:
            self.ctx = self.ind.apply()
            self.ctx.__enter__()
        elif not self.hooked and self.ctx is not None:
            self.close()
        self.step += 1
        self.last = time.perf_counter()
        return scores

    def close(self):
        if self.ctx is not None:
            self.ctx.__exit__(None, None, None)
            self.ctx = None


@torch.no_grad()
def alternating_steps(model, enc: dict, pad_id: int, ind, new_tokens, rounds):
    """Per-step times of plain and hooked decode steps, interleaved inside each generate call."""
    from transformers import LogitsProcessorList

    device = next(model.parameters()).device
    plain, hooked = [], []
    for r in range(rounds):
        alt = StepAlternator(ind, device, phase=r % 2)
        try:
            model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                           do_sample=False, repetition_penalty=1.15, pad_token_id=pad_id,
                           temperature=None, top_p=None, top_k=None,
                           logits_processor=LogitsProcessorList([alt]))
        finally:
            alt.close()
        plain += alt.times[False]
        hooked += alt.times[True]
    return plain, hooked


def bench_generation(lm, n_neurons: int, batch_sizes=(1, 8, 32), new_tokens=32, rounds=5,
                     step_tokens=64, step_rounds=4):
    L, N = shape(lm.model)
    ind = Induction(lm.model, random_set(L, N, n_neurons, 0), random_set(L, N, n_neurons, 1),
                    strength=1.0, keep_prob=0.9, seed=0)
    pad = lm.tokenizer.pad_token_id
    out = {}
    for bs in batch_sizes:
        texts = [chat_prompt(lm.tokenizer, prompts.neutral(q)) for q in questions(bs)]
        enc = dict(lm.tokenizer(texts, return_tensors="pt", padding=True,
                                add_special_tokens=False).to(lm.device))
        gen_time(lm.model, enc, pad, 4)  # warm-up
        with ind.apply():
            gen_time(lm.model, enc, pad, 4)
        # 1. decode steps, hooked and plain alternating inside each generate call
        ps, hs = alternating_steps(lm.model, enc, pad, ind, step_tokens, step_rounds)
        step_ratio = statistics.fmean(ps) / statistics.fmean(hs)

        # 2. whole generate calls, with and without induction, in alternating pairs
        def hooked(enc=enc):
            with ind.apply():
                return gen_time(lm.model, enc, pad, new_tokens)

        r = paired(lambda enc=enc: gen_time(lm.model, enc, pad, new_tokens), hooked, rounds)
        tokens = bs * new_tokens
        step = statistics.fmean(ps)
        cost = edit_cost(ind, bs, lm.device)
        out[str(bs)] = {
            "ratio": step_ratio,
            "decode_steps": {"plain": len(ps), "hooked": len(hs),
                             "plain_ms_per_step": 1e3 * statistics.fmean(ps),
                             "hooked_ms_per_step": 1e3 * statistics.fmean(hs),
                             "median_ratio": statistics.median(ps) / statistics.median(hs)},
            "whole_calls": {"rounds": rounds, "tokens": tokens,
                            "plain_tok_s": tokens / statistics.median(r["a_s"]),
                            "induced_tok_s": tokens / statistics.median(r["b_s"]),
                            "ratio": r["ratio"], "ratio_min": r["ratio_min"],
                            "ratio_max": r["ratio_max"]},
            "edit_ms_per_step": 1e3 * cost,
            "ratio_implied_by_edit_cost": step / (step + cost)}
        print(f"generation bs={bs:<3} decode steps ratio {step_ratio:.3f} ({len(ps)}+{len(hs)} "
              f"steps, {1e3 * step:.1f} ms plain)  whole calls ratio {r['ratio']:.3f} "
              f"[{r['ratio_min']:.3f}, {r['ratio_max']:.3f}]  edit alone {1e3 * cost:.2f} ms/step",
              flush=True)
    return {"edited_neurons_per_aspect": n_neurons, "by_batch_size": out}


def sequences(lm, n, resp_len=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    tok = lm.tokenizer
    out = []
    for q in questions(n):
        p = tok(chat_prompt(tok, prompts.neutral(q)), add_special_tokens=False)["input_ids"]
        r = torch.randint(100, len(tok) - 100, (resp_len,), generator=g).tolist()
        out.append((p, r))
    return out


def batched(lm, seqs, batch_size: int = 8) -> list[tuple]:
    """``padded_batch`` tuples (ids, attention mask, positions, counted mask) for ``seqs``."""
    return [padded_batch(seqs[i : i + batch_size], lm.tokenizer.pad_token_id, lm.device)
            for i in range(0, len(seqs), batch_size)]


@torch.no_grad()
def stats_pass(model, batches, record: bool, stats: ActivationStats | None = None) -> float:
    """Seconds for one teacher-forced pass over ``batches``, recording statistics (into
    ``stats``, or a fresh state made before the clock starts) or not."""
    device = next(model.parameters()).device
    st = stats if stats is not None or not record else ActivationStats(*shape(model), device=device)
    scope = Scope.marked()
    sync(device)
    t = time.perf_counter()
    with (recording(model, st, scope) if record else contextlib.nullcontext()):
        for ids, attn, pos, count in batches:
            scope.mark(count)
            model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False,
                  logits_to_keep=1)
    sync(device)
    return time.perf_counter() - t


@torch.no_grad()
def alternating_batches(model, batches, rounds):
    """Per-batch times of plain and recording forwards over the same batch, back to back
    (the order alternates), so a slow spell of the machine hits both.

    ``batches``: ``padded_batch`` tuples (ids, attention mask, positions, counted mask).
    """
    st = ActivationStats(*shape(model), device=next(model.parameters()).device)
    plain, rec = [], []
    for r in range(rounds):
        for i, b in enumerate(batches):
            if (r + i) % 2 == 0:
                plain.append(stats_pass(model, [b], False))
                rec.append(stats_pass(model, [b], True, st))
            else:
                rec.append(stats_pass(model, [b], True, st))
                plain.append(stats_pass(model, [b], False))
    return plain, rec


def bench_stats(lm, n_seqs=32, batch_size=8, rounds=8):
    seqs = sequences(lm, n_seqs)
    batches = batched(lm, seqs, batch_size)
    stats_pass(lm.model, batches[:1], True)  # warm-up
    stats_pass(lm.model, batches[:1], False)
    plain, rec = alternating_batches(lm.model, batches, rounds)
    # a pair is the same batch, plain then recording (or the reverse) back to back: its
    # ratio cancels the machine's slow spells; the median over all pairs is not moved by
    # one spell that hit a single forward (the ratio of the sums is)
    pair = [a / b for a, b in zip(plain, rec)]
    ratio = statistics.median(pair)
    tokens = sum(len(x) for _, x in seqs)
    print(f"statistics pass: plain {sum(plain) / rounds:.2f}s  recording {sum(rec) / rounds:.2f}s "
          f"per pass  ratio {ratio:.3f} (median of {len(pair)} pairs, {min(pair):.3f} .. "
          f"{max(pair):.3f}; ratio of sums {sum(plain) / sum(rec):.3f})", flush=True)
    return {"sequences": n_seqs, "counted_tokens": tokens, "rounds": rounds,
            "batches_per_round": len(plain) // rounds,
            "plain_s_per_pass": sum(plain) / rounds, "recording_s_per_pass": sum(rec) / rounds,
            "ratio": ratio, "ratio_of_sums": sum(plain) / sum(rec),
            "pair_ratio_min": min(pair), "pair_ratio_max": max(pair)}


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    """Samples this process's resident memory every millisecond while active."""

    def __enter__(self):
        self.start = self.peak = rss_mb()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_mb())


def memory_child(model: str, mult: int) -> None:
    lm = load(model)
    seqs = sequences(lm, 8 * mult)
    batches = batched(lm, seqs)
    stats_pass(lm.model, batches[:1], True)  # warm-up: allocator pools, lazy init
    stats_pass(lm.model, batches[:1], False)
    with PeakRSS() as plain:
        stats_pass(lm.model, batches, False)
    with PeakRSS() as rec:
        stats_pass(lm.model, batches, True)
    L, N = shape(lm.model)
    state_mb = ActivationStats(L, N).hist.numel() * 8 / 2**20
    print(json.dumps({"mult": mult, "counted_tokens": sum(len(r) for _, r in seqs),
                      "rss_before_mb": rec.start, "plain_pass_peak_growth_mb": plain.peak - plain.start,
                      "recording_pass_peak_growth_mb": rec.peak - rec.start,
                      "statistics_state_mb": state_mb}))


def bench_memory(model: str):
    out = []
    for mult in (1, 4, 16):
        r = subprocess.run([sys.executable, __file__, "--memory-child", str(mult), "--model", model],
                           capture_output=True, text=True, check=True)
        out.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(f"memory x{mult}: {out[-1]['counted_tokens']} tokens, peak growth during the pass: "
              f"recording {out[-1]['recording_pass_peak_growth_mb']:.0f} MB, plain forward "
              f"{out[-1]['plain_pass_peak_growth_mb']:.0f} MB", flush=True)
    growth = out[-1]["recording_pass_peak_growth_mb"] - out[0]["recording_pass_peak_growth_mb"]
    return {"runs": out, "peak_growth_16x_vs_1x_mb": growth}


def bench_run_command():
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as tmp:
        env["PKT_CACHE"] = tmp
        env["PKT_MODEL_CACHE"] = str(ROOT / ".cache" / "models")
        cmd = [sys.executable, "-m", "pkt.run", "method=neuron", "trait=agreeableness",
               f"paths.output_dir={tmp}/out", "logger=none"]
        out = {}
        for name in ("cold", "cached"):
            t = time.perf_counter()
            subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
            out[f"{name}_s"] = time.perf_counter() - t
            print(f"make run command ({name} neuron cache): {out[f'{name}_s']:.1f}s", flush=True)
    out["note"] = "dequantised model cached in both; 'cold' identifies neurons, 'cached' reuses them"
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2_135m")
    ap.add_argument("--skip-run", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "experiments" / "bench" / "results.json"))
    ap.add_argument("--memory-child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        return memory_child(args.model, args.memory_child)
    lm = load(args.model)
    L, N = shape(lm.model)
    res = {"model": args.model, "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"),
           "load_average_at_start": os.getloadavg()}
    res["generation"] = {
        "default_k_1.3pct": bench_generation(lm, max(1, round(0.013 * L * N))),
        "paper_scale_5pct": bench_generation(lm, round(0.05 * L * N), batch_sizes=(8,)),
    }
    res["statistics"] = bench_stats(lm)
    res["memory"] = bench_memory(args.model)
    if not args.skip_run:
        res["make_run"] = bench_run_command()
    elif Path(args.out).is_file():  # keep the last measured command timings
        old = json.loads(Path(args.out).read_text())
        if "make_run" in old:
            res["make_run"] = {**old["make_run"], "measured": old.get("date")}
    res["load_average_at_end"] = os.getloadavg()
    res["targets"] = {"generation_ratio_min": 0.95, "statistics_ratio_min": 0.90}
    gen_ratios = [v["ratio"] for g in res["generation"].values() for v in g["by_batch_size"].values()]
    res["targets_met"] = {"generation": min(gen_ratios) >= 0.95,
                          "statistics": res["statistics"]["ratio"] >= 0.90}
    write_json_atomic(Path(args.out), res)
    print(f"targets met: {res['targets_met']}  (lowest generation ratio {min(gen_ratios):.3f}, "
          f"statistics ratio {res['statistics']['ratio']:.3f})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
