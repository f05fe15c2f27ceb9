"""Neuron sets and the NPTI selection rule."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pkt import PktError


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
