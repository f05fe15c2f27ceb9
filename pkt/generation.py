"""Batched, left-padded chat generation (greedy by default) with a progress bar."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm


@dataclass
class GenConfig:
    max_new_tokens: int = 96
    batch_size: int = 16
    repetition_penalty: float = 1.15

    @classmethod
    def from_cfg(cls, cfg, **overrides) -> GenConfig:
        d = {k: cfg[k] for k in ("max_new_tokens", "batch_size", "repetition_penalty") if k in cfg}
        d.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**d)


    def merged(self, overrides: dict | None) -> GenConfig:
        """This config with some fields replaced (e.g. the search_gen block)."""
        return GenConfig(**{**self.__dict__, **dict(overrides or {})})


@dataclass
class Generation:
    text: str
    prompt_ids: list[int]
    response_ids: list[int]  # generated tokens, up to and including EOS, no padding


@dataclass
class GenStats:
    tokens: int = 0
    seconds: float = 0.0
    per_batch: list = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def chat_prompt(tokenizer, user: str, system: str | None = None) -> str:
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}
    ]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def _eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    eos = getattr(model.generation_config, "eos_token_id", None)
    for e in eos if isinstance(eos, (list, tuple)) else [eos]:
        if e is not None:
            ids.add(int(e))
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def strip_response(ids: list[int], eos: set[int], pad_id: int | None) -> list[int]:
    """Generated ids up to and including the first EOS; nothing after it."""
    out = []
    for t in ids:
        out.append(t)
        if t in eos:
            break
    # a sequence that never ended may still end with padding only if pad is not an EOS
    while out and pad_id is not None and out[-1] == pad_id and pad_id not in eos:
        out.pop()
    return out


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], gen: GenConfig, desc: str = "generate",
             progress: bool = True, stats: GenStats | None = None) -> list[Generation]:
    """Greedy generation for chat-formatted ``prompts`` in left-padded batches.

    Prompts are grouped by length (fewer pad tokens) and returned in input order.
    """
    device = next(model.parameters()).device
    eos = _eos_ids(model, tokenizer)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[Generation | None] = [None] * len(prompts)
    bar = tqdm(total=len(prompts), desc=desc, disable=not progress, unit="q")
    for start in range(0, len(order), gen.batch_size):
        idx = order[start : start + gen.batch_size]
        enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                        add_special_tokens=False).to(device)
        t0 = time.perf_counter()
        out = model.generate(
            **enc,
            max_new_tokens=gen.max_new_tokens,
            do_sample=False,
            repetition_penalty=gen.repetition_penalty,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=sorted(eos),
            temperature=None,
            top_p=None,
            top_k=None,
        )
        dt = time.perf_counter() - t0
        plen = enc["input_ids"].shape[1]
        n_new = 0
        for row, i in enumerate(idx):
            resp = strip_response(out[row, plen:].tolist(), eos, tokenizer.pad_token_id)
            n_new += len(resp)
            pids = enc["input_ids"][row][enc["attention_mask"][row].bool()].tolist()
            results[i] = Generation(
                text=tokenizer.decode(resp, skip_special_tokens=True).strip(),
                prompt_ids=pids,
                response_ids=resp,
            )
        if stats is not None:
            stats.tokens += n_new
            stats.seconds += dt
        bar.update(len(idx))
        bar.set_postfix(tok_s=f"{n_new / dt:.0f}" if dt > 0 else "-")
    bar.close()
    return results  # type: ignore[return-value]
