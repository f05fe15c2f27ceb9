"""pkt.serve's decoding batch under load: 1, 4, 8 and 16 concurrent streaming clients with
mixed personalities, against the one-at-a-time server, measured in one run.

    python experiments/bench/serve_bench.py [--model smollm2_135m] [--clients 1,4,8,16]
        [--seconds 24] [--rounds 2] [--max-tokens 32] [--n-search 16] [--search-tokens 48]
        [--out experiments/bench/serve_results.json] [--plot experiments/bench/serve_batching.png]

Starts two ``python -m pkt.serve`` processes on free 127.0.0.1 ports, the same model and
cache: ``serve.max_batch=16`` (the batch) and ``serve.max_batch=1`` (one request decodes at a
time: the server as it was before batching). Both preload the five personalities (their
identification is not timed): the plain model, NPTI ``extraversion:high:1.5``, ActAdd
``agreeableness:low:1``, the two-trait NPTI profile ``extraversion:high:1.5+neuroticism:low:1``
and P² ``openness:high``. Client ``k``'s ``i``-th request takes personality ``(k + i) mod 5``,
so every batch mixes them. Every request streams exactly ``--max-tokens`` tokens
(``ignore_eos``). For each number of clients, ``--rounds`` rounds alternate the two servers
(``seconds / rounds`` each per server), so a slow spell of the machine hits both; a round
ends when its time is up and the requests in flight have finished. Per cell: output
tokens/s over the round's wall time, latency and time-to-first-token p50/p95, then the
ratios batch / one-at-a-time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pkt.serve.launch import Launched  # noqa: E402

QUESTIONS = [
    "What do you do on a free evening?",
    "A friend invites you to a party where you know nobody. What do you do?",
    "How do you feel before an important exam?",
    "Your colleague takes credit for your work. How do you react?",
    "Describe your ideal holiday.",
    "How do you organise a busy week?",
    "What do you think about trying a completely new hobby?",
    "Someone criticises your work in a meeting. What goes through your mind?",
]
PERSONALITIES = ["", "extraversion:high:1.5@neuron", "agreeableness:low:1@actadd",
                 "extraversion:high:1.5+neuroticism:low:1@neuron", "openness:high@prompt_p2"]
SIDES = {"batch": 16, "one_at_a_time": 1}


def one_request(client: httpx.Client, body: dict) -> dict:
    """A streaming request: latency, time to first content token, completion tokens."""
    t0 = time.perf_counter()
    first = usage = None
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.read()[:300]!r}")
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if "error" in ev:
                raise RuntimeError(ev["error"]["message"])
            if ev.get("usage"):
                usage = ev["usage"]
            for c in ev.get("choices", []):
                if first is None and c["delta"].get("content"):
                    first = time.perf_counter() - t0
    return {"latency": time.perf_counter() - t0, "ttft": first,
            "tokens": usage["completion_tokens"] if usage else 0}


def run_round(url: str, model: str, max_tokens: int, clients: int, seconds: float,
              offset: int) -> dict:
    results: list[dict] = []
    errors: list[str] = []
    lock = threading.Lock()
    t0 = time.perf_counter()
    deadline = t0 + seconds

    def client_loop(k: int):
        with httpx.Client(base_url=url, timeout=900) as c:
            i = offset
            while time.perf_counter() < deadline:
                spec = PERSONALITIES[(k + i) % len(PERSONALITIES)]
                body = {"model": f"{model}+{spec}" if spec else model, "stream": True,
                        "max_tokens": max_tokens, "ignore_eos": True,
                        "stream_options": {"include_usage": True},
                        "messages": [{"role": "user",
                                      "content": QUESTIONS[(k * 3 + i) % len(QUESTIONS)]}]}
                i += 1
                try:
                    res = one_request(c, body)
                except Exception as e:  # counted, reported
                    with lock:
                        errors.append(str(e))
                    continue
                with lock:
                    results.append(res)

    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"results": results, "errors": errors, "elapsed": time.perf_counter() - t0}


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summary(rounds: list[dict]) -> dict:
    res = [r for rd in rounds for r in rd["results"]]
    elapsed = sum(rd["elapsed"] for rd in rounds)
    lat = [r["latency"] for r in res]
    ttft = [r["ttft"] for r in res if r["ttft"] is not None]
    tokens = sum(r["tokens"] for r in res)
    r4 = lambda x: None if x is None else round(x, 4)  # noqa: E731
    return {"requests": len(res), "errors": sum(len(rd["errors"]) for rd in rounds),
            "seconds": round(elapsed, 2), "completion_tokens": tokens,
            "tokens_per_s": r4(tokens / elapsed), "requests_per_s": r4(len(res) / elapsed),
            "latency_p50_s": r4(pct(lat, 0.5)), "latency_p95_s": r4(pct(lat, 0.95)),
            "ttft_p50_s": r4(pct(ttft, 0.5)), "ttft_p95_s": r4(pct(ttft, 0.95)),
            "mean_latency_s": r4(statistics.fmean(lat)) if lat else None,
            "first_errors": [e for rd in rounds for e in rd["errors"]][:3]}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = result["clients"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for side, style in (("batch", "o-"), ("one_at_a_time", "s--")):
        cells = [result["cells"][str(n)][side] for n in levels]
        a1.plot(levels, [c["tokens_per_s"] for c in cells], style, label=side.replace("_", " "))
        a2.plot(levels, [c["latency_p95_s"] for c in cells], style, label=side.replace("_", " "))
    a1.set(xlabel="concurrent streaming clients", ylabel="output tokens / s (all clients)",
           title="throughput", xticks=levels)
    a2.set(xlabel="concurrent streaming clients", ylabel="seconds", xticks=levels,
           title=f"p95 latency of a {result['max_tokens']}-token answer")
    for a in (a1, a2):
        a.grid(alpha=0.3)
        a.legend()
    fig.suptitle(f"pkt.serve, {result['model']}, mixed personalities "
                 f"({result['machine']['cpus']} CPU cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2_135m")
    ap.add_argument("--clients", default="1,4,8,16")
    ap.add_argument("--seconds", type=float, default=24.0, help="per server and level")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--n-search", type=int, default=16)
    ap.add_argument("--search-tokens", type=int, default=48)
    ap.add_argument("--server-threads", type=int, default=None,
                    help="OMP_NUM_THREADS of the servers (default: inherited)")
    ap.add_argument("--out", default=str(ROOT / "experiments" / "bench" / "serve_results.json"))
    ap.add_argument("--plot", default=str(ROOT / "experiments" / "bench" / "serve_batching.png"))
    args = ap.parse_args()
    levels = [int(x) for x in args.clients.split(",")]
    preload = ",".join(p for p in PERSONALITIES if p)
    common = [f"model={args.model}", f"serve.n_search={args.n_search}",
              f"serve.search_max_new_tokens={args.search_tokens}",
              f"serve.preload=[{preload}]", "serve.log_level=warning", "serve.max_waiting=256"]
    load_start = [round(x, 2) for x in os.getloadavg()]
    urls = {}
    t_start = time.time()
    launched = {}
    try:
        for side, rows in SIDES.items():  # one after the other: the second reuses the cache
            launched[side] = Launched([*common, f"serve.max_batch={rows}"],
                                      log=ROOT / "outputs" / "serve" / f"bench-{side}.log",
                                      env={"OMP_NUM_THREADS": str(args.server_threads)}
                                      if args.server_threads else None)
            urls[side] = launched[side].__enter__()
        ready_s = time.time() - t_start
        for url in urls.values():  # warm-up (not counted): every personality once
            with httpx.Client(base_url=url, timeout=900) as c:
                for spec in PERSONALITIES:
                    one_request(c, {"model": f"{args.model}+{spec}" if spec else args.model,
                                    "stream": True, "max_tokens": 4, "ignore_eos": True,
                                    "stream_options": {"include_usage": True},
                                    "messages": [{"role": "user", "content": QUESTIONS[0]}]})
        cells: dict[str, dict] = {}
        per = args.seconds / args.rounds
        for n in levels:
            rounds: dict[str, list] = {s: [] for s in SIDES}
            for i in range(args.rounds):
                for side in (list(SIDES) if i % 2 == 0 else list(SIDES)[::-1]):
                    rd = run_round(urls[side], args.model, args.max_tokens, n, per, offset=i)
                    rounds[side].append(rd)
                    print(f"{n} clients, round {i + 1}/{args.rounds}, {side}: "
                          f"{len(rd['results'])} requests in {rd['elapsed']:.1f} s",
                          file=sys.stderr)
            cells[str(n)] = {s: summary(v) for s, v in rounds.items()}
            b, o = cells[str(n)]["batch"], cells[str(n)]["one_at_a_time"]
            cells[str(n)]["ratios"] = {
                k: round(b[k] / o[k], 3) if b[k] and o[k] else None
                for k in ("tokens_per_s", "latency_p50_s", "latency_p95_s", "ttft_p50_s")}
        health = {}
        for side, url in urls.items():
            with httpx.Client(base_url=url, timeout=60) as c:
                health[side] = c.get("/health").json()
    finally:
        for lz in launched.values():
            lz.__exit__()

    import torch

    result = {
        "what": "pkt.serve: streaming chat completions with mixed personalities, N concurrent "
                "clients, bounded time; the decoding batch (serve.max_batch=16) vs one request "
                "at a time (serve.max_batch=1)",
        "command": " ".join(["python experiments/bench/serve_bench.py", *sys.argv[1:]]),
        "model": args.model, "personalities": ["plain" if not p else p for p in PERSONALITIES],
        "clients": levels, "seconds_per_cell": args.seconds, "rounds": args.rounds,
        "max_tokens": args.max_tokens, "ignore_eos": True,
        "identification": {"n_search": args.n_search, "search_max_new_tokens": args.search_tokens},
        "servers_ready_s": round(ready_s, 1), "cells": cells,
        "server_errors": {s: h["errors"] for s, h in health.items()},
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "torch": torch.__version__,
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "server_threads": args.server_threads or os.environ.get("OMP_NUM_THREADS"),
                    "loadavg_start": load_start,
                    "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if args.plot:
        plot(result, Path(args.plot))
    for n in levels:
        c = cells[str(n)]
        print(f"{n:>2} clients: batch {c['batch']['tokens_per_s']:.1f} tok/s, one at a time "
              f"{c['one_at_a_time']['tokens_per_s']:.1f} tok/s (x{c['ratios']['tokens_per_s']}); "
              f"p95 latency {c['batch']['latency_p95_s']:.1f} s vs "
              f"{c['one_at_a_time']['latency_p95_s']:.1f} s")
    print(f"wrote {args.out}" + (f" and {args.plot}" if args.plot else ""))


if __name__ == "__main__":
    main()
