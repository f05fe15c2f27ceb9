"""pkt.serve under load: N concurrent clients for a bounded time, with and without a
personality, as ratios measured in one run.

    python experiments/bench/serve_bench.py [--model smollm2_135m] [--clients 4]
        [--seconds 60] [--rounds 4] [--max-tokens 64]
        [--personality extraversion:high:1.5+neuroticism:low:1] [--method neuron]
        [--n-search 16] [--search-tokens 48] [--out experiments/bench/serve_results.json]

Starts ``python -m pkt.serve`` on a free 127.0.0.1 port with the personality preloaded
(its identification is not timed), sends one warm-up request per side, then alternates
the two sides in ``--rounds`` rounds of ``seconds / rounds`` each, so that a slow spell of
the machine hits both. During a round ``--clients`` threads each send streaming chat
completions one after another (the same questions for both sides, ``ignore_eos`` so that
every request decodes exactly ``--max-tokens`` tokens); a round ends when its time is up
and the requests in flight have finished. Per side: requests/s, output tokens/s, latency
p50/p95, time to first token p50/p95, then the ratios personality / plain.
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


def one_request(client: httpx.Client, body: dict) -> dict:
    """A streaming request: latency, time to first content token, completion tokens."""
    t0 = time.perf_counter()
    first = None
    usage = None
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


def run_round(url: str, body: dict, clients: int, seconds: float, offset: int) -> dict:
    results: list[dict] = []
    errors: list[str] = []
    lock = threading.Lock()
    t0 = time.perf_counter()
    deadline = t0 + seconds

    def client_loop(k: int):
        with httpx.Client(base_url=url, timeout=600) as c:
            i = offset + k
            while time.perf_counter() < deadline:
                q = QUESTIONS[i % len(QUESTIONS)]
                i += clients
                try:
                    res = one_request(c, {**body, "messages": [{"role": "user", "content": q}]})
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
            "requests_per_s": r4(len(res) / elapsed), "tokens_per_s": r4(tokens / elapsed),
            "latency_p50_s": r4(pct(lat, 0.5)), "latency_p95_s": r4(pct(lat, 0.95)),
            "ttft_p50_s": r4(pct(ttft, 0.5)), "ttft_p95_s": r4(pct(ttft, 0.95)),
            "mean_latency_s": r4(statistics.fmean(lat)) if lat else None,
            "first_errors": [e for rd in rounds for e in rd["errors"]][:3]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2_135m")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=60.0, help="per side, all rounds together")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--personality", default="extraversion:high:1.5+neuroticism:low:1")
    ap.add_argument("--method", default="neuron")
    ap.add_argument("--n-search", type=int, default=16)
    ap.add_argument("--search-tokens", type=int, default=48)
    ap.add_argument("--server-threads", type=int, default=None,
                    help="OMP_NUM_THREADS for the server (default: inherited)")
    ap.add_argument("--out", default=str(ROOT / "experiments" / "bench" / "serve_results.json"))
    args = ap.parse_args()

    spec = f"{args.personality}@{args.method}"
    overrides = [f"model={args.model}", f"serve.n_search={args.n_search}",
                 f"serve.search_max_new_tokens={args.search_tokens}",
                 f"serve.preload=[{spec}]", "serve.log_level=warning"]
    env = {"OMP_NUM_THREADS": str(args.server_threads)} if args.server_threads else {}
    log = ROOT / "outputs" / "serve" / "bench-server.log"
    common = {"model": args.model, "stream": True, "max_tokens": args.max_tokens,
              "ignore_eos": True, "stream_options": {"include_usage": True}}
    sides = {"plain": common, "personality": {**common, "model": f"{args.model}+{spec}"}}
    load_start = [round(x, 2) for x in os.getloadavg()]
    t_start = time.time()
    with Launched(overrides, log=log, env=env) as url:
        ready_s = time.time() - t_start
        with httpx.Client(base_url=url, timeout=600) as c:
            for body in sides.values():  # warm-up (not counted)
                one_request(c, {**body, "messages": [{"role": "user", "content": QUESTIONS[0]}]})
            health0 = c.get("/health").json()
        per = args.seconds / args.rounds
        rounds: dict[str, list] = {k: [] for k in sides}
        for i in range(args.rounds):
            order = list(sides) if i % 2 == 0 else list(sides)[::-1]
            for name in order:
                rd = run_round(url, sides[name], args.clients, per, offset=i)
                rounds[name].append(rd)
                print(f"round {i + 1}/{args.rounds} {name}: {len(rd['results'])} requests in "
                      f"{rd['elapsed']:.1f} s", file=sys.stderr)
        with httpx.Client(base_url=url, timeout=60) as c:
            health = c.get("/health").json()
    out = {k: summary(v) for k, v in rounds.items()}
    p, b = out["personality"], out["plain"]

    def ratio(key):
        return round(p[key] / b[key], 4) if p[key] and b[key] else None

    import torch

    result = {
        "what": "pkt.serve: streaming chat completions, N concurrent clients, bounded time; "
                "personality / plain",
        "command": " ".join(["python experiments/bench/serve_bench.py", *sys.argv[1:]]),
        "model": args.model, "personality": spec, "clients": args.clients,
        "seconds_per_side": args.seconds, "rounds": args.rounds, "max_tokens": args.max_tokens,
        "ignore_eos": True, "identification": {"n_search": args.n_search,
                                               "search_max_new_tokens": args.search_tokens},
        "server_ready_s": round(ready_s, 1),
        "sides": out,
        "ratios": {"requests_per_s": ratio("requests_per_s"), "tokens_per_s": ratio("tokens_per_s"),
                   "latency_p50": ratio("latency_p50_s"), "latency_p95": ratio("latency_p95_s"),
                   "ttft_p50": ratio("ttft_p50_s")},
        "server_completed": health["completed"] - health0["completed"],
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "torch": torch.__version__,
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "server_threads": args.server_threads or os.environ.get("OMP_NUM_THREADS"),
                    "loadavg_start": load_start, "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["ratios"], indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
