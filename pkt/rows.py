"""Per-row edits: a different personality on every row of one forward pass.

A personality's edit while it generates, as data (:class:`RowEdit`), is made by its
method's class (``Method.row_edit()``; a profile's by ``profile_row_edit``):

- NPTI (:class:`NeuronEdit`): at ``mlp.act``, ``min(a, cap)`` then ``+ add * keep`` with the
  dense ``[layers, width]`` tables of :class:`pkt.neurons.induce.Induction` and its
  keep-mask stream (:func:`draw_keep`, seeded at every prefill);
- vector methods (``adds``): ``{(site, layer): vector}``, ActAdd's residual stream
  (``resid.post``) and DPN-LE's down-projection input (``mlp.down_in``).

:class:`RowTables` stacks the edits of a batch's rows (a row without an edit gets cap +inf
and zero additions) and applies them with one hook per edited layer: every row gets its own
amounts in the same tensor ops, with no Python loop over rows. The operations per element
are those of the one-personality hooks (``minimum``, then ``add``; ``h + v``), so a row's
activations are the ones it would have alone. Each row's NPTI keep-mask at its decode step
``t`` is the mask its personality draws at step ``t`` alone (the stream restarts at each
prefill), gathered from a precomputed stream.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch

from pkt.hooks import hooked


def draw_keep(generator: torch.Generator, n: int, device) -> torch.Tensor:
    """One keep-mask draw for ``n`` edited neurons (NPTI: one per forward pass)."""
    return torch.rand((n,), generator=generator, device=device)


@dataclass
class NeuronEdit:
    """NPTI's edit as data: ``cap`` (0 clamps, +inf leaves) and ``add`` ``[layers, width]``
    in the model's dtype and device, each addition kept with ``keep_prob`` per forward."""

    add: torch.Tensor
    cap: torch.Tensor
    keep_prob: float = 1.0
    seed: int = 0
    _flat: torch.Tensor | None = None
    _stream: torch.Tensor | None = None  # bool [steps, n]: the keep-masks from the seed on

    @property
    def flat(self) -> torch.Tensor:
        """The edited neurons' flat indices into ``[layers * width]``."""
        if self._flat is None:
            self._flat = (self.add.reshape(-1) != 0).nonzero().squeeze(1)
        return self._flat

    @property
    def amounts(self) -> torch.Tensor:
        return self.add.reshape(-1)[self.flat]

    def keep(self, steps: int) -> torch.Tensor:
        """The keep-masks of the first ``steps`` forwards after a prefill (bool ``[steps, n]``),
        the draws :class:`~pkt.neurons.induce.Induction` makes in that order."""
        n = int(self.flat.numel())
        if self.keep_prob >= 1.0:
            return torch.ones(steps, n, dtype=torch.bool, device=self.add.device)
        have = 0 if self._stream is None else self._stream.shape[0]
        if steps > have:
            g = torch.Generator(device=self.add.device)
            g.manual_seed(self.seed)
            self._stream = torch.stack([draw_keep(g, n, self.add.device) < self.keep_prob
                                        for _ in range(max(steps, 2 * have))]) if n else \
                torch.zeros(max(steps, 1), 0, dtype=torch.bool, device=self.add.device)
        return self._stream[:steps]


@dataclass
class RowEdit:
    """One personality's edit at generation time (None or an empty edit: the plain model)."""

    neurons: NeuronEdit | None = None
    adds: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    include_prompt: bool = False  # also the prompt's positions (else decode steps only)

    @property
    def empty(self) -> bool:
        return self.neurons is None and not self.adds

    @classmethod
    def vectors(cls, site: str, adds: dict[int, torch.Tensor], include_prompt: bool) -> RowEdit:
        """A vector method's edit: ``adds[l]`` at ``site`` of layer ``l``."""
        return cls(adds={(site, i): v for i, v in adds.items()}, include_prompt=include_prompt)


def _hidden(out):
    return out[0] if isinstance(out, tuple) else out


class RowTables:
    """The stacked edits of a batch's rows, applied by :meth:`hooks` to a forward pass.

    ``edits[b]`` is row ``b``'s edit (None: plain); ``horizon`` the most forwards any row
    will make after its prefill (its keep-mask stream is drawn that far). Before each
    forward, :meth:`at` gives every row's step: the index of this forward in its stream
    (0 is the prefill's forward when ``include_prompt``, else the first decode step).
    ``prefill=True``: the tables of a prefill forward (rows without ``include_prompt`` are
    left alone).
    """

    def __init__(self, model, edits: list[RowEdit | None], horizon: int, prefill: bool = False):
        from pkt.neurons.sites import shape

        p = next(model.parameters())
        self.model, self.device, self.dtype = model, p.device, p.dtype
        rows = [e if e is not None and not e.empty and (e.include_prompt or not prefill)
                else None for e in edits]
        self.active = any(e is not None for e in rows)
        self.B = len(rows)
        self.vectors: dict[tuple[str, int], torch.Tensor] = {}
        for key in sorted({k for e in rows if e is not None for k in e.adds}):
            vecs = [e.adds.get(key) if e is not None else None for e in rows]
            like = next(v for v in vecs if v is not None)
            t = torch.zeros(self.B, 1, like.shape[-1], device=self.device, dtype=self.dtype)
            for b, v in enumerate(vecs):
                if v is not None:
                    t[b, 0] = v.to(self.device, self.dtype)
            self.vectors[key] = t
        self.on = True  # False: this forward is left alone (generating(): a prefill)
        self.forwards = 0  # edited layer calls
        self.neurons = None
        npti = [e.neurons if e is not None else None for e in rows]
        self._npti = npti
        if any(n is not None for n in npti):
            L, W = shape(model)
            self.L, self.W = L, W
            cap = torch.full((self.B, L, W), math.inf, device=self.device, dtype=self.dtype)
            n_max = max(int(n.flat.numel()) for n in npti if n is not None)
            flat = torch.full((self.B, n_max), L * W, dtype=torch.long, device=self.device)
            amounts = torch.zeros(self.B, n_max, device=self.device, dtype=self.dtype)
            keep = torch.zeros(self.B, horizon, n_max, dtype=torch.bool, device=self.device)
            for b, n in enumerate(npti):
                if n is None:
                    continue
                k = int(n.flat.numel())
                cap[b] = n.cap
                flat[b, :k], amounts[b, :k] = n.flat, n.amounts.to(self.dtype)
                keep[b, :, :k] = n.keep(horizon)
            edited = [n for n in npti if n is not None]
            self.has_opp = (cap != math.inf).any(-1).any(0).tolist()
            self.has_add = torch.stack([(n.add != 0).any(-1) for n in edited]).any(0).tolist()
            # the additions of this forward, flat; the last column takes the padding
            self._inc = torch.zeros(self.B, L * W + 1, device=self.device, dtype=self.dtype)
            self.cap, self.flat, self.amounts, self.keep = cap, flat, amounts, keep
            self.neurons = True
        self.inc_rows = None

    def at(self, steps: torch.Tensor | list[int]) -> None:
        """Every row's step (its keep-mask's index) for the next forward."""
        if self.neurons is None:
            return
        idx = torch.as_tensor(steps, dtype=torch.long, device=self.device)
        if int(idx.max()) >= self.keep.shape[1]:  # past the horizon: draw further
            h = 2 * int(idx.max()) + 1
            keep = torch.zeros(self.B, h, self.keep.shape[2], dtype=torch.bool, device=self.device)
            for b, n in enumerate(self._npti):
                if n is not None:
                    keep[b, :, : int(n.flat.numel())] = n.keep(h)
            self.keep = keep
        kept = self.keep[torch.arange(self.B, device=self.device), idx]
        self._inc.scatter_(1, self.flat, self.amounts * kept)
        self.inc_rows = self._inc[:, : self.L * self.W].view(self.B, self.L, self.W)

    @contextlib.contextmanager
    def hooks(self):
        """The hooks of every edited layer while the context is open (none if no row has an
        edit for this forward)."""
        if not self.active:
            yield self
            return
        hooks = {}
        for (site, layer), vec in self.vectors.items():
            hooks[(site, layer)] = self._vector_hook(site, vec)
        if self.neurons is not None:
            for i in range(self.L):
                if self.has_add[i] or self.has_opp[i]:
                    hooks[("mlp.act", i)] = self._neuron_hook(i)
        with hooked(self.model, hooks):
            yield self

    def _vector_hook(self, site: str, vec: torch.Tensor):
        if site == "mlp.down_in":  # a pre-hook: the input of the down projection
            def pre(_mod, args):
                return (args[0] + vec, *args[1:]) if self.on else None

            return pre

        def post(_mod, _inp, out):
            if not self.on:
                return None
            h = _hidden(out) + vec
            return (h, *out[1:]) if isinstance(out, tuple) else h

        return post

    def _neuron_hook(self, layer: int):
        cap = self.cap[:, layer].unsqueeze(1) if self.has_opp[layer] else None
        add = self.has_add[layer]
        grad_enabled = torch.is_grad_enabled

        def hook(_mod, _inp, out):
            if not self.on:
                return None
            self.forwards += 1
            if grad_enabled():  # the same values, out of place
                if cap is not None:
                    out = torch.minimum(out, cap)
                return out + self.inc_rows[:, layer].unsqueeze(1) if add else out
            if cap is not None:
                torch.minimum(out, cap, out=out)
            if add:
                out.add_(self.inc_rows[:, layer].unsqueeze(1))
            return out

        return hook


@contextlib.contextmanager
def generating(model, edit: RowEdit | None):
    """One edit on every row of the generations run while the context is open (the
    runner's and the API's batches, HF ``generate`` too): :class:`RowTables` with one row,
    broadcast over the batch. A forward of more than one position per row is a prefill: it
    restarts the keep-mask stream and is edited only with ``include_prompt`` (mask 0, and
    decode step ``t`` takes mask ``t + 1``); otherwise decode step ``t`` takes mask ``t``.
    Yields the tables (``forwards``: edited layer calls)."""
    tables = RowTables(model, [edit], 128)
    if not tables.active:
        yield tables
        return
    include = bool(edit.include_prompt)
    state = {"step": 0}

    def pre(_mod, args, kwargs):
        x = kwargs.get("input_ids")
        if x is None:
            x = kwargs.get("inputs_embeds")
        if x is None and args:
            x = args[0]
        if x.shape[1] > 1:  # a prefill (or a shared prefix): the stream starts again
            state["step"] = 0
            tables.on = include
            if not include:
                return
        else:
            tables.on = True
        tables.at([state["step"]])
        state["step"] += 1

    handle = model.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        with tables.hooks():
            yield tables
    finally:
        handle.remove()
