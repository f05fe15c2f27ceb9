"""pkt benchmarks: every figure is a ratio measured in one process on the same inputs.

    python experiments/bench/run_bench.py [--model smollm2_135m] [--skip-run] [--out FILE]

1. generation throughput with NPTI induction / without (batch sizes 1, 8, 32; same prompts,
   a fixed number of new tokens), target >= 0.95;
2. identification statistics pass / plain forward pass over the same tokens, target >= 0.90;
3. peak memory of the statistics pass at 1x, 4x and 16x the tokens (fresh processes);
4. cold and cached wall time of `make run`'s command (unless --skip-run).
Results go to experiments/bench/results.json with a machine description.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pkt import prompts  # noqa: E402
from pkt.artifacts import write_json_atomic  # noqa: E402
from pkt.bench import load_bench  # noqa: E402
from pkt.generation import chat_prompt  # noqa: E402
from pkt.neurons.induce import Induction  # noqa: E402
from pkt.neurons.select import NeuronSet  # noqa: E402
from pkt.neurons.sites import shape  # noqa: E402
from pkt.neurons.stats import ActivationStats, padded_batch, recording  # noqa: E402


def load(model: str):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"model={model}"])
    return instantiate(cfg.model).load()


def random_set(n_layers, width, n, seed):
    g = torch.Generator().manual_seed(seed)
    ix = torch.randperm(n_layers * width, generator=g)[:n]
    return NeuronSet(ix // width, ix % width, 0.1 + 0.2 * torch.rand(n, generator=g),
                     torch.rand(n, generator=g), 0.5 + torch.rand(n, generator=g))


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def questions(n: int) -> list[str]:
    b = load_bench(str(ROOT / "pkt" / "bench" / "data"), "agreeableness", n_test=None)
    qs = [r["question"] for r in b.test]
    return (qs * (n // len(qs) + 1))[:n]


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def gen_time(lm, texts, new_tokens):
    tok = lm.tokenizer
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(lm.device)
    sync(lm.device)
    t = time.perf_counter()
    lm.model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                      repetition_penalty=1.15, pad_token_id=tok.pad_token_id, temperature=None,
                      top_p=None, top_k=None)
    sync(lm.device)
    return time.perf_counter() - t


def bench_generation(lm, n_neurons: int, batch_sizes=(1, 8, 32), new_tokens=32, repeats=5):
    L, N = shape(lm.model)
    ind = Induction(lm.model, random_set(L, N, n_neurons, 0), random_set(L, N, n_neurons, 1),
                    strength=1.0, keep_prob=0.9, seed=0)
    out = {}
    for bs in batch_sizes:
        texts = [chat_prompt(lm.tokenizer, prompts.neutral(q)) for q in questions(bs)]
        gen_time(lm, texts, 4)  # warm-up
        plain, hooked = [], []
        for _ in range(repeats):  # interleaved, best of n
            plain.append(gen_time(lm, texts, new_tokens))
            with ind.apply():
                hooked.append(gen_time(lm, texts, new_tokens))
        tokens = bs * new_tokens
        out[str(bs)] = {"tokens": tokens, "plain_tok_s": tokens / min(plain),
                        "induced_tok_s": tokens / min(hooked), "ratio": min(plain) / min(hooked)}
        print(f"generation bs={bs:<3} plain {tokens / min(plain):8.1f} tok/s  induced "
              f"{tokens / min(hooked):8.1f} tok/s  ratio {min(plain) / min(hooked):.3f}", flush=True)
    return {"edited_neurons_per_aspect": n_neurons, "new_tokens": new_tokens, "by_batch_size": out}


def sequences(lm, n, resp_len=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    tok = lm.tokenizer
    out = []
    for q in questions(n):
        p = tok(chat_prompt(tok, prompts.neutral(q)), add_special_tokens=False)["input_ids"]
        r = torch.randint(100, len(tok) - 100, (resp_len,), generator=g).tolist()
        out.append((p, r))
    return out


@torch.no_grad()
def stats_pass(lm, seqs, batch_size, record: bool):
    L, N = shape(lm.model)
    st = ActivationStats(L, N, device=lm.device)
    state = {}
    batches = [padded_batch(seqs[i : i + batch_size], lm.tokenizer.pad_token_id, lm.device)
               for i in range(0, len(seqs), batch_size)]
    sync(lm.device)
    t = time.perf_counter()
    ctx = recording(lm.model, st, state) if record else torch.no_grad()
    with ctx:
        for ids, attn, pos, count in batches:
            state["mask"] = count
            lm.model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False,
                     logits_to_keep=1)
    sync(lm.device)
    return time.perf_counter() - t


def bench_stats(lm, n_seqs=32, batch_size=8, repeats=5):
    seqs = sequences(lm, n_seqs)
    stats_pass(lm, seqs[:batch_size], batch_size, True)  # warm-up
    plain, rec = [], []
    for _ in range(repeats):
        plain.append(stats_pass(lm, seqs, batch_size, False))
        rec.append(stats_pass(lm, seqs, batch_size, True))
    tokens = sum(len(r) for _, r in seqs)
    r = min(plain) / min(rec)
    print(f"statistics pass: plain {min(plain):.2f}s  recording {min(rec):.2f}s  ratio {r:.3f}", flush=True)
    return {"sequences": n_seqs, "counted_tokens": tokens, "plain_s": min(plain),
            "recording_s": min(rec), "ratio": r}


def memory_child(model: str, mult: int) -> None:
    lm = load(model)
    seqs = sequences(lm, 8 * mult)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stats_pass(lm, seqs[:8], 8, True)
    after_one = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stats_pass(lm, seqs, 8, True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"mult": mult, "counted_tokens": sum(len(r) for _, r in seqs),
                      "rss_after_load_mb": base / 1024, "peak_rss_one_batch_mb": after_one / 1024,
                      "peak_rss_mb": peak / 1024}))


def bench_memory(model: str):
    out = []
    for mult in (1, 4, 16):
        r = subprocess.run([sys.executable, __file__, "--memory-child", str(mult), "--model", model],
                           capture_output=True, text=True, check=True)
        out.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(f"memory x{mult}: {out[-1]['counted_tokens']} tokens, peak RSS {out[-1]['peak_rss_mb']:.0f} MB", flush=True)
    return {"runs": out, "peak_growth_16x_vs_1x_mb": out[-1]["peak_rss_mb"] - out[0]["peak_rss_mb"]}


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
    res = {"model": args.model, "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M")}
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
    res["targets"] = {"generation_ratio_min": 0.95, "statistics_ratio_min": 0.90}
    write_json_atomic(Path(args.out), res)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
