"""Teacher-forced log-likelihood of continuations (perplexity, option scoring)."""

from __future__ import annotations

import torch

from pkt.hooks import Scope, position_ids
from pkt.neurons.stats import padded_batch


@torch.no_grad()
def continuation_logprobs(model, seqs: list[tuple[list[int], list[int]]], pad_id: int,
                          batch_size: int = 16, scope: Scope | None = None,
                          on_batch=None) -> list[tuple[float, int]]:
    """(sum of log p(token), number of tokens) of each continuation given its prompt.

    ``scope`` (a marked :class:`pkt.hooks.Scope`), when given, is marked with the
    continuation-producing positions before each forward pass, so an intervention can
    treat exactly those positions as generated ones. ``on_batch(n)``, when given, is
    called after each batch with its number of sequences (a progress bar's update).
    """
    on_batch = on_batch or (lambda n: None)
    device = next(model.parameters()).device
    out: list[tuple[float, int]] = [(0.0, 0)] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]) + len(seqs[i][1]))
    for s in range(0, len(order), batch_size):
        idx = [i for i in order[s : s + batch_size] if seqs[i][1]]
        if not idx:
            on_batch(len(order[s : s + batch_size]))
            continue
        batch = [seqs[i] for i in idx]
        ids, attn, pos, count = padded_batch(batch, pad_id, device)
        targets = torch.full_like(ids, -100)
        for b, (_p, r) in enumerate(batch):
            targets[b, ids.shape[1] - len(r):] = torch.tensor(r, device=device)
        if scope is not None:
            scope.mark(count)
        # continuations sit at the right end (left padding): the LM head only needs the
        # last `keep` positions, which saves most of the work for long prompts
        keep = max(len(r) for _p, r in batch)
        try:
            logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False,
                           logits_to_keep=keep).logits
        finally:
            if scope is not None:
                scope.mark(None)
        targets, count = targets[:, -keep:], count[:, -keep:]
        logp = torch.log_softmax(logits.float(), dim=-1)
        tok = logp.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1) * count
        sums = tok.sum(-1).tolist()
        ns = count.sum(-1).tolist()
        for b, i in enumerate(idx):
            out[i] = (float(sums[b]), int(ns[b]))
        on_batch(len(order[s : s + batch_size]))
    return out


@torch.no_grad()
def choice_logprobs(model, items: list[tuple[list[int], list[list[int]]]], pad_id: int,
                    batch_size: int = 16, scope: Scope | None = None,
                    on_batch=None) -> list[list[tuple[float, int]]]:
    """(sum of log p, number of tokens) of every choice of every ``(context, choices)`` item.

    The same figures as :func:`continuation_logprobs` over each (context, choice) pair, with
    the shared context computed once per item instead of once per choice: a first pass over
    the contexts without their last token (prompt positions: never marked in ``scope``)
    fills a KV cache, which is repeated for each choice; a second pass feeds each choice's
    row (the context's last token, then the choice without its last token), every position
    of which produces a scored token and is marked. ``batch_size`` counts items, and so
    does ``on_batch(n)`` (called after each batch, as in :func:`continuation_logprobs`).
    """
    from transformers import DynamicCache

    from pkt.kvcache import slab_cache

    device = next(model.parameters()).device
    out: list[list[tuple[float, int]]] = [[(0.0, 0)] * len(ch) for _c, ch in items]
    short = [i for i, (c, _ch) in enumerate(items) if len(c) < 2]
    if short:  # no prefix to share
        flat = [(items[i][0], x) for i in short for x in items[i][1]]
        lp = iter(continuation_logprobs(model, flat, pad_id, batch_size, scope))
        for i in short:
            out[i] = [next(lp) for _x in items[i][1]]
    todo = [i for i, (c, ch) in enumerate(items) if len(c) >= 2 and any(ch)]
    on_batch = on_batch or (lambda n: None)
    on_batch(len(items) - len(todo))  # the short ones (done above) and those without choices
    order = sorted(todo, key=lambda i: len(items[i][0]))
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        pre = [items[i][0][:-1] for i in idx]
        P = max(len(p) for p in pre)
        pre_ids = torch.full((len(idx), P), pad_id, dtype=torch.long)
        pre_mask = torch.zeros((len(idx), P), dtype=torch.long)
        for b, p in enumerate(pre):
            pre_ids[b, P - len(p):] = torch.tensor(p, dtype=torch.long)
            pre_mask[b, P - len(p):] = 1
        pre_ids, pre_mask = pre_ids.to(device), pre_mask.to(device)
        if scope is not None:
            scope.mark(torch.zeros_like(pre_mask, dtype=torch.bool))
        cache = DynamicCache(config=model.config)
        try:
            model(input_ids=pre_ids, attention_mask=pre_mask, position_ids=position_ids(pre_mask),
                  cache=cache, use_cache=True, logits_to_keep=1)
        finally:
            if scope is not None:
                scope.mark(None)
        # one row per non-empty choice, on top of its item's cached context
        rows = [(b, k) for b, i in enumerate(idx) for k, x in enumerate(items[i][1]) if x]
        owner = torch.tensor([b for b, _k in rows], dtype=torch.long, device=device)
        kv = [[k.index_select(0, owner), v.index_select(0, owner)] for k, v, *_ in cache]
        # each row: the context's last token, then the choice but its last token (all scored)
        pairs = [([items[idx[b]][0][-1]], items[idx[b]][1][k]) for b, k in rows]
        ids, rest_mask, _pos, count = padded_batch(pairs, pad_id, device)
        R = ids.shape[1]
        targets = torch.zeros_like(ids)
        for j, (_c, x) in enumerate(pairs):
            targets[j, R - len(x):] = torch.tensor(x, dtype=torch.long, device=device)
        mask = torch.cat([pre_mask.index_select(0, owner), rest_mask], 1)
        pos = position_ids(mask)[:, P:]
        if scope is not None:
            scope.mark(count)
        try:
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos,
                           cache=slab_cache(model, kv, P + R), use_cache=True).logits
        finally:
            if scope is not None:
                scope.mark(None)
        logp = torch.log_softmax(logits.float(), dim=-1)
        tok = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * count
        sums, ns = tok.sum(-1).tolist(), count.sum(-1).tolist()
        for j, (b, k) in enumerate(rows):
            out[idx[b]][k] = (float(sums[j]), int(ns[j]))
        on_batch(len(idx))
    return out
