"""GPU acceptance check: one command, on a CUDA machine without internet, in under 8 minutes.

    python experiments/bench/gpu_check.py                 # CUDA -> experiments/bench/gpu_results.json
    python experiments/bench/gpu_check.py --smoke         # the same code on CPU, tiny random model

Three parts, each recorded in one JSON file with the device card (name, memory, compute
capability, driver, torch / CUDA / cuDNN versions):

1. **runs**: ``python -m pkt.run`` on the GPU (``model.device=cuda``) with the embedded
   SmolLM2-135M (``model=smollm2_135m``, no download), a fresh cache, trait agreeableness:
   ``method=neuron`` (persona answers, neuron statistics and selection, ``strength=auto``),
   ``method=actadd`` and ``method=lora`` (one epoch, bf16-mixed), each answering the test
   questions and evaluated (offline trait scorer, perplexity, capability probe), with budgets
   that fit the time (:data:`BUDGETS`). Per run: exit status, wall time, stage timings,
   tokens/s, trait score, perplexity, capability ratios, the chosen strength.
2. **serve**: ``python -m pkt.serve`` on the GPU (:class:`pkt.serve.launch.Launched`), a few
   chat completions plain and with an NPTI personality (one streamed), latency and tokens.
3. **shape**: a Llama with Llama-3-8B's widths (hidden 4096, MLP 14,336, 32/8 heads, vocab
   128,256) but ``--layers`` decoder blocks (default 4), random weights, bf16: NPTI's cost per
   decode step (hooked and plain steps alternating inside each ``generate`` call, batch 1, 8,
   32; also per block), the edit alone, the statistics pass against a plain forward, and the
   peak GPU memory of the statistics pass at 1x, 4x and 16x the tokens
   (``torch.cuda.max_memory_allocated``, flat when statistics stream). Timings synchronise
   the device around each interval.

``--smoke`` runs the same code on the CPU (``CUDA_VISIBLE_DEVICES=`` for the child
processes) with ``model=tiny_random``, tiny budgets and a tiny Llama shape, in well under a
minute; tests/test_gpu_check.py runs it. Exit status 0 when every check in ``checks`` holds
(on a GPU also: the whole command under 8 minutes), else 1; the JSON is written either way,
with each failed part's error line. ``--work DIR`` keeps the runs, logs and cache (default
``outputs/gpu_check/<date-time>``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run_bench import (  # noqa: E402
    ROOT,
    PeakRSS,
    alternating_batches,
    alternating_steps,
    edit_cost,
    gen_time,
    machine,
    paired,
    random_set,
    stats_pass,
    sync,
)

from pkt.artifacts import write_json_atomic  # noqa: E402
from pkt.neurons.induce import Induction  # noqa: E402
from pkt.neurons.sites import shape  # noqa: E402
from pkt.neurons.stats import padded_batch  # noqa: E402

GPU_BUDGET_S = 480  # the acceptance criterion: the whole command in under 8 minutes
TRAIT = "agreeableness"
# per mode: the runs' budgets (overrides of python -m pkt.run), the server's, the shape's
BUDGETS = {
    "gpu": {
        "model": ["model=smollm2_135m", "model.device=cuda"],
        "common": ["data.n_search=32", "data.n_test=8", "gen.max_new_tokens=64",
                   "search_gen.max_new_tokens=64", "eval.capability_n_mc=40"],
        "neuron": ["method.strength=auto", "method.strength_grid=[1.0,2.0,3.0]",
                   "method.auto_n_mc=40"],
        "lora": ["method.max_epochs=1", "method.precision=bf16-mixed"],
        "serve": {"n_search": 32, "search_max_new_tokens": 64, "max_tokens": 48},
        "shape": {"name": "8b", "batch_sizes": (1, 8, 32), "new_tokens": 64, "rounds": 4,
                  "pairs": 3, "stat_seqs": 32},
        "run_timeout_s": 300,
    },
    "smoke": {
        "model": ["model=tiny_random"],
        "common": ["data.n_search=4", "data.n_test=2", "gen.max_new_tokens=4",
                   "search_gen.max_new_tokens=6", "eval.capability_n_mc=4"],
        "neuron": ["method.strength=auto", "method.strength_grid=[1.0,2.0]",
                   "method.auto_n_mc=4"],
        "lora": ["method.max_epochs=1"],
        "serve": {"n_search": 4, "search_max_new_tokens": 6, "max_tokens": 4},
        "shape": {"name": "tiny", "batch_sizes": (1, 8), "new_tokens": 4, "rounds": 1,
                  "pairs": 1, "stat_seqs": 16},
        "run_timeout_s": 240,
    },
}
SHAPES = {
    # Llama-3-8B's widths; the number of decoder blocks is --layers (32 in the real model)
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256),
    "tiny": dict(hidden_size=64, intermediate_size=256, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1000),
}
# the released NPTI sets edit about 20,000 of Llama-3-8B's 458,752 MLP neurons per aspect
NEURON_FRACTION = 20000 / (32 * 14336)
QUESTIONS = ["A friend invites you to a party where you know nobody. What do you do?",
             "Your colleague takes credit for your work. How do you react?",
             "How do you organise a busy week?"]
# NPTI at a fixed strength (strength=auto is the runner's part)
PERSONALITY = f"{TRAIT}:high:1.0@neuron"


def now() -> float:
    return time.perf_counter()


def first_error(text: str) -> str | None:
    lines = [x for x in text.splitlines() if x.startswith("pkt: error:")]
    return lines[-1] if lines else None


# ---------------------------------------------------------------- the device card


def card(device: torch.device) -> dict:
    out = {"device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available()
           else None, "machine": machine()}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        out.update(name=torch.cuda.get_device_name(device), count=torch.cuda.device_count(),
                   total_memory_gib=round(p.total_memory / 2**30, 2),
                   compute_capability=f"{p.major}.{p.minor}",
                   multiprocessors=p.multi_processor_count,
                   bf16_supported=torch.cuda.is_bf16_supported())
        smi = shutil.which("nvidia-smi")
        if smi:
            try:
                r = subprocess.run([smi, "--query-gpu=driver_version,name,memory.total",
                                    "--format=csv,noheader"], capture_output=True, text=True,
                                   timeout=20)
                out["nvidia_smi"] = r.stdout.strip().splitlines()
            except (OSError, subprocess.SubprocessError) as e:
                out["nvidia_smi"] = f"unavailable: {e}"
    return out


# ---------------------------------------------------------------- 1. python -m pkt.run


def run_one(name: str, args: list[str], work: Path, env: dict, timeout: int) -> dict:
    """``python -m pkt.run`` with ``args`` into ``work/runs/<name>``; its figures."""
    run_dir = work / "runs" / name
    cmd = [sys.executable, "-m", "pkt.run", f"hydra.run.dir={run_dir}",
           f"paths.output_dir={work / 'out'}", *args]
    t0 = now()
    try:
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=timeout)
        rc, text = r.returncode, r.stdout + r.stderr
    except subprocess.TimeoutExpired as e:  # (its output comes as bytes)
        rc = None
        text = "".join(x.decode(errors="replace") if isinstance(x, bytes) else (x or "")
                       for x in (e.stdout, e.stderr))
        text += f"\npkt: error: gpu_check: timed out after {timeout}s"
    wall = round(now() - t0, 2)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    (work / "logs" / f"{name}.log").write_text(" ".join(cmd) + "\n" + text)
    out = {"command": " ".join(["python -m pkt.run", *args]), "returncode": rc, "wall_s": wall,
           "run_dir": str(run_dir)}
    if rc != 0:
        out["error"] = first_error(text) or (text.strip().splitlines() or ["no output"])[-1]
        return out
    m = json.loads((run_dir / "metrics.json").read_text())
    cap = m.get("capability") or {}
    out.update(
        n=m.get("n"), timings=m.get("timings"), gen_tokens_per_s=m.get("gen_tokens_per_s"),
        mean_response_tokens=m.get("mean_response_tokens"),
        trait_score=(m.get("trait_score") or {}).get("mean"), trait_scorer=m.get("trait_scorer"),
        ppl=(m.get("ppl") or {}).get("mean"), distinct_2=m.get("distinct_2"),
        capability={k: cap.get(k) for k in ("mc_ratio", "ppl_ratio", "n_mc", "measured_by")},
        params={k: m["params"].get(k) for k in ("strength", "strength_mode", "layers",
                                                "coefficient", "max_epochs", "precision")
                if k in (m.get("params") or {})},
        extra={k: v for k, v in m.items() if k.startswith(("neurons_high", "neurons_low",
                                                           "lora_", "actadd_"))
               and not isinstance(v, list)})
    if "strength_auto" in m:
        out["strength_auto"] = {"chosen": m["strength_auto"].get("chosen"),
                                "trials": len(m["strength_auto"].get("trials") or [])}
    if "GPU available: True (cuda), used: True" in text:
        out["lightning_used_gpu"] = True
    return out


def run_checks(name: str, r: dict, n_test: int, cuda: bool) -> dict:
    ok = r.get("returncode") == 0
    checks = {f"run_{name}": ok}
    if ok:
        checks[f"run_{name}_answers"] = r.get("n") == n_test
        ts = r.get("trait_score")
        checks[f"run_{name}_scored"] = ts is not None and 1.0 <= ts <= 5.0 and \
            r["capability"].get("mc_ratio") is not None
        if name == "neuron":
            checks["run_neuron_strength_auto"] = (r.get("strength_auto") or {}).get("chosen") \
                is not None
        if name == "lora" and cuda:  # Lightning's own line: "GPU available: True (cuda), used: True"
            checks["run_lora_trained_on_gpu"] = bool(r.get("lightning_used_gpu"))
    return checks


# ---------------------------------------------------------------- 2. python -m pkt.serve


def serve_check(budget: dict, model_args: list[str], model_name: str, work: Path,
                env: dict) -> dict:
    import httpx
    from serve_bench import one_request

    from pkt.serve.launch import Launched

    overrides = [*model_args, f"serve.n_search={budget['n_search']}",
                 f"serve.search_max_new_tokens={budget['search_max_new_tokens']}",
                 "serve.log_level=warning"]
    t0 = now()
    requests = []
    with Launched(overrides, log=work / "logs" / "serve.log", env=env, timeout=300,
                  echo=False) as url:
        ready = round(now() - t0, 2)
        with httpx.Client(base_url=url, timeout=300) as c:
            for side, personality in (("personality", PERSONALITY), ("plain", None)):
                for i, q in enumerate(QUESTIONS):
                    body = {"model": model_name, "max_tokens": budget["max_tokens"],
                            "messages": [{"role": "user", "content": q}]}
                    if personality:
                        body["personality"] = personality
                    t = now()
                    r = c.post("/v1/chat/completions", json=body)
                    got = r.json() if r.headers.get("content-type", "").startswith(
                        "application/json") else {}
                    choice = (got.get("choices") or [{}])[0].get("message") or {}
                    requests.append({
                        "side": side, "status": r.status_code, "latency_s": round(now() - t, 3),
                        "completion_tokens": (got.get("usage") or {}).get("completion_tokens"),
                        "chars": len(choice.get("content") or ""),
                        "personality": (got.get("personality") or {}).get("label"),
                        **({"error": r.text[:300]} if r.status_code != 200 else {}),
                        **({"first_request": True} if i == 0 else {})})
            stream = one_request(c, {"model": model_name, "max_tokens": budget["max_tokens"],
                                     "stream": True, "personality": PERSONALITY,
                                     "stream_options": {"include_usage": True},
                                     "messages": [{"role": "user", "content": QUESTIONS[0]}]})
            health = c.get("/health").json()
    return {"ready_s": ready, "requests": requests,
            "stream": {k: (round(v, 3) if isinstance(v, float) else v)
                       for k, v in stream.items()},
            "health": {k: health.get(k) for k in ("status", "model", "completed", "errors",
                                                   "completion_tokens", "identified")
                       if k in health}}


def serve_checks(s: dict) -> dict:
    reqs = s.get("requests") or []
    return {"serve": bool(reqs) and "error" not in s,
            "serve_all_200": bool(reqs) and all(r["status"] == 200 for r in reqs),
            "serve_tokens": bool(reqs) and all((r["completion_tokens"] or 0) > 0 for r in reqs),
            "serve_personality": any(r["side"] == "personality" and r["personality"]
                                     for r in reqs),
            "serve_stream": (s.get("stream") or {}).get("tokens", 0) > 0}


# ---------------------------------------------------------------- 3. the 8B-shaped model


def build(shape_name: str, layers: int, device: torch.device, dtype: torch.dtype):
    """A Llama with ``shape_name``'s widths and ``layers`` blocks, random weights, built on
    ``device`` in ``dtype`` (no float32 copy first)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**SHAPES[shape_name], num_hidden_layers=layers,
                      max_position_embeddings=4096, rope_theta=500000.0, bos_token_id=1,
                      eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(cfg, dtype=dtype)
    return model.eval()


class PeakMemory:
    """Peak memory growth over a block: ``torch.cuda.max_memory_allocated`` on a GPU
    (synchronised, the peak reset at entry), the process's resident set on a CPU."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
        else:
            self.rss = PeakRSS().__enter__()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.growth_mb = (torch.cuda.max_memory_allocated(self.device) - self.before) / 2**20
        else:
            self.rss.__exit__(*exc)
            self.growth_mb = self.rss.peak - self.rss.start


def shape_check(budget: dict, layers: int, device: torch.device) -> dict:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = now()
    model = build(budget["name"], layers, device, dtype)
    sync(device)
    L, N = shape(model)
    n = max(1, round(NEURON_FRACTION * L * N))
    res = {"shape": budget["name"], "layers": L, "width": N, "dtype": str(dtype),
           "hidden_size": model.config.hidden_size, "vocab_size": model.config.vocab_size,
           "parameters_b": round(sum(p.numel() for p in model.parameters()) / 1e9, 3),
           "build_s": round(now() - t0, 2), "edited_neurons_per_aspect": n, "generation": {}}
    if device.type == "cuda":
        res["weights_gib"] = round(torch.cuda.memory_allocated(device) / 2**30, 2)
    print(f"shape: {budget['name']} widths, {L} layers x {N} neurons, {dtype} on {device}, "
          f"built in {res['build_s']}s; editing {n} + {n} neurons", flush=True)
    ind = Induction(model, random_set(L, N, n, 0), random_set(L, N, n, 1), strength=1.0,
                    keep_prob=0.9, seed=0)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    new = budget["new_tokens"]
    for bs in budget["batch_sizes"]:
        ids = torch.randint(10, vocab, (bs, 48), generator=g).to(device)
        enc = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        gen_time(model, enc, 0, 4)  # warm-up, both ways
        with ind.apply():
            gen_time(model, enc, 0, 4)
        ps, hs = alternating_steps(model, enc, 0, ind, new, budget["rounds"])

        def hooked(enc=enc):
            with ind.apply():
                return gen_time(model, enc, 0, new)

        whole = paired(lambda enc=enc: gen_time(model, enc, 0, new), hooked, budget["pairs"])
        step = statistics.fmean(ps)
        cost = edit_cost(ind, bs, device, reps=50)
        res["generation"][str(bs)] = {
            "ratio": step / statistics.fmean(hs), "plain_ms_per_step": 1e3 * step,
            "hooked_ms_per_step": 1e3 * statistics.fmean(hs),
            "overhead_ms_per_step": 1e3 * (statistics.fmean(hs) - step),
            "overhead_ms_per_layer": 1e3 * (statistics.fmean(hs) - step) / L,
            "decode_steps": {"plain": len(ps), "hooked": len(hs)},
            "edit_ms_per_step": 1e3 * cost, "edit_ms_per_layer": 1e3 * cost / L,
            "whole_calls": {"tokens": bs * new,
                            "plain_tok_s": bs * new / statistics.median(whole["a_s"]),
                            "induced_tok_s": bs * new / statistics.median(whole["b_s"]),
                            "ratio": whole["ratio"]}}
        v = res["generation"][str(bs)]
        print(f"shape: batch {bs:<3} decode step {v['plain_ms_per_step']:.2f} ms plain, "
              f"{v['hooked_ms_per_step']:.2f} ms with NPTI (ratio {v['ratio']:.3f}), the edit "
              f"alone {v['edit_ms_per_step']:.3f} ms", flush=True)

    def batches(n_seqs, bs=8, prompt=48, resp=128):
        seqs = [(torch.randint(10, vocab, (prompt,), generator=g).tolist(),
                 torch.randint(10, vocab, (resp,), generator=g).tolist()) for _ in range(n_seqs)]
        return [padded_batch(seqs[i:i + bs], 0, device) for i in range(0, n_seqs, bs)]

    b = batches(budget["stat_seqs"])
    stats_pass(model, b[:1], True)  # warm-up
    stats_pass(model, b[:1], False)
    plain, rec = alternating_batches(model, b, budget["rounds"])
    res["statistics"] = {"counted_tokens": budget["stat_seqs"] * 128,
                         "plain_s_per_pass": sum(plain) / budget["rounds"],
                         "recording_s_per_pass": sum(rec) / budget["rounds"],
                         "ratio": statistics.median([p / q for p, q in zip(plain, rec)]),
                         "ratio_of_sums": sum(plain) / sum(rec)}
    print(f"shape: statistics pass ratio {res['statistics']['ratio']:.3f}", flush=True)
    peak = None
    if device.type == "cuda":  # the whole part so far: weights, generation at batch 32, ...
        torch.cuda.synchronize(device)
        peak = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    mem = []
    for mult in (1, 4, 16):
        bm = batches(8 * mult)
        with PeakMemory(device) as pm:
            stats_pass(model, bm, True)
        mem.append({"mult": mult, "counted_tokens": 8 * mult * 128,
                    "peak_growth_mb": round(pm.growth_mb, 1)})
        del bm
    res["memory"] = {"measured_by": "torch.cuda.max_memory_allocated" if device.type == "cuda"
                     else "resident set (sampled)", "statistics_pass": mem,
                     "peak_allocated_gib": peak}
    print("shape: statistics pass peak growth " + ", ".join(
        f"x{m['mult']} {m['peak_growth_mb']:.0f} MB" for m in mem), flush=True)
    return res


def shape_checks(s: dict, device: torch.device) -> dict:
    gen = s.get("generation") or {}
    out = {"shape": "error" not in s and bool(gen),
           "shape_ratios": bool(gen) and all(v["ratio"] > 0 for v in gen.values())
           and (s.get("statistics") or {}).get("ratio", 0) > 0}
    if device.type == "cuda" and s.get("memory"):
        m = s["memory"]["statistics_pass"]
        # streaming statistics: 16x the tokens may not cost much more than 1x (one batch
        # of activations either way; 64 MB or 50% of slack for allocator rounding)
        out["shape_memory_flat"] = m[-1]["peak_growth_mb"] <= max(1.5 * m[0]["peak_growth_mb"],
                                                                   m[0]["peak_growth_mb"] + 64)
    return out


# ---------------------------------------------------------------- the command


def guarded(name: str, results: dict, fn) -> None:
    """``results[name] = fn()``; an exception becomes ``{"error": ...}`` (its last line) and
    the traceback goes to stderr, so that one failed part leaves the others' figures."""
    try:
        results[name] = fn()
    except Exception as e:
        traceback.print_exc()
        results[name] = {"error": f"{type(e).__name__}: {str(e).strip()[:500]}"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true",
                    help="the same code on CPU with the tiny random model (well under a minute)")
    ap.add_argument("--out", help="the JSON file (default: experiments/bench/gpu_results.json; "
                    "with --smoke outputs/gpu_check/smoke.json)")
    ap.add_argument("--work", help="runs, logs and cache (default: outputs/gpu_check/<time>)")
    ap.add_argument("--layers", type=int, default=None,
                    help="decoder blocks of the 8B-shaped model (default 4; 32 is the real "
                    "depth, several times slower)")
    ap.add_argument("--jobs", type=int, default=None,
                    help="runs at a time (default: 1 on a GPU, so that timings are clean; "
                    "2 with --smoke)")
    ap.add_argument("--parts", default="runs,serve,shape",
                    help="which parts, comma-separated (default: all three)")
    args = ap.parse_args(argv)
    t_start = now()
    mode = "smoke" if args.smoke else "gpu"
    budget = BUDGETS[mode]
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not args.smoke and not torch.cuda.is_available():
        print("gpu_check: error: no CUDA device here (torch.cuda.is_available() is False); "
              "--smoke runs the same code on the CPU", file=sys.stderr)
        return 2
    device = torch.device("cpu") if args.smoke else torch.device("cuda", 0)
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    work = Path(args.work or ROOT / "outputs" / "gpu_check" / stamp).absolute()
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out or (ROOT / "outputs" / "gpu_check" / "smoke.json" if args.smoke
                            else HERE / "gpu_results.json"))
    env = {**os.environ, "PKT_CACHE": str(work / "cache"), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline",
           "PYTHONUNBUFFERED": "1"}
    # the dequantised embedded model is the user's (converted once per machine)
    env.setdefault("PKT_MODEL_CACHE", str(Path(os.environ.get("PKT_CACHE", ROOT / ".cache"))
                                          / "models"))
    if args.smoke:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the children too: the CPU path, even on a GPU host
        # tiny matrices gain nothing from threads, and two runs share the cores
        env.setdefault("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
    res: dict = {
        "what": "GPU acceptance check: pkt.run (neuron with strength=auto, actadd, lora, "
                "evaluation) and pkt.serve on the embedded model, and NPTI's costs on an "
                "8B-shaped random model" + (" (--smoke: CPU, tiny random model)" if args.smoke
                                             else ""),
        "command": " ".join(["python experiments/bench/gpu_check.py", *(argv or sys.argv[1:])]),
        "mode": mode, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "git_commit": git_commit(),
        "card": card(device), "work_dir": str(work), "budgets": {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in budget.items()}}
    print(f"gpu_check ({mode}) on {res['card'].get('name', device)}; work dir {work}", flush=True)
    checks: dict = {}
    model_args = budget["model"]
    model_name = model_args[0].split("=", 1)[1]
    n_test = int(next(a for a in budget["common"] if a.startswith("data.n_test=")).split("=")[1])
    common = [*model_args, f"trait={TRAIT}", "aspect=high", "logger=none", *budget["common"]]
    jobs = {"neuron": ["method=neuron", *common, *budget["neuron"]],
            "actadd": ["method=actadd", *common],
            "lora": ["method=lora", *common, *budget["lora"]]}
    if "runs" in parts or "serve" in parts:
        res["runs"], lock = {}, threading.Lock()

        def job(name):
            if name == "serve":
                guarded("serve", res, lambda: serve_check(budget["serve"], model_args,
                                                          model_name, work, env))
                print(f"serve: {'error ' + res['serve']['error'] if 'error' in res['serve'] else 'done'}",
                      flush=True)
                return
            r = run_one(name, jobs[name], work, env, budget["run_timeout_s"])
            with lock:
                res["runs"][name] = r
            print(f"run {name}: " + (f"{r['wall_s']}s, trait score {r.get('trait_score')}"
                                     if r["returncode"] == 0 else f"FAILED: {r.get('error')}"),
                  flush=True)

        # neuron first: its persona answers and statistics are what lora and serve reuse
        order = [n for n in ("neuron", "actadd", "lora") if "runs" in parts]
        order += ["serve"] if "serve" in parts else []
        with ThreadPoolExecutor(args.jobs or (2 if args.smoke else 1)) as pool:
            list(pool.map(job, order))
        for name in jobs:
            if name in res["runs"]:
                checks.update(run_checks(name, res["runs"][name], n_test,
                                         device.type == "cuda"))
        if "serve" in res:
            checks.update(serve_checks(res["serve"]))
    if "shape" in parts:
        shape_budget = budget["shape"]
        layers = args.layers or (4 if not args.smoke else 2)
        guarded("shape", res, lambda: shape_check(shape_budget, layers, device))
        checks.update(shape_checks(res["shape"], device))
    res["wall_s"] = round(now() - t_start, 1)
    if not args.smoke:
        checks["under_8_minutes"] = res["wall_s"] < GPU_BUDGET_S
    res["checks"] = checks
    res["ok"] = bool(checks) and all(checks.values())
    write_json_atomic(out, res)
    failed = [k for k, v in checks.items() if not v]
    print(f"gpu_check: {'all checks hold' if res['ok'] else 'FAILED: ' + ', '.join(failed)} "
          f"({res['wall_s']}s); wrote {out}", flush=True)
    return 0 if res["ok"] else 1


def git_commit() -> str | None:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                           text=True, timeout=5)
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


if __name__ == "__main__":
    raise SystemExit(main())
