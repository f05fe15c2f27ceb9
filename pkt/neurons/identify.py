"""NPTI step 1: persona role-play generation, then streamed activation statistics."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pkt import prompts
from pkt.artifacts import ArtifactStore
from pkt.bench import Bench
from pkt.generation import GenConfig, GenStats, chat_prompt, generate
from pkt.models import LoadedModel
from pkt.neurons.stats import collect_stats

log = logging.getLogger(__name__)

ASPECTS = ("high", "low")
STATS_VERSION = 2  # 2: histogram bins closed on the right, counts read off the histogram


def stats_key(lm: LoadedModel, bench: Bench, seed: int, gen: GenConfig) -> dict:
    return {
        "stage": "npti-statistics",
        "version": STATS_VERSION,
        "model": lm.name,
        "model_fingerprint": lm.fingerprint,
        "trait": bench.trait,
        "data_hash": bench.data_hash,
        "n_search": len(bench.search),
        "search_ids": [int(r["_line"]) for r in bench.search],
        "seed": seed,
        "max_new_tokens": gen.max_new_tokens,
        "repetition_penalty": gen.repetition_penalty,
        "prompt": prompts.ROLEPLAY,
    }


def roleplay_prompts(lm: LoadedModel, bench: Bench, aspect: str, seed: int) -> list[str]:
    return [chat_prompt(lm.tokenizer, prompts.roleplay(bench.persona_for(aspect, i, seed),
                                                       r["question"]))
            for i, r in enumerate(bench.search)]


def compute_statistics(lm: LoadedModel, bench: Bench, seed: int, gen: GenConfig,
                       progress: bool = True, gen_stats: GenStats | None = None) -> dict:
    """Generate persona answers for both aspects and gather P(a > 0) and p95 per neuron."""
    out: dict = {"responses": []}
    for aspect in ASPECTS:
        texts = roleplay_prompts(lm, bench, aspect, seed)
        gens = generate(lm.model, lm.tokenizer, texts, gen, desc=f"persona answers ({aspect})",
                        progress=progress, stats=gen_stats)
        st = collect_stats(lm.model, [(g.prompt_ids, g.response_ids) for g in gens],
                           lm.tokenizer.pad_token_id, batch_size=gen.batch_size,
                           progress=progress, desc=f"neuron statistics ({aspect})")
        out[f"{aspect}.prob"] = st.prob().cpu()
        out[f"{aspect}.p95"] = st.percentile(0.95).cpu()
        out[f"{aspect}.counts"] = st.counts.cpu()
        out[f"{aspect}.tokens"] = st.tokens
        for i, (r, g) in enumerate(zip(bench.search, gens)):
            out["responses"].append({
                "aspect": aspect, "question": r["question"],
                "persona": bench.persona_for(aspect, i, seed), "response": g.text,
                "n_tokens": len(g.response_ids),
            })
    return out


def load_or_compute(store: ArtifactStore, lm: LoadedModel, bench: Bench, seed: int,
                    gen: GenConfig, recompute: bool = False, progress: bool = True,
                    gen_stats: GenStats | None = None) -> tuple[dict, Path, bool]:
    """Statistics for both aspects from the cache, or computed and cached. Returns (stats, dir, hit)."""
    key = stats_key(lm, bench, seed, gen)
    path = None if recompute else store.load("statistics", key)
    if path is not None:
        log.info("reusing cached neuron statistics %s", path)
        return read_statistics(path), path, True
    st = compute_statistics(lm, bench, seed, gen, progress=progress, gen_stats=gen_stats)

    def write(tmp: Path):
        tensors = {k: v.contiguous() for k, v in st.items() if isinstance(v, torch.Tensor)}
        save_file(tensors, str(tmp / "statistics.safetensors"))
        with open(tmp / "responses.jsonl", "w", encoding="utf-8") as f:
            for r in st["responses"]:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")

    tokens = {f"{a}.tokens": st[f"{a}.tokens"] for a in ASPECTS}
    path = store.save("statistics", key, write, extra={"tokens": tokens})
    return st, path, False


def read_statistics(path: Path) -> dict:
    st: dict = dict(load_file(str(Path(path) / "statistics.safetensors")))
    meta = json.loads((Path(path) / "meta.json").read_text())
    st.update(meta.get("tokens", {}))
    st["responses"] = read_responses(path)
    return st


def read_responses(path: Path) -> list[dict]:
    with open(Path(path) / "responses.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
