"""Batched, left-padded chat generation (greedy by default) with a progress bar."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from pkt.bars import AnswerBar
from pkt.errors import PktError
from pkt.hooks import Scope, position_ids
from pkt.kvcache import slab_cache, sliding_window


@dataclass
class GenConfig:
    max_new_tokens: int = 96
    batch_size: int = 16
    repetition_penalty: float = 1.15
    # precision of neuron identification's persona answers (search_gen): auto, model,
    # float32, bfloat16 or float16 (see :func:`identification_dtype`); evaluation always
    # generates with the model as loaded
    dtype: str = "model"
    # processes that answer identification's two aspects side by side: 1, 2 or auto (2 on a
    # multi-core CPU); evaluation generates in one process
    workers: int | str = 1

    @classmethod
    def from_cfg(cls, cfg, **overrides) -> GenConfig:
        d = {k: cfg[k] for k in ("max_new_tokens", "batch_size", "repetition_penalty", "dtype", "workers")
             if k in cfg}
        d.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**d)


    @classmethod
    def search(cls, lm=None, overrides: dict | None = None) -> GenConfig:
        """Persona role-play generation on the search split (identification, LoRA's data):
        :data:`SEARCH_GEN`, the model's own ``search_dtype``, then ``overrides`` (a null
        value keeps the default)."""
        d = dict(SEARCH_GEN)
        own = getattr(lm, "search_dtype", None)
        if own:
            d["dtype"] = own
        d.update({k: v for k, v in dict(overrides or {}).items() if v is not None})
        return cls(**d)


# the defaults of persona role-play generation (the paper: 500 tokens, penalty 1.1; shorter
# on a CPU); conf/config.yaml's search_gen block says the same (tested)
SEARCH_GEN = {"max_new_tokens": 80, "batch_size": 48, "repetition_penalty": 1.1,
              "dtype": "auto", "workers": "auto"}


def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (AMX or AVX512-BF16)."""
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except Exception:  # older torch, another platform
        return False


def identification_dtype(model, name: str) -> torch.dtype:
    """The dtype ``GenConfig.dtype`` asks for, for ``model``.

    ``model``: the model's own. ``auto``: bfloat16 for a float32 model on a CPU with native
    bfloat16 matrix units (on such CPUs decoding is bound by reading the weights, and
    half-width weights decode about twice as fast), otherwise the model's own.
    """
    own = next(model.parameters()).dtype
    name = (name or "model").strip().lower()
    if name == "model":
        return own
    if name == "auto":
        on_cpu = next(model.parameters()).device.type == "cpu"
        return torch.bfloat16 if own == torch.float32 and on_cpu and native_bf16() else own
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


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


def context_length(model) -> int | None:
    """The model's context in tokens (its position table), None when it has none."""
    cfg = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions"):
        n = getattr(cfg, name, None)
        if isinstance(n, int) and n > 0:
            return n
    return None


def check_context(lm, prompts: list[tuple[str, str]], max_new_tokens: int, what: str) -> None:
    """Before any generation: every prompt (``(where, text)``, ``where`` naming its file and
    line) plus ``max_new_tokens`` must fit the model's context; else one PktError line."""
    n = context_length(lm.model)
    if n is None:
        return
    if max_new_tokens >= n:
        raise PktError(f"{what}.max_new_tokens={max_new_tokens} does not fit this model's "
                       f"context of {n} tokens (at most {n - 1}, less the prompt)")
    tok = lm.tokenizer
    for where, text in prompts:
        if len(text.encode()) + 2 + max_new_tokens <= n:
            continue  # fits whatever the tokenizer: a (byte-level) token spans >= 1 byte
        k = len(tok(text, add_special_tokens=False)["input_ids"])
        if k + max_new_tokens > n:
            raise PktError(f"{where}: this question makes a prompt of {k} tokens, which with "
                           f"{what}.max_new_tokens={max_new_tokens} exceeds the model's "
                           f"context of {n} tokens")


def eos_ids(model, tokenizer) -> set[int]:
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


# -- the decoding engine -------------------------------------------------------------------

MIN_SHARED = 8  # a prompt prefix shared by fewer tokens is not worth its own forward pass


def _lcp(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def prefix_groups(rows: list[list[int]]) -> list[tuple[int, int, int]]:
    """Split consecutive ``rows`` into groups that share a prompt prefix.

    Returns ``(start, end, prefix_len)`` triples covering ``rows`` in order. The split
    maximises the prompt tokens not recomputed, ``(size - 1) * prefix_len`` summed over the
    groups (dynamic programming over the rows); a prefix always leaves at least two tokens
    of every row for the batched pass (so that pass is never mistaken for a decode step),
    and one of fewer than ``MIN_SHARED`` tokens is not shared.
    """
    n = len(rows)
    adj = [_lcp(rows[i - 1], rows[i]) for i in range(1, n)]
    best = [0] * (n + 1)
    cut: list[tuple[int, int]] = [(0, 0)] * (n + 1)
    for i in range(1, n + 1):
        best[i], cut[i] = best[i - 1], (i - 1, 0)
        lcp, shortest = len(rows[i - 1]), len(rows[i - 1])
        for j in range(i - 2, -1, -1):  # group rows j .. i-1
            lcp = min(lcp, adj[j])
            shortest = min(shortest, len(rows[j]))
            p = min(lcp, shortest - 2)
            if p < MIN_SHARED:
                break
            gain = best[j] + (i - j - 1) * p
            if gain > best[i]:
                best[i], cut[i] = gain, (j, p)
    out = []
    i = n
    while i > 0:
        j, p = cut[i]
        out.append((j, i, p))
        i = j
    return out[::-1]


def repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """The usual rule: a seen token's logit is divided by ``penalty`` if > 0, else multiplied."""
    if penalty == 1.0:
        return logits
    return torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)


def _prefill(model, rows: list[list[int]], device, scope: Scope | None, capacity: int = 0):
    """KV cache, attention mask and last position ids of a batch of prompts.

    Rows that share a prefix (:func:`prefix_groups`) get its keys and values from one
    forward pass of the prefix alone; the rest of every row then goes through one batched
    pass on top of that cache. Prefixes and rests are left padded, so the attention mask
    has zeros at both paddings; position ids count real tokens only. Returns the logits of
    each row's last prompt position too.

    A model with sliding-window attention layers (Mistral, Gemma 2/3, ...) shares a
    prefix only when the whole cache (prefix, rest and answer) fits in its window: the
    window counts cache slots, so the padding between a prefix and a rest would otherwise
    sit inside it. Without sharing, rows are left padded only, as in transformers'
    ``generate``, and the window is exact.
    """
    from transformers import DynamicCache

    cfg = model.config
    groups = prefix_groups(rows)
    window = sliding_window(cfg) if any(p for _s, _e, p in groups) else None
    if window is not None:
        need = max(p for _s, _e, p in groups) + \
            max(len(rows[i]) - p for s, e, p in groups for i in range(s, e)) + capacity
        if need > window:
            groups = [(0, len(rows), 0)]
    pmax = max(p for _s, _e, p in groups)
    kv: list[list[torch.Tensor]] | None = None
    B = len(rows)
    pre_mask = torch.zeros(B, pmax, dtype=torch.long)
    if pmax > 0:
        for s, e, p in groups:
            if p == 0:
                continue
            ids = torch.tensor([rows[s][:p]], dtype=torch.long, device=device)
            if scope is not None:
                scope.mark(torch.zeros_like(ids, dtype=torch.bool))
            cache = DynamicCache(config=cfg)
            model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
            layers = [(k, v) for k, v, *_ in cache]
            if kv is None:
                kv = [[torch.zeros((B, *k.shape[1:2], pmax, k.shape[-1]), dtype=k.dtype, device=k.device),
                       torch.zeros((B, *v.shape[1:2], pmax, v.shape[-1]), dtype=v.dtype, device=v.device)]
                      for k, v in layers]
            for (k, v), slot in zip(layers, kv):
                slot[0][s:e, :, pmax - p:] = k
                slot[1][s:e, :, pmax - p:] = v
            pre_mask[s:e, pmax - p:] = 1
    rests = [rows[i][p:] for s, e, p in groups for i in range(s, e)]
    smax = max(len(r) for r in rests)
    ids = torch.zeros(B, smax, dtype=torch.long)
    rest_mask = torch.zeros(B, smax, dtype=torch.long)
    for b, r in enumerate(rests):
        ids[b, smax - len(r):] = torch.tensor(r, dtype=torch.long)
        rest_mask[b, smax - len(r):] = 1
    mask = torch.cat([pre_mask, rest_mask], 1).to(device)
    pos = position_ids(mask)[:, pmax:]
    cache = slab_cache(model, kv, pmax + smax + capacity)
    if scope is not None:  # the last prompt position produces the first generated token
        m = torch.zeros(B, smax, dtype=torch.bool, device=device)
        m[:, -1] = True
        scope.mark(m)
    out = model(input_ids=ids.to(device), attention_mask=mask, position_ids=pos, cache=cache,
                use_cache=True, logits_to_keep=1)
    return cache, mask, pos[:, -1:], out.logits[:, -1]


@torch.no_grad()
def decode_batch(model, rows: list[list[int]], gen: GenConfig, eos: set[int],
                 scope: Scope | None = None, on_step=None) -> list[list[int]]:
    """Greedy decoding of one batch of prompt ids; returns each row's generated ids.

    A row stops at its first EOS (kept) or after ``gen.max_new_tokens``; finished rows
    leave the batch (their cache rows are dropped), so later steps cost less. With
    ``scope`` (a marked :class:`pkt.hooks.Scope`), ``scope.mark()`` gets before every
    forward pass the positions that produce a generated token: the last prompt position at prefill, every
    row at a decode step (all rows in the batch are still generating), nothing while a
    shared prefix is computed. ``on_step(tokens, alive)``, when given, is called after each
    token step: the tokens it generated (one per row still generating) and the rows that go
    on generating after it (0 at the last step).
    """
    on_step = on_step or (lambda tokens, alive: None)
    device = next(model.parameters()).device
    cache, mask, pos, logits = _prefill(model, rows, device, scope, gen.max_new_tokens)
    B = len(rows)
    vocab = logits.shape[-1]
    seen = torch.zeros(B, vocab, dtype=torch.bool, device=device)
    for b, r in enumerate(rows):
        seen[b, torch.tensor([t for t in r if t < vocab], dtype=torch.long, device=device)] = True
    eos_t = torch.tensor(sorted(eos), dtype=torch.long, device=device)
    alive = torch.arange(B, device=device)  # original row of each batch row
    outs: list[list[int]] = [[] for _ in range(B)]
    for step in range(gen.max_new_tokens):
        nxt = repetition_penalty(logits.float(), seen, gen.repetition_penalty).argmax(-1)
        for b, t in zip(alive.tolist(), nxt.tolist()):
            outs[b].append(t)
        n = len(nxt)
        if step == gen.max_new_tokens - 1:
            on_step(n, 0)
            break
        seen[torch.arange(len(nxt), device=device), nxt] = True
        done = torch.isin(nxt, eos_t)
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(1)
            if keep.numel() == 0:
                on_step(n, 0)
                break
            cache.batch_select_indices(keep)
            alive, nxt, mask, pos, seen = alive[keep], nxt[keep], mask[keep], pos[keep], seen[keep]
        on_step(n, len(alive))
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
        pos = pos + 1
        if scope is not None:
            scope.mark(torch.ones(len(alive), 1, dtype=torch.bool, device=device))
        logits = model(input_ids=nxt.unsqueeze(1), attention_mask=mask, position_ids=pos,
                       cache=cache, use_cache=True).logits[:, -1]
    if scope is not None:
        scope.mark(None)
    return outs


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], gen: GenConfig, desc: str = "generate",
             progress: bool = True, stats: GenStats | None = None,
             scope: Scope | None = None, engine: str = "pkt",
             on_step=None) -> list[Generation]:
    """Greedy generation for chat-formatted ``prompts``, returned in input order.

    ``engine="pkt"`` (default) is :func:`decode_batch`: prompts sorted by their token ids
    so that rows sharing a prefix (a persona description, an instruction) sit in the same
    batch and compute it once, finished rows dropped from the batch, and, with
    ``scope``, the generated-token positions marked for a recording hook.
    ``engine="hf"`` is transformers' ``generate`` on left-padded batches (the reference
    the engine is tested against; it penalises padding tokens as repeats, the engine does
    not).

    The bar (``progress``) moves at every decode step (:class:`pkt.bars.AnswerBar`);
    ``on_step`` is called at every decode step too (see :func:`decode_batch`).
    """
    if engine not in ("pkt", "hf"):
        raise ValueError(f"unknown engine {engine!r}")
    if scope is not None and engine != "pkt":
        raise ValueError("recording positions needs engine='pkt'")
    device = next(model.parameters()).device
    eos = eos_ids(model, tokenizer)
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: ids[i] if engine == "pkt" else len(ids[i]))
    results: list[Generation | None] = [None] * len(prompts)
    bar = AnswerBar(len(prompts), desc, progress, gen.max_new_tokens)

    def step(tokens: int, alive: int) -> None:
        bar.step(tokens, alive)
        if on_step is not None:
            on_step(tokens, alive)

    for start in range(0, len(order), gen.batch_size):
        idx = order[start : start + gen.batch_size]
        bar.start(len(idx))
        t0 = time.perf_counter()
        if engine == "pkt":
            outs = decode_batch(model, [ids[i] for i in idx], gen, eos, scope, step)
        else:
            outs = _hf_batch(model, tokenizer, [prompts[i] for i in idx], gen, eos, device)
        dt = time.perf_counter() - t0
        n_new = 0
        for i, out in zip(idx, outs):
            resp = strip_response(out, eos, tokenizer.pad_token_id)
            n_new += len(resp)
            results[i] = Generation(text=tokenizer.decode(resp, skip_special_tokens=True).strip(),
                                    prompt_ids=list(ids[i]), response_ids=resp)
        if stats is not None:
            stats.tokens += n_new
            stats.seconds += dt
        bar.end(n_new)
    bar.close()
    return results  # type: ignore[return-value]


def _hf_batch(model, tokenizer, texts: list[str], gen: GenConfig, eos: set[int], device):
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    out = model.generate(**enc, max_new_tokens=gen.max_new_tokens, do_sample=False,
                         repetition_penalty=gen.repetition_penalty,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=sorted(eos),
                         temperature=None, top_p=None, top_k=None)
    return out[:, enc["input_ids"].shape[1]:].tolist()
