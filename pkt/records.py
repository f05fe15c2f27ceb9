"""The run record schema: ``generations.jsonl`` and ``metrics.json``, in one place.

The runner writes them, ``python -m pkt.eval.rescore`` rewrites them, ``python -m
pkt.report`` and the leakage matrix read them.

``generations.jsonl``, one object per test question:

    id            line of the question in its test file
    question      the question text
    response      the answer
    n_tokens      generated tokens
    method        method label (e.g. neuron, prompt_p2)
    trait         the trait the question is about (its test split)
    aspect        the aspect induced on that trait (null: not induced)
    model         model name
    params        the method's parameters
    profile       (profile runs) the profile's label
    trait_score   added by evaluation, on the 1-5 scale
    ppl, distinct_2, repetition, fluency            added by evaluation
    base_response, base_trait_score                 the plain model on the same question
                                                    (runs scored on more than one trait)

``metrics.json``: ``method``, ``trait`` and ``aspect`` (null in profile runs), ``profile``
(``{name, label, conflict, traits}``), ``trait_score`` (summary over the run's own trait),
``traits`` (per scored trait: ``aspect``, ``score``, and with a base ``base``, ``delta``),
``trait_scorer``, fluency and capability figures, ``params``, ``timings``.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from pkt.artifacts import write_json_atomic, write_text_atomic
from pkt.errors import PktError

GENERATIONS = "generations.jsonl"
METRICS = "metrics.json"
RUN_INFO = "run_info.json"


def summary(values) -> dict | None:
    """mean, sd, n and the number of missing (None) values; None when nothing is there."""
    v = [float(x) for x in values if x is not None]
    if not v:
        return None
    return {"mean": statistics.fmean(v), "sd": statistics.pstdev(v) if len(v) > 1 else 0.0,
            "n": len(v), "missing": sum(x is None for x in values)}


def make_record(qid: int, question: str, response: str, n_tokens: int, method: str, trait: str,
                aspect: str | None, model: str, params: dict, profile: str | None = None) -> dict:
    r = {"id": int(qid), "question": question, "response": response, "n_tokens": int(n_tokens),
         "method": method, "trait": trait, "aspect": aspect, "model": model, "params": params}
    if profile is not None:
        r["profile"] = profile
    return r


def write_generations(run_dir: Path, records: list[dict]) -> None:
    write_text_atomic(Path(run_dir) / GENERATIONS, "".join(
        json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def read_generations(run_dir: Path) -> list[dict]:
    from pkt.dataset import iter_jsonl

    path = Path(run_dir) / GENERATIONS
    out = []
    for n, r in iter_jsonl(path):
        if "response" not in r:
            raise PktError(f"{path}:{n}: not a generation record (no 'response')")
        out.append(r)
    return out


def write_metrics(run_dir: Path, metrics: dict) -> None:
    write_json_atomic(Path(run_dir) / METRICS, metrics)


def read_metrics(path: Path) -> dict:
    """``metrics.json`` of a run dir (or the file itself) as a dict."""
    path = Path(path)
    f = path / METRICS if path.is_dir() else path
    m = json.loads(f.read_text(encoding="utf-8"))
    if not isinstance(m, dict):
        raise ValueError("not a JSON object")
    return m


def trait_table(records: list[dict]) -> dict:
    """Per trait of the records (in order of appearance): the induced aspect, the score
    summary, and where records carry ``base_trait_score`` the base summary and the change."""
    table = {}
    for t in dict.fromkeys(r["trait"] for r in records):
        rs = [r for r in records if r["trait"] == t]
        row = {"aspect": rs[0].get("aspect"), "score": summary([r.get("trait_score") for r in rs])}
        if any("base_trait_score" in r for r in rs):
            b = summary([r.get("base_trait_score") for r in rs])
            row["base"] = b
            row["delta"] = row["score"]["mean"] - b["mean"] if row["score"] and b else None
        table[t] = row
    return table


def own_trait_score(metrics: dict, records: list[dict]) -> dict | None:
    """The single-trait run's ``trait_score``: its own trait's questions (None for profiles)."""
    own = metrics.get("trait")
    if not own:
        return None
    return summary([r.get("trait_score") for r in records if r.get("trait", own) == own])
