"""LoRA training data: persona answers re-paired with the neutral prompt, split, batches."""

from __future__ import annotations

import logging
import random

import torch

from pkt import prompts
from pkt.errors import PktError
from pkt.generation import chat_prompt

log = logging.getLogger("pkt.methods.lora")


# -- data ----------------------------------------------------------------------------
def training_examples(tokenizer, responses: list[dict], aspect: str, max_length: int) -> list[dict]:
    """(neutral prompt, persona answer + EOS) token sequences; labels mask the prompt with -100."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise PktError("the tokenizer has no EOS token; cannot build LoRA training examples")
    out = []
    for r in responses:
        if r.get("aspect") != aspect or not str(r.get("response", "")).strip():
            continue
        p = tokenizer(chat_prompt(tokenizer, prompts.neutral(r["question"])),
                      add_special_tokens=False)["input_ids"]
        a = tokenizer(str(r["response"]).strip(), add_special_tokens=False)["input_ids"] + [eos]
        room = int(max_length) - len(p)
        if room < 1:
            log.warning("skipping a training example: its prompt alone has %d tokens "
                        "(method.max_length=%d)", len(p), max_length)
            continue
        a = a[:room]
        out.append({"input_ids": list(p) + list(a), "labels": [-100] * len(p) + list(a)})
    return out


def split(examples: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Seeded shuffle, then at least one validation and one training example."""
    if len(examples) < 2:
        raise PktError(f"LoRA needs at least 2 non-empty persona answers to train and validate, "
                       f"got {len(examples)} (raise data.n_search)")
    idx = list(range(len(examples)))
    random.Random(f"lora-split:{seed}").shuffle(idx)
    n_val = min(max(1, round(float(val_fraction) * len(examples))), len(examples) - 1)
    return [examples[i] for i in idx[n_val:]], [examples[i] for i in idx[:n_val]]


def collate(batch: list[dict], pad_id: int) -> dict:
    """Right-padded ``input_ids`` / ``attention_mask`` / ``labels`` (padding labelled -100)."""
    width = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), width), int(pad_id), dtype=torch.long)
    attn = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for i, b in enumerate(batch):
        n = len(b["input_ids"])
        ids[i, :n] = torch.tensor(b["input_ids"], dtype=torch.long)
        attn[i, :n] = 1
        labels[i, :n] = torch.tensor(b["labels"], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": attn, "labels": labels}


# -- model ---------------------------------------------------------------------------
