"""Teacher-forced log-likelihood of continuations (perplexity, option scoring)."""

from __future__ import annotations

import torch

from pkt.hooks import Scope
from pkt.neurons.stats import padded_batch


@torch.no_grad()
def continuation_logprobs(model, seqs: list[tuple[list[int], list[int]]], pad_id: int,
                          batch_size: int = 16, scope: Scope | None = None) -> list[tuple[float, int]]:
    """(sum of log p(token), number of tokens) of each continuation given its prompt.

    ``scope`` (a marked :class:`pkt.hooks.Scope`), when given, is marked with the
    continuation-producing positions before each forward pass, so an intervention can
    treat exactly those positions as generated ones.
    """
    device = next(model.parameters()).device
    out: list[tuple[float, int]] = [(0.0, 0)] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]) + len(seqs[i][1]))
    for s in range(0, len(order), batch_size):
        idx = [i for i in order[s : s + batch_size] if seqs[i][1]]
        if not idx:
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
    return out
