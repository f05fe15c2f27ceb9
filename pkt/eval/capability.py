"""Capability retention probe: multiple-choice accuracy and neutral-text perplexity.

Measured with a method's intervention active and reported as ratios to the plain model's
figures (cached per model fingerprint). Options are scored by mean token log-likelihood
after a plain "Question: ... Answer:" prompt (no chat template: shorter, and the usual
form of likelihood-scored benchmarks); under a generation-time intervention, the scored
positions are treated as generated ones.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from pkt.artifacts import ArtifactStore
from pkt.errors import PktError
from pkt.eval.likelihood import choice_logprobs, continuation_logprobs
from pkt.hooks import Scope
from pkt.resources import PACKAGE_DIR

DATA = PACKAGE_DIR / "eval" / "data"
MC_FILE = DATA / "capability_mc.jsonl"
TEXT_FILE = DATA / "neutral_text.txt"
MC_PROMPT = "Question: {question}\nAnswer:"


def load_mc(n: int | None = None) -> list[dict]:
    rows = []
    for i, line in enumerate(MC_FILE.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                r = json.loads(line)
                assert isinstance(r["choices"], list) and 0 <= int(r["answer"]) < len(r["choices"])
            except (json.JSONDecodeError, KeyError, AssertionError, TypeError, ValueError):
                raise PktError(f"{MC_FILE}:{i}: malformed capability item") from None
            rows.append(r)
    return rows[:n] if n else rows


def paragraphs() -> list[str]:
    return [p.strip() for p in TEXT_FILE.read_text(encoding="utf-8").split("\n\n") if p.strip()]


def probe_hash(n_mc: int | None) -> str:
    h = hashlib.sha256(MC_FILE.read_bytes() + TEXT_FILE.read_bytes() + MC_PROMPT.encode())
    h.update(str(n_mc).encode())
    return h.hexdigest()[:16]


def measure(lm, n_mc: int | None = None, batch_size: int = 16, scope: Scope | None = None,
            mc: bool = True, ppl: bool = True, progress: bool = False,
            desc: str = "capability") -> dict:
    """MC accuracy and neutral-text perplexity of ``lm.model`` as it is right now
    (``mc=False`` or ``ppl=False`` leaves that part out: the perplexity alone takes a few
    seconds, the MC items most of the time). ``progress``: a bar ``desc`` over the items
    (MC items, then paragraphs), batch by batch."""
    from pkt.bars import item_bar

    items = load_mc(n_mc) if mc else []
    texts = paragraphs() if ppl else []
    out: dict = {}
    with item_bar(len(items) + len(texts), desc, progress) as bar:
        if mc:
            out.update(_mc(lm, items, batch_size, scope, bar.update))
        if ppl:
            out["ppl"] = _ppl(lm, texts, batch_size, scope, bar.update)
    return out


def _mc(lm, items: list[dict], batch_size: int, scope: Scope | None, tick=None) -> dict:
    tok = lm.tokenizer
    groups = [(tok(MC_PROMPT.format(question=r["question"]), add_special_tokens=False)["input_ids"],
               [tok(" " + str(c), add_special_tokens=False)["input_ids"] for c in r["choices"]])
              for r in items]
    # the question is computed once per item, not once per choice (same figures)
    lp = choice_logprobs(lm.model, groups, tok.pad_token_id, batch_size, scope, tick)
    correct = 0
    for r, scored in zip(items, lp):
        scores = [s / max(n, 1) for s, n in scored]
        correct += scores.index(max(scores)) == int(r["answer"])
    return {"mc_accuracy": correct / len(items), "n_mc": len(items)}


def _ppl(lm, texts: list[str], batch_size: int, scope: Scope | None, tick=None) -> float:
    tok = lm.tokenizer
    text_seqs = []
    for p in texts:
        ids = tok(p, add_special_tokens=False)["input_ids"]
        text_seqs.append((ids[:1], ids[1:]))
    tl = continuation_logprobs(lm.model, text_seqs, tok.pad_token_id, batch_size, scope, tick)
    nll = -sum(s for s, _ in tl) / max(sum(n for _, n in tl), 1)
    return math.exp(nll)


def base_figures(lm, cache_dir: str | Path | None, n_mc: int | None, batch_size: int = 16,
                 progress: bool = False) -> dict:
    """The plain model's figures, cached per (model fingerprint, probe) in the artifact store."""
    def plain() -> dict:
        return measure(lm, n_mc, batch_size, progress=progress, desc="capability (plain model)")

    if cache_dir is None:
        return plain()
    store = ArtifactStore(Path(cache_dir) / "artifacts")
    key = {"stage": "capability-base", "model_fingerprint": lm.fingerprint,
           "probe": probe_hash(n_mc)}
    figs, _ = store.cached_json("capability_base", key, plain)
    return figs


def retention(lm, method, cache_dir, n_mc: int | None = None, batch_size: int = 16,
              progress: bool = False) -> dict:
    """MC accuracy and perplexity with ``method``'s intervention active, and their ratios to
    the plain model's. A method that measured exactly this already (NPTI's ``strength=auto``
    at the chosen strength, same items) hands its figures over, and a method that leaves
    the model alone (the plain model, prompting: the probe has no persona prompt) takes the
    plain model's (``measured_by``). ``progress``: a bar over the items of each probe run."""
    base = base_figures(lm, cache_dir, n_mc, batch_size, progress)
    measured = getattr(method, "capability_measured", None)
    now = measured(n_mc) if callable(measured) else None
    how = "strength_auto" if now is not None else "evaluation"
    if now is None and not getattr(method, "edits_model", True):
        now, how = base, "plain_model"
    if now is None:
        scope = Scope.marked()  # the scored continuations stand for generated tokens
        with method.intervention(scope=scope):
            now = measure(lm, n_mc, batch_size, scope, progress=progress,
                          desc=f"capability ({method.name})")
    return {
        "measured_by": how,
        "mc_accuracy": now["mc_accuracy"], "mc_accuracy_base": base["mc_accuracy"],
        "mc_ratio": now["mc_accuracy"] / base["mc_accuracy"] if base["mc_accuracy"] else None,
        "ppl": now["ppl"], "ppl_base": base["ppl"], "ppl_ratio": now["ppl"] / base["ppl"],
        "n_mc": now["n_mc"],
    }
