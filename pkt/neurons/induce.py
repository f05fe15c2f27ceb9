"""Trait induction by editing neuron activations during generation (NPTI step 2).

For the target aspect's neurons ``a_j <- a_j + p95_j * strength * sigmoid(10 (diff_j - 0.15))``
(each kept with probability ``keep_prob`` by a fresh mask at every forward pass) and, for
the opposite aspect's neurons, ``a <- min(a, 0)``. The edit is precomputed as dense
[layers, width] tensors on the model's device and dtype: a cap (0 for deactivated neurons,
+inf elsewhere) and the amounts to add. Each edited forward takes one keep-mask for the
edited neurons of all layers at once from a seeded device-side stream; each layer then
costs two in-place ops (``minimum`` with the cap and ``add_``), with no Python loop over
neurons and no host synchronisation. In generation the tables are applied by
:mod:`pkt.rows` (the same code as the server's per-row batch); in teacher-forced scoring at
the marked positions by :meth:`Induction.edit`.
"""

from __future__ import annotations

import contextlib
import math

import torch

from pkt.errors import PktError
from pkt.hooks import Scope, hooked
from pkt.neurons.select import NeuronSet
from pkt.neurons.sites import require_one_device, shape
from pkt.rows import NeuronEdit, RowEdit, draw_keep, generating


def edit_amount(ns: NeuronSet, strength: float) -> torch.Tensor:
    return ns.p95 * strength * torch.sigmoid(10.0 * (ns.diff - 0.15))


def check_fits(ns: NeuronSet, n_layers: int, width: int, what: str) -> None:
    if len(ns) == 0:
        return
    if int(ns.layer.min()) < 0 or int(ns.layer.max()) >= n_layers:
        raise PktError(f"{what}: layer index {int(ns.layer.max())} out of range for a model "
                       f"with {n_layers} layers")
    if int(ns.index.min()) < 0 or int(ns.index.max()) >= width:
        raise PktError(f"{what}: neuron index {int(ns.index.max())} out of range for a model "
                       f"with {width} MLP neurons per layer")


CONFLICTS = ("target_wins", "clamp_wins", "drop")


def edit_tables(parts, n_layers: int, width: int, deactivate: bool = True,
                conflict: str = "target_wins") -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The dense edit of one or more traits: amounts to add [layers, width] (float32) and the
    neurons to clamp at 0 [layers, width] (bool), plus counts.

    ``parts``: ``(target, opposite, strength)`` per trait. Composition rules:

    - additions: each target neuron gets ``p95 * strength * sigmoid(10 (diff - 0.15))``;
      a neuron raised by two or more traits gets the sum, capped at the largest
      ``p95 * strength`` among them (one trait alone is never capped);
    - clamps (``deactivate``): the union of every trait's opposite set;
    - a neuron both raised (by one trait) and clamped (by another) follows ``conflict``:
      ``target_wins`` adds and does not clamp, ``clamp_wins`` clamps and does not add,
      ``drop`` does neither.
    """
    if conflict not in CONFLICTS:
        raise PktError(f"unknown profile.conflict '{conflict}' (choose from: {', '.join(CONFLICTS)})")
    add = torch.zeros(n_layers, width, dtype=torch.float32)
    cap = torch.full((n_layers, width), -math.inf)  # largest p95 * strength per raised neuron
    raisers = torch.zeros(n_layers, width, dtype=torch.int32)
    opp = torch.zeros(n_layers, width, dtype=torch.bool)
    for target, opposite, strength in parts:
        strength = float(strength)
        if not math.isfinite(strength) or strength < 0:
            raise PktError(f"method.strength must be a finite number >= 0, got {strength}")
        check_fits(target, n_layers, width, "target neuron set")
        idx = (target.layer, target.index)
        add.index_put_(idx, edit_amount(target, strength), accumulate=True)
        cap[idx] = torch.maximum(cap[idx], target.p95.float() * strength)
        raisers[idx] += 1
        if deactivate and opposite is not None:
            check_fits(opposite, n_layers, width, "opposite neuron set")
            opp[opposite.layer, opposite.index] = True
    shared = raisers > 1
    if shared.any():
        add = torch.where(shared, torch.minimum(add, cap), add)
    raised = raisers > 0
    both = raised & opp
    if conflict == "target_wins":
        opp = opp & ~both
    elif conflict == "clamp_wins":
        add = torch.where(both, 0.0, add)
    else:  # drop
        add = torch.where(both, 0.0, add)
        opp = opp & ~both
    info = {"raised": int(raised.sum()), "clamped": int(opp.sum()), "shared": int(shared.sum()),
            "conflicts": int(both.sum())}
    return add, opp, info


class Induction:
    def __init__(self, model, target: NeuronSet | None, opposite: NeuronSet | None,
                 strength: float = 1.0, keep_prob: float = 0.9, deactivate: bool = True,
                 include_prompt: bool = False, seed: int = 0, scope: Scope | None = None,
                 parts: list | None = None, conflict: str = "target_wins"):
        """One trait's edit (``target``, ``opposite``, ``strength``), or a profile's:
        ``parts=[(target, opposite, strength), ...]`` composed by :func:`edit_tables`."""
        if not 0.0 < float(keep_prob) <= 1.0:
            raise PktError(f"method.keep_prob must be in (0, 1], got {keep_prob}")
        require_one_device(model, "neuron induction")
        self.model = model
        self.n_layers, self.width = shape(model)
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.keep_prob = float(keep_prob)
        self.include_prompt = include_prompt
        # which positions are edited: decode steps (or every position with include_prompt)
        # in generation; in teacher-forced scoring the marked ones (Scope.marked())
        self.scope = scope or Scope.for_generation(include_prompt)
        if parts is None:
            parts = [(target, opposite, strength)]
        add, opp, self.info = edit_tables(parts, self.n_layers, self.width, deactivate, conflict)
        self.add = add.to(self.device, self.dtype)
        # min(a, cap): cap 0 deactivates, +inf leaves the value alone
        self.cap = torch.where(opp, 0.0, math.inf).to(self.device, self.dtype)
        self.has_add = (add != 0).any(-1).tolist()
        self.has_opp = opp.any(-1).tolist()
        # the mask is drawn for all layers when the first layer with additions runs
        self.first_add = self.has_add.index(True) if any(self.has_add) else -1
        # the edited positions, flat: the keep-mask is drawn for these only, into a
        # persistent buffer whose other entries stay 0
        flat = (add.view(-1) != 0).nonzero().squeeze(1)
        self._flat = flat.to(self.device)
        self._amounts = add.view(-1)[flat].to(self.device, self.dtype)
        self._inc = self.add.clone() if self.keep_prob < 1.0 else self.add
        # per-layer views, made once (a row lookup per layer and step is not free)
        self._cap_rows = self.cap.unbind(0)
        self._inc_rows = self._inc.unbind(0)
        self.seed = int(seed)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(self.seed)
        self.forwards = 0  # hooked forwards that were edited (per layer call)

    def _draw(self) -> None:
        """A fresh keep-mask for every edited neuron of every layer, one draw per forward pass."""
        keep = draw_keep(self.generator, int(self._flat.numel()), self.device)
        self._inc.view(-1).index_copy_(0, self._flat, self._amounts * (keep < self.keep_prob))

    def edit(self, layer: int, out: torch.Tensor) -> torch.Tensor:
        """Apply the edit to one layer's activations ``out`` [..., width]."""
        inplace = not torch.is_grad_enabled()
        if self.has_opp[layer]:
            cap = self._cap_rows[layer]
            out = torch.minimum(out, cap, out=out) if inplace else torch.minimum(out, cap)
        if self.has_add[layer]:
            if layer == self.first_add and self.keep_prob < 1.0:
                self._draw()
            inc = self._inc_rows[layer]
            out = out.add_(inc) if inplace else out + inc
        self.forwards += 1
        return out

    def row_edit(self) -> RowEdit:
        """This edit as one row of a shared batch (:mod:`pkt.rows`): the same tables, the
        same keep-mask stream from the seed at each prefill, the same positions."""
        return RowEdit(neurons=NeuronEdit(self.add, self.cap, self.keep_prob, self.seed),
                       include_prompt=self.scope.kind == "every")

    @contextlib.contextmanager
    def apply(self, model=None):
        """The edit while the context is open (hooks on every edited layer's ``mlp.act``
        site, removed on exit, also on error): in generation (decode steps, or every
        position with ``include_prompt``) through :func:`pkt.rows.generating`, the same
        per-row tables the server's batch uses; in teacher-forced scoring
        (``Scope.marked()``) at the marked positions, by :meth:`edit`."""
        model = model or self.model
        if self.scope.kind != "marked":
            with generating(model, self.row_edit()) as tables:
                try:
                    yield self
                finally:
                    self.forwards += tables.forwards
            return
        select = self.scope.select

        def make(layer):
            def scored(_mod, _inp, out):
                mask = select(out)
                if mask is None:
                    return None
                out[mask] = self.edit(layer, out[mask])
                return out

            return scored

        edited = {("mlp.act", i): make(i) for i in range(self.n_layers)
                  if self.has_add[i] or self.has_opp[i]}
        with hooked(model, edited):
            yield self
