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
            cache: PromptCache | None, pad_id: int = 0) -> tuple[torch.Tensor, list[RowCache], int]:
    """The next-token logits ``[rows, vocab]`` of ``prompts`` (each with its edit, which
    acts on the prompt only with ``include_prompt``), each row's cache, and the number of
    forward passes. ``cache``, when
    given, provides cached prefixes to the rows whose prefill no edit touches, and keeps
    their prompts. Rows whose new parts differ much in length go in separate passes
    (:func:`groups`), so that padding never costs more than the rows themselves."""
    plain = [cache is not None and (e is None or not e.include_prompt) for e in edits]
    found = [cache.longest(ids) if p else (0, None) for ids, p in zip(prompts, plain)]
    logits: list = [None] * len(prompts)
    rows: list = [None] * len(prompts)
    passes = groups([len(p) - n for p, (n, _kv) in zip(prompts, found)])
    for g in passes:
        lg, rc = _pass(model, [prompts[i] for i in g], [edits[i] for i in g],
                       [found[i] for i in g], pad_id)
        for k, i in enumerate(g):
            logits[i], rows[i] = lg[k : k + 1], rc[k]
            if plain[i]:
                cache.put(prompts[i], rc[k])
    return torch.cat(logits), rows, len(passes)


def groups(new: list[int], slack: int = 16) -> list[list[int]]:
    """Row indices in passes: by length of the new part, a row joins the current pass while
    its new part is at most ``max(slack, shortest)`` tokens longer than the pass's shortest
    (at most about twice the work of the rows alone)."""
    out: list[list[int]] = []
    for i in sorted(range(len(new)), key=lambda i: (new[i], i)):
        if out and new[i] - new[out[-1][0]] <= max(slack, new[out[-1][0]]):
            out[-1].append(i)
        else:
            out.append([i])
    return out


def _pass(model, prompts: list[list[int]], edits: list[RowEdit | None], found: list,
          pad_id: int) -> tuple[torch.Tensor, list[RowCache]]:
    """One forward pass of ``prompts``, each from its cached prefix ``found`` (length, keys
    and values per layer)."""
    dev = next(model.parameters()).device
    B = len(prompts)
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
        rows.append(one)
    return logits, rows
