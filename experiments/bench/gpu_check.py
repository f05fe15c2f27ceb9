"""GPU check: NPTI overheads on a randomly initialised Llama-3-8B-shaped model in bf16.

    python experiments/bench/gpu_check.py                 # on a CUDA machine
    python experiments/bench/gpu_check.py --shape tiny    # a CPU smoke run of the same code

No weights are downloaded: the model is built from its config with random weights, which
is enough for timing (the edit does the same work whatever the weights are). It edits
``--neurons`` target neurons plus as many opposite-aspect neurons (default 20,000 each,
about the size of the released sets) and reports, as in run_bench.py, paired ratios:

- generation with / without induction at batch sizes 1, 8, 32 (target >= 0.95);
- statistics pass / plain forward over the same tokens (target >= 0.90);
- peak device memory of the statistics pass at 1x, 4x, 16x the tokens (flat).

Figures and the card go to experiments/bench/gpu_results.json (``--out``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run_bench import (  # noqa: E402
    ROOT,
    alternating_batches,
    alternating_steps,
    gen_time,
    machine,
    paired,
    random_set,
    stats_pass,
)

from pkt.artifacts import write_json_atomic  # noqa: E402
from pkt.neurons.induce import Induction  # noqa: E402
from pkt.neurons.sites import shape  # noqa: E402
from pkt.neurons.stats import padded_batch  # noqa: E402

SHAPES = {
    # Llama-3-8B: 32 layers x 14,336 MLP neurons = 458,752 neurons
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=8, vocab_size=128256),
    "tiny": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=1000),
}


def build(shape_name: str, device: torch.device, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**SHAPES[shape_name], max_position_embeddings=4096, rope_theta=500000.0,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype)
    return model.eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    ap.add_argument("--neurons", type=int, default=20000)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "experiments" / "bench" / "gpu_results.json"))
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    t0 = time.perf_counter()
    model = build(args.shape, device, dtype)
    L, N = shape(model)
    n = min(args.neurons, L * N // 2)
    print(f"built {args.shape} ({L} x {N} neurons, {dtype}) on {device} in "
          f"{time.perf_counter() - t0:.0f}s; editing {n} + {n} neurons", flush=True)
    ind = Induction(model, random_set(L, N, n, 0), random_set(L, N, n, 1),
                    strength=1.0, keep_prob=0.9, seed=0)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    res = {"shape": args.shape, "layers": L, "width": N, "dtype": str(dtype),
           "edited_neurons_per_aspect": n, "machine": machine(),
           "date": time.strftime("%Y-%m-%d %H:%M"), "generation": {}}

    for bs in (1, 8, 32):
        ids = torch.randint(10, vocab, (bs, 48), generator=g).to(device)
        enc = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        gen_time(model, enc, 0, 4)
        with ind.apply():
            gen_time(model, enc, 0, 4)

        # decode steps, hooked and plain alternating inside each generate call
        ps, hs = alternating_steps(model, enc, 0, ind, args.new_tokens, args.rounds)

        # whole generate calls, with and without induction, in alternating pairs
        def hooked(enc=enc):
            with ind.apply():
                return gen_time(model, enc, 0, args.new_tokens)

        r = paired(lambda enc=enc: gen_time(model, enc, 0, args.new_tokens), hooked, args.rounds)
        tok = bs * args.new_tokens
        ratio = statistics.fmean(ps) / statistics.fmean(hs)
        res["generation"][str(bs)] = {
            "ratio": ratio, "plain_ms_per_step": 1e3 * statistics.fmean(ps),
            "hooked_ms_per_step": 1e3 * statistics.fmean(hs),
            "whole_calls": {"plain_tok_s": tok / statistics.median(r["a_s"]),
                            "induced_tok_s": tok / statistics.median(r["b_s"]),
                            "ratio": r["ratio"], "ratio_min": r["ratio_min"],
                            "ratio_max": r["ratio_max"]}}
        print(f"generation bs={bs:<3} decode steps ratio {ratio:.3f}  whole calls ratio "
              f"{r['ratio']:.3f} [{r['ratio_min']:.3f}, {r['ratio_max']:.3f}]", flush=True)

    def batches(n_seqs, bs=8, prompt=48, resp=128):
        seqs = [(torch.randint(10, vocab, (prompt,), generator=g).tolist(),
                 torch.randint(10, vocab, (resp,), generator=g).tolist()) for _ in range(n_seqs)]
        return [padded_batch(seqs[i:i + bs], 0, device) for i in range(0, n_seqs, bs)]

    b = batches(32)
    stats_pass(model, b[:1], True)
    stats_pass(model, b[:1], False)
    plain, rec = alternating_batches(model, b, args.rounds)
    ratio = statistics.median([p / q for p, q in zip(plain, rec)])  # as in run_bench.py
    res["statistics"] = {"counted_tokens": 32 * 128, "plain_s_per_pass": sum(plain) / args.rounds,
                         "recording_s_per_pass": sum(rec) / args.rounds, "ratio": ratio,
                         "ratio_of_sums": sum(plain) / sum(rec)}
    print(f"statistics pass ratio {ratio:.3f}", flush=True)

    if device.type == "cuda":
        mem = []
        for mult in (1, 4, 16):
            bm = batches(8 * mult)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            stats_pass(model, bm, True)
            mem.append({"mult": mult, "counted_tokens": 8 * mult * 128,
                        "peak_growth_mb": (torch.cuda.max_memory_allocated() - before) / 2**20})
            print(f"memory x{mult}: peak growth {mem[-1]['peak_growth_mb']:.0f} MB", flush=True)
            del bm
        res["memory"] = mem
    res["targets_met"] = {
        "generation": min(v["ratio"] for v in res["generation"].values()) >= 0.95,
        "statistics": res["statistics"]["ratio"] >= 0.90}
    write_json_atomic(Path(args.out), res)
    print(f"targets met: {res['targets_met']}; wrote {args.out}")


if __name__ == "__main__":
    main()
