"""Streaming per-neuron statistics over generated-token positions.

Memory is O(layers x neurons x bins), whatever the number of tokens: for every neuron we
keep a 301-bin histogram of its values. Bin 0 holds every value <= 0; bins 1..299 are
0.01 wide and closed on the right ((0, 0.01], (0.01, 0.02], ..., (2.98, 2.99]); bin 300 is
open-ended ((2.99, inf)). Because bin 0 is exactly "not active", the count of tokens with
activation > 0 is the sum of bins 1..300: no second pass over the activations is needed.
(The release's bins are closed on the left; the two layouts differ only for values that
fall exactly on an edge.)
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from pkt.hooks import Scope, hooked, position_ids
from pkt.neurons.sites import neuron_sites, require_one_device

N_BINS = 301
BIN_WIDTH = 0.01


class ActivationStats:
    """Per-neuron histogram (and, with ``moments``, exact sums of a and a^2) over tokens."""

    def __init__(self, n_layers: int, width: int, device="cpu", moments: bool = False):
        self.n_layers, self.width = n_layers, width
        self.hist = torch.zeros(n_layers, width * N_BINS, dtype=torch.int64, device=device)
        self.tokens = 0
        self._offsets = (torch.arange(width, device=device) * N_BINS).to(torch.int32)
        # float64 sums for the mean and variance of each neuron (effect-size selection)
        self.moments = moments
        self.sum = torch.zeros(n_layers, width, dtype=torch.float64, device=device) if moments else None
        self.sumsq = torch.zeros_like(self.sum) if moments else None

    @torch.no_grad()
    def update(self, layer: int, acts: torch.Tensor) -> None:
        """Add ``acts`` [M, width] (M counted token positions) for ``layer``."""
        if acts.shape[0] == 0:
            return
        # bin = ceil(100 a) clamped to [0, 300]: a <= 0 lands in bin 0, a in (0, 0.01] in
        # bin 1, a > 2.99 in the open last bin. Five elementwise ops and one bincount.
        b = torch.mul(acts.float(), 1.0 / BIN_WIDTH).clamp_(0, N_BINS - 1).ceil_()
        b = b.to(torch.int32).add_(self._offsets)
        self.hist[layer] += torch.bincount(b.view(-1), minlength=self.width * N_BINS)
        if self.moments:
            a = acts.double()
            self.sum[layer] += a.sum(0)
            self.sumsq[layer] += (a * a).sum(0)

    def mean_var(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and (population) variance of each neuron's activation, [layers, width]."""
        if not self.moments:
            raise ValueError("these statistics were gathered without moments")
        n = max(self.tokens, 1)
        mean = self.sum / n
        return mean.float(), (self.sumsq / n - mean * mean).clamp_min(0).float()

    @property
    def counts(self) -> torch.Tensor:
        """Tokens with activation > 0 per neuron, [layers, width] (bins 1..300 of the histogram)."""
        return self.histogram()[:, :, 1:].sum(-1)

    def histogram(self) -> torch.Tensor:
        return self.hist.view(self.n_layers, self.width, N_BINS)

    def prob(self) -> torch.Tensor:
        """P(activation > 0) per neuron, [layers, width]."""
        return self.counts.double().div(max(self.tokens, 1)).float()

    def percentile(self, q: float = 0.95) -> torch.Tensor:
        """The q-quantile of each neuron's activation, read off the histogram.

        Interpolated linearly inside the bin where the cumulative share crosses q; a
        quantile in bin 0 (values <= 0) is reported as 0, one in the open last bin as 2.99.
        """
        h = self.histogram().double()
        total = h.sum(-1, keepdim=True).clamp_min(1)
        cdf = h.cumsum(-1) / total
        k = (cdf < q).sum(-1).clamp_max(N_BINS - 1)  # first bin with cdf >= q
        below = torch.where(k > 0, cdf.gather(-1, (k - 1).clamp_min(0).unsqueeze(-1)).squeeze(-1),
                            torch.zeros_like(k, dtype=cdf.dtype))
        inbin = h.gather(-1, k.unsqueeze(-1)).squeeze(-1) / total.squeeze(-1)
        frac = ((q - below) / inbin.clamp_min(1e-12)).clamp(0, 1)
        lo = (k - 1).double() * BIN_WIDTH
        val = torch.where(k == 0, torch.zeros_like(lo), lo + frac * BIN_WIDTH)
        val = torch.where(k == N_BINS - 1, torch.full_like(val, (N_BINS - 2) * BIN_WIDTH), val)
        return val.float()


def recording(model, stats: ActivationStats, scope: Scope, count_tokens: bool = False):
    """Context manager: hooks on every layer's ``mlp.act`` site that add the activations at
    the positions ``scope`` marks (a :meth:`pkt.hooks.Scope.marked` scope, marked by the
    caller before each forward) to ``stats``.

    With ``count_tokens`` the first layer's hook also adds the number of positions recorded
    to ``stats.tokens`` (for callers, like generation, that do not count them themselves).
    """
    require_one_device(model, "neuron statistics")

    def make(layer):
        def hook(_mod, _inp, out):
            mask = scope.select(out)
            if mask is not None:
                acts = out[mask] if mask is not True else out.reshape(-1, out.shape[-1])
                stats.update(layer, acts)
                if count_tokens and layer == 0:
                    stats.tokens += int(acts.shape[0])

        return hook

    return hooked(model, {("mlp.act", i): make(i) for i in range(len(neuron_sites(model)))})


def padded_batch(seqs: list[tuple[list[int], list[int]]], pad_id: int, device):
    """Left-pad prompt+response (without its last token); mark the response-producing positions.

    Position t produces token t+1, so the positions that produce the R generated tokens are
    the last prompt position up to the second-to-last response token: the last R columns.
    """
    rows = [p + r[:-1] for p, r in seqs]
    width = max(len(x) for x in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), width), dtype=torch.long)
    count = torch.zeros((len(rows), width), dtype=torch.bool)
    for b, ((_p, r), row) in enumerate(zip(seqs, rows)):
        ids[b, width - len(row):] = torch.tensor(row, dtype=torch.long)
        attn[b, width - len(row):] = 1
        if r:
            count[b, width - len(r):] = True
    pos = position_ids(attn)
    return ids.to(device), attn.to(device), pos.to(device), count.to(device)


@torch.no_grad()
def collect_stats(model, seqs: list[tuple[list[int], list[int]]], pad_id: int,
                  batch_size: int = 8, progress: bool = True, desc: str = "statistics",
                  stats: ActivationStats | None = None) -> ActivationStats:
    """Teacher-forced pass over (prompt ids, generated ids) pairs.

    Equivalent to hooking every decode step: the same positions see the same inputs.
    """
    from pkt.neurons.sites import shape

    device = next(model.parameters()).device
    if stats is None:
        n_layers, width = shape(model)
        stats = ActivationStats(n_layers, width, device=device)
    scope = Scope.marked()
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]) + len(seqs[i][1]))
    with recording(model, stats, scope):
        for s in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress):
            batch = [seqs[i] for i in order[s : s + batch_size] if seqs[i][1]]
            if not batch:
                continue
            ids, attn, pos, count = padded_batch(batch, pad_id, device)
            scope.mark(count)
            # logits are not needed: keep the LM head to one position
            model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False,
                  logits_to_keep=1)
            stats.tokens += int(count.sum())
    return stats
