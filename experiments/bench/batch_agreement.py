"""Does a request's greedy answer in a mixed decoding batch equal its answer alone, on the
embedded model in float32? (pkt.serve's batch, issue: batched serving, item 3.)

    python experiments/bench/batch_agreement.py [--model smollm2_135m] [--max-tokens 48]
        [--n-search 16] [--search-tokens 48] [--prompt-cache 4096]
        [--out experiments/bench/batch_agreement.json]

Eight questions under each of five personalities (plain, NPTI, ActAdd, a two-trait NPTI
profile, P²; the serving benchmark's, identified with the same budget) are decoded greedily
twice with the server's scheduler in one process: one request at a time with whole prompts
(``max_rows=1``, no prompt cache) and all 40 submitted at once into batches of up to 16 rows
with the server's prompt cache (``--prompt-cache`` slots, ``serve.prompt_cache_tokens``), so
most prompts are computed in two parts. Per request:
whether the token ids are identical, and where they first differ. Rounding is the only
possible source of a difference (the edit and the sampling are per row and element-wise;
the matrix products see a different number of rows, and a cached prefix splits a prompt's
prefill in two).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import pkt  # noqa: E402
from pkt.generation import chat_prompt  # noqa: E402
from pkt.serve.batcher import Batcher, Row  # noqa: E402
from pkt.serve.engine import Sampling  # noqa: E402

sys.path.insert(0, str(ROOT / "experiments" / "bench"))
from serve_bench import PERSONALITIES, QUESTIONS  # noqa: E402


def decode(lm, jobs, max_rows: int, prompt_cache: int = 0) -> tuple[list[list[int]], float, int]:
    b = Batcher(lm, max_rows=max_rows, max_waiting=10_000, prompt_cache_tokens=prompt_cache)
    outs, done = [None] * len(jobs), threading.Semaphore(0)
    t0 = time.perf_counter()
    for k, (ids, edit, s) in enumerate(jobs):
        def emit(ev, k=k):
            if ev[0] in ("done", "error"):
                outs[k] = ev[1]
                done.release()
        b.submit(Row(ids, s, edit, emit))
    for _ in jobs:
        done.acquire()
    dt, steps = time.perf_counter() - t0, b.steps
    b.stop()
    for o in outs:
        if not hasattr(o, "token_ids"):
            raise RuntimeError(f"a request failed: {o}")
    return [o.token_ids for o in outs], dt, steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2_135m")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--n-search", type=int, default=16)
    ap.add_argument("--search-tokens", type=int, default=48)
    ap.add_argument("--prompt-cache", type=int, default=4096,
                    help="the batch's prompt cache in slots (0: whole prompts)")
    ap.add_argument("--out", default=str(ROOT / "experiments" / "bench" / "batch_agreement.json"))
    args = ap.parse_args()
    lm = pkt.load_model(args.model)
    tok = lm.tokenizer
    jobs, labels = [], []
    for spec in PERSONALITIES:
        prof, _, method = spec.partition("@")
        kw = {"search_gen": {"max_new_tokens": args.search_tokens}} if method == "neuron" else {}
        p = pkt.personality(lm, prof or None, method or "neuron", n_search=args.n_search,
                            progress=True, **kw)
        for q in QUESTIONS:
            ids = tok(chat_prompt(tok, p.rewrite(q)), add_special_tokens=False)["input_ids"]
            jobs.append((ids, p.row_edit(), Sampling(max_tokens=args.max_tokens)))
            labels.append(spec or "plain")
    alone, t_alone, s_alone = decode(lm, jobs, 1)
    mixed, t_mixed, s_mixed = decode(lm, jobs, 16, args.prompt_cache)
    rows = []
    for lab, a, m in zip(labels, alone, mixed):
        first = next((i for i, (x, y) in enumerate(zip(a, m)) if x != y),
                     None if len(a) == len(m) else min(len(a), len(m)))
        rows.append({"personality": lab, "identical": a == m, "first_difference": first,
                     "tokens": len(a)})
    same = sum(r["identical"] for r in rows)
    result = {"what": __doc__.splitlines()[0], "model": args.model, "dtype": str(
        next(lm.model.parameters()).dtype), "requests": len(rows), "identical": same,
        "agreement": round(same / len(rows), 4),
        "by_personality": {lab: sum(r["identical"] for r in rows if r["personality"] == lab)
                           for lab in dict.fromkeys(labels)},
        "seconds": {"one_at_a_time": round(t_alone, 1), "batch": round(t_mixed, 1)},
        "decode_steps": {"one_at_a_time": s_alone, "batch": s_mixed},
        "max_tokens": args.max_tokens, "prompt_cache_tokens": args.prompt_cache, "rows": rows,
        "command": " ".join(["python experiments/bench/batch_agreement.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{same}/{len(rows)} identical ({result['by_personality']}); "
          f"one at a time {t_alone:.0f} s, batch {t_mixed:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
