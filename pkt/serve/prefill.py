"""Newcomers' prompts through the model together, each from its longest cached prefix.

The decoding batch (:mod:`pkt.serve.batcher`) admits the requests that arrived since its
last step; their prompts go through one forward pass instead of one each. A row whose
prompt prefill is the plain model's (no edit, or an edit that leaves the prompt alone)
starts from the keys and values of the longest earlier prompt it begins with
(:class:`pkt.serve.rowcache.PromptCache`) and computes only the rest.

The pass lays the rows out as ``[cached part | new part]``: the cached slots right-aligned
before slot ``P`` (the longest cached part), the new tokens right-aligned after it, zeros
and a zero mask in between. Position ids count each row's own tokens, so every real token
sees exactly what it would see alone; the gaps are masked. Each row's slots then leave the
pass without the gaps, as a one-row :class:`pkt.serve.rowcache.RowCache` that the batch
admits.
"""

from __future__ import annotations

import torch

from pkt.rows import RowEdit, RowTables
from pkt.serve.rowcache import PromptCache, RowCache


def prefill(model, prompts: list[list[int]], edits: list[RowEdit | None],
            cache: PromptCache | None, pad_id: int = 0) -> tuple[torch.Tensor, list[RowCache]]:
    """The next-token logits ``[rows, vocab]`` of ``prompts`` (each with its edit, which
    acts on the prompt only with ``include_prompt``) and each row's cache. ``cache``, when
    given, provides cached prefixes to the rows whose prefill no edit touches, and keeps
    their prompts."""
    dev = next(model.parameters()).device
    B = len(prompts)
    plain = [cache is not None and (e is None or not e.include_prompt) for e in edits]
    found = [cache.longest(ids) if p else (0, None) for ids, p in zip(prompts, plain)]
    starts = [n for n, _kv in found]
    P = max(starts)
    S = max(len(ids) - s for ids, s in zip(prompts, starts))
    batch = RowCache(model)
    mask = torch.zeros(B, P + S, dtype=torch.long, device=dev)
    ids = torch.full((B, S), pad_id, dtype=torch.long, device=dev)
    pos = torch.zeros(B, S, dtype=torch.long, device=dev)
    for b, (p, s) in enumerate(zip(prompts, starts)):
        m = len(p) - s
        mask[b, P - s : P] = 1
        mask[b, P + S - m :] = 1
        ids[b, S - m :] = torch.tensor(p[s:], dtype=torch.long, device=dev)
        pos[b] = torch.arange(s + m - S, s + m, device=dev).clamp_min(0)
    if P:  # the cached parts, right-aligned before slot P
        for i, layer in enumerate(batch.layers):
            k0, v0 = next(kv for _n, kv in found if kv is not None)[i]
            k = k0.new_zeros(B, k0.shape[1], P, k0.shape[3])
            v = v0.new_zeros(B, v0.shape[1], P, v0.shape[3])
            for b, (s, kv) in enumerate(found):
                if s:
                    k[b, :, P - s :] = kv[i][0][0, :, :s]
                    v[b, :, P - s :] = kv[i][1][0, :, :s]
            layer.update(k, v)
    tables = RowTables(model, edits, 1, prefill=True)
    tables.at([0] * B)
    with tables.hooks():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=batch.cache,
                       use_cache=True, logits_to_keep=1).logits[:, -1]
    rows = []
    for b, (p, s) in enumerate(zip(prompts, starts)):
        m = len(p) - s
        keep = torch.cat([torch.arange(P - s, P), torch.arange(P + S - m, P + S)]).to(dev)
        one = RowCache(model)
        one.seed([(layer._k[b : b + 1].index_select(2, keep),
                   layer._v[b : b + 1].index_select(2, keep)) for layer in batch.layers], len(p))
        if plain[b]:
            cache.put(p, one)
        rows.append(one)
    return logits, rows
