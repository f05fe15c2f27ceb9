"""Any Hugging Face causal LM as judge, in one forward pass and with nothing to parse.

The rubric is followed by the forced answer prefix ``Rating: [[`` and the rating is the
expectation of the digit 1-5 under the model's next-token distribution restricted to those
five digits (deterministic; ``raw`` holds the five probabilities as JSON).
"""

from __future__ import annotations

import inspect
import json

from tqdm.auto import tqdm

from pkt.errors import PktError
from pkt.eval.judge.results import check_items, result
from pkt.eval.judge.rubric import RATING_MAX, RATING_MIN, build_rubric, check_rubric
from pkt.hooks import position_ids
from pkt.params import AT_LEAST_1, Rule, check_device


class LocalJudge:
    RULES = {"batch_size": AT_LEAST_1, "path": Rule(nonempty=True),
             "dtype": Rule(choices="pkt.models:_DTYPES"), "device": Rule(check=check_device)}

    """Any Hugging Face causal LM as judge: expected rating from one forward pass."""

    # its public name: configs (_target_), the validator's rules and pickles use it
    __module__ = "pkt.eval.judge"
    backend = "local"

    def __init__(self, path: str | None = None, lm=None, dtype: str = "float32",
                 device: str = "auto", batch_size: int = 4, name: str = "local"):
        if lm is None and not path:
            raise PktError("the local judge needs judge.path (an HF id or a local directory)")
        if int(batch_size) < 1:
            raise PktError(f"judge.batch_size must be at least 1, got {batch_size}")
        self.path = str(path) if path else None
        self.dtype, self.device = dtype, device
        self.batch_size = int(batch_size)
        self.name = name
        self._lm = lm
        self._digit_ids: list[int] | None = None

    def __repr__(self) -> str:
        return f"LocalJudge(name={self.name!r}, path={self.path!r})"

    @property
    def lm(self):
        if self._lm is None:
            from pkt.models import load_pretrained_dir, resolve_device, resolve_dtype

            self._lm = load_pretrained_dir(self.path, resolve_dtype(self.dtype),
                                           resolve_device(self.device), self.name)
        return self._lm

    def describe(self) -> dict:
        d = {"backend": self.backend, "model": self.name, "path": self.path}
        if self._lm is not None:
            d["model"] = getattr(self._lm, "name", self.name)
            d["fingerprint"] = getattr(self._lm, "fingerprint", None)
        return d

    def digit_ids(self) -> list[int]:
        """Token ids of "1".."5"; an error if the tokenizer splits a digit."""
        if self._digit_ids is None:
            tok = self.lm.tokenizer
            ids = []
            for d in range(RATING_MIN, RATING_MAX + 1):
                enc = tok.encode(str(d), add_special_tokens=False)
                if len(enc) != 1:
                    raise PktError(f"local judge '{self.name}': the digit '{d}' is not a single "
                                   f"token in its tokenizer ({len(enc)} tokens); choose "
                                   f"another judge model")
                ids.append(int(enc[0]))
            if len(set(ids)) != len(ids):
                raise PktError(f"local judge '{self.name}': the digits 1-5 share token ids")
            self._digit_ids = ids
        return self._digit_ids

    def prompts(self, items: list[dict], rubric: str, trait: str | None = None,
                facets: list | None = None) -> list[str]:
        """The full judge inputs: chat prompt + the forced answer prefix ``Rating: [[``."""
        from pkt.generation import chat_prompt

        check_rubric(rubric)
        tok = self.lm.tokenizer
        return [chat_prompt(tok, build_rubric(rubric, q, r, trait, facets)) + "Rating: [["
                for q, r in check_items(items)]

    def rate(self, items: list[dict], rubric: str, trait: str | None = None,
             facets: list | None = None, progress: bool = False) -> list[dict]:
        import torch

        check_rubric(rubric)
        if not items:
            return []
        prompts = self.prompts(items, rubric, trait, facets)
        ids = self.digit_ids()
        lm = self.lm
        model, tok = lm.model, lm.tokenizer
        device = lm.device
        digits = torch.arange(RATING_MIN, RATING_MAX + 1, dtype=torch.float64)
        keep_last = "logits_to_keep" in inspect.signature(model.forward).parameters
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: list[dict | None] = [None] * len(prompts)
        old_side = tok.padding_side
        tok.padding_side = "left"
        bar = tqdm(total=len(prompts), desc=f"judge {rubric}", unit="q", disable=not progress)
        try:
            with torch.inference_mode():
                for start in range(0, len(order), self.batch_size):
                    idx = order[start:start + self.batch_size]
                    enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True,
                              add_special_tokens=False)
                    mask = enc["attention_mask"].to(device)
                    input_ids = enc["input_ids"].to(device)
                    # positions count real tokens only, so a left-padded row scores as alone
                    pos = position_ids(mask)
                    kw = {"logits_to_keep": 1} if keep_last else {}
                    out = model(input_ids=input_ids, attention_mask=mask, position_ids=pos,
                                use_cache=False, **kw)
                    logits = out.logits[:, -1, :].float()[:, ids].double().cpu()
                    probs = torch.softmax(logits, dim=-1)
                    expect = (probs * digits).sum(-1)
                    for row, i in enumerate(idx):
                        p = {str(d): round(float(probs[row, k]), 6)
                             for k, d in enumerate(range(RATING_MIN, RATING_MAX + 1))}
                        rating = min(max(float(expect[row]), RATING_MIN), RATING_MAX)
                        results[i] = result(rating, json.dumps(p))
                    bar.update(len(idx))
        finally:
            tok.padding_side = old_side
            bar.close()
        return results  # type: ignore[return-value]
