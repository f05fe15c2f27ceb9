"""Neuron sets and the NPTI selection rule."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pkt.errors import PktError


@dataclass
class NeuronSet:
    """Selected neurons of one aspect, sorted by ``diff`` descending (1-D tensors)."""

    layer: torch.Tensor  # int64
    index: torch.Tensor  # int64
    diff: torch.Tensor  # float32: P_A - P_other
    prob: torch.Tensor  # float32: P_A
    p95: torch.Tensor  # float32: 95th percentile of the activation under A

    def __len__(self) -> int:
        return int(self.layer.numel())

    def per_layer(self, n_layers: int) -> list[int]:
        return torch.bincount(self.layer, minlength=n_layers).tolist()

    def rows(self) -> list[list]:
        """Release-format rows [layer, index, diff, prob, p95]."""
        return [[int(a), int(b), float(c), float(d), float(e)] for a, b, c, d, e in
                zip(self.layer, self.index, self.diff, self.prob, self.p95)]

    @classmethod
    def from_rows(cls, rows: list[list]) -> NeuronSet:
        if not rows:
            z = torch.zeros(0)
            return cls(z.long(), z.long(), z, z, z)
        t = torch.tensor([[float(x) for x in r[:5]] for r in rows], dtype=torch.float64)
        order = torch.argsort(t[:, 2], descending=True, stable=True)
        t = t[order]
        return cls(t[:, 0].long(), t[:, 1].long(), t[:, 2].float(), t[:, 3].float(),
                   t[:, 4].float())

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.{k}": getattr(self, k).contiguous()
                for k in ("layer", "index", "diff", "prob", "p95")}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], prefix: str) -> NeuronSet:
        return cls(*(t[f"{prefix}.{k}"] for k in ("layer", "index", "diff", "prob", "p95")))


def resolve_k(k_min: float | int, total: int) -> int:
    """``k_min`` as a count (>= 1) or a fraction of all neurons (0 < k < 1)."""
    k = float(k_min)
    if not k > 0:
        raise PktError(f"method.k_min must be positive, got {k_min}")
    n = int(round(k * total)) if k < 1 else int(k)
    return max(1, min(n, total))


def select(prob_a: torch.Tensor, prob_other: torch.Tensor, p95_a: torch.Tensor,
           k_min: float | int, threshold: float = 0.1) -> NeuronSet:
    """Top ``k_min`` neurons by diff = P_A - P_other, plus every neuron with diff >= threshold."""
    n_layers, width = prob_a.shape
    diff = (prob_a.double() - prob_other.double()).flatten()
    order = torch.argsort(diff, descending=True, stable=True)
    k = resolve_k(k_min, diff.numel())
    n_thr = int((diff >= threshold).sum())
    keep = order[: max(k, n_thr)]
    return NeuronSet(
        layer=(keep // width).long(),
        index=(keep % width).long(),
        diff=diff[keep].float(),
        prob=prob_a.flatten()[keep].float(),
        p95=p95_a.flatten()[keep].float(),
    )


SELECTIONS = ("npti", "effect_size")


def effect_size(mean_a: torch.Tensor, var_a: torch.Tensor, mean_other: torch.Tensor,
                var_other: torch.Tensor) -> torch.Tensor:
    """Standardised mean difference of each neuron's activation between two aspects.

    ``d = (mean_A - mean_other) / sqrt((var_A + var_other) / 2)`` (Cohen's d with the pooled
    population variances; a neuron that never varies gets d = 0).
    """
    sd = ((var_a.double() + var_other.double()) / 2).sqrt()
    d = (mean_a.double() - mean_other.double()) / sd.clamp_min(1e-12)
    return torch.where(sd > 1e-12, d, torch.zeros_like(d)).float()


def select_effect_size(d: torch.Tensor, prob_a: torch.Tensor, prob_other: torch.Tensor,
                       p95_a: torch.Tensor, budget: float | int) -> NeuronSet:
    """The ``budget`` neurons with the largest positive effect size ``d`` (DPN-LE style).

    ``budget`` is a count or a fraction of all neurons, like ``k_min``; neurons with
    ``d <= 0`` are never kept, so a set may be smaller than the budget. The set carries
    the same fields as the paper's rule (``diff = P_A - P_other``, ``prob``, ``p95``), so
    the induction edit is unchanged.
    """
    n_layers, width = d.shape
    flat = d.flatten().double()
    order = torch.argsort(flat, descending=True, stable=True)
    k = resolve_k(budget, flat.numel())
    keep = order[:k]
    keep = keep[flat[keep] > 0]
    diff = (prob_a.double() - prob_other.double()).flatten()
    # sorted by diff like every NeuronSet (release files and the plots expect it)
    keep = keep[torch.argsort(diff[keep], descending=True, stable=True)]
    return NeuronSet(layer=(keep // width).long(), index=(keep % width).long(),
                     diff=diff[keep].float(), prob=prob_a.flatten()[keep].float(),
                     p95=p95_a.flatten()[keep].float())


def select_sets(st: dict, selection: str, k_min: float | int, threshold: float = 0.1) -> dict:
    """Both aspects' sets from identification statistics ``st`` by rule ``selection``."""
    other = {"high": "low", "low": "high"}
    if selection not in SELECTIONS:
        raise PktError(f"unknown method.selection '{selection}' (choose from: {', '.join(SELECTIONS)})")
    out = {}
    for a in ("high", "low"):
        o = other[a]
        if selection == "npti":
            out[a] = select(st[f"{a}.prob"], st[f"{o}.prob"], st[f"{a}.p95"], k_min, threshold)
        else:
            if f"{a}.mean" not in st:
                raise PktError("method.selection=effect_size needs statistics with activation "
                               "moments; pass method.recompute=true")
            d = effect_size(st[f"{a}.mean"], st[f"{a}.var"], st[f"{o}.mean"], st[f"{o}.var"])
            out[a] = select_effect_size(d, st[f"{a}.prob"], st[f"{o}.prob"], st[f"{a}.p95"], k_min)
    return out
