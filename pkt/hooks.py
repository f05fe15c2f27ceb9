"""The one place pkt registers hooks: named sites, scopes, and a context manager.

**Sites** name where in a model a hook reads or edits, per architecture
(:mod:`pkt.neurons.sites` holds the table): ``mlp.act`` is the MLP activation of a layer
(NPTI's neurons, ``[batch, seq, width]``), ``mlp.down_in`` the input of the MLP's down
projection (DPN-LE's neurons, ``[batch, seq, width]``: ``act(gate(x)) * up(x)`` in gated
MLPs, GPT-2's ``act(c_fc(x))``), ``resid.post`` the residual stream after a decoder block
(ActAdd, ``[batch, seq, hidden]``).

**Scopes** say which positions an edit touches:

- ``Scope.decode()``: decode steps only — a forward that feeds one position per row (the
  KV-cached steps of generation); the prompt's prefill is left alone. Generation's default.
- ``Scope.every()``: every position, prompt included.
- ``Scope.marked()``: the positions the caller marks before each forward with
  ``scope.mark(mask)`` (a bool ``[batch, seq]``): teacher-forced scoring marks the positions
  that stand for generated tokens, identification marks the positions that produce one.
  A forward with no mark, or with a mark of another shape, is left alone.

:func:`hooked` registers forward hooks on sites and always removes them, also on error.
A hook on an *input* site (``mlp.down_in``) is a forward pre-hook: ``fn(module, args)``
returns the new ``args`` (or None to leave them), where an output site's hook is
``fn(module, args, output)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from pkt.errors import PktError

SITES = ("mlp.act", "mlp.down_in", "resid.post")
INPUT_SITES = ("mlp.down_in",)  # hooked before the module runs


def site_modules(model, site: str) -> list[torch.nn.Module]:
    """The module of every layer at ``site``, in layer order."""
    from pkt.neurons.sites import decoder_layers, down_proj_sites, neuron_sites

    if site == "mlp.act":
        return neuron_sites(model)
    if site == "mlp.down_in":
        return down_proj_sites(model)
    if site == "resid.post":
        return decoder_layers(model)
    raise PktError(f"unknown hook site '{site}' (choose from: {', '.join(SITES)})")


class Scope:
    """Which positions of a forward an edit touches (see the module docstring)."""

    KINDS = ("decode", "every", "marked")

    def __init__(self, kind: str):
        if kind not in self.KINDS:
            raise ValueError(f"unknown scope '{kind}'")
        self.kind = kind
        self.mask: torch.Tensor | None = None

    @classmethod
    def decode(cls) -> Scope:
        return cls("decode")

    @classmethod
    def every(cls) -> Scope:
        return cls("every")

    @classmethod
    def marked(cls) -> Scope:
        return cls("marked")

    @classmethod
    def for_generation(cls, include_prompt: bool = False) -> Scope:
        return cls.every() if include_prompt else cls.decode()

    def mark(self, mask: torch.Tensor | None) -> None:
        self.mask = mask

    def select(self, h: torch.Tensor):
        """For activations ``h`` [batch, seq, ...]: ``None`` (leave this forward alone),
        ``True`` (every position), or the bool [batch, seq] mask of positions to edit."""
        if self.kind == "every":
            return True
        if self.kind == "decode":
            return True if h.shape[-2] == 1 else None
        m = self.mask
        if m is None or tuple(m.shape) != tuple(h.shape[:2]):
            return None
        return m

    def __repr__(self) -> str:
        return f"Scope.{self.kind}()"


@contextlib.contextmanager
def hooked(model, hooks: dict[tuple[str, int], Callable]):
    """Forward hooks ``{(site, layer): fn(module, inputs, output)}`` (pre-hooks
    ``fn(module, inputs)`` at :data:`INPUT_SITES`), removed on exit."""
    handles = []
    try:
        for (site, layer), fn in hooks.items():
            mod = site_modules(model, site)[layer]
            handles.append(mod.register_forward_pre_hook(fn) if site in INPUT_SITES
                           else mod.register_forward_hook(fn))
        yield
    finally:
        for h in handles:
            h.remove()


def masked_add(vec: torch.Tensor, scope: Scope) -> Callable:
    """``add(h)``: ``h`` plus ``vec`` (cast to ``h``'s device and dtype once) at the
    positions of ``scope``, or None where the scope selects nothing. The one vector
    addition of every hook that adds a vector (ActAdd's residual stream, DPN-LE's
    down-projection input)."""
    cache: dict = {}

    def add(h: torch.Tensor) -> torch.Tensor | None:
        where = scope.select(h)
        if where is None:
            return None
        v = cache.get((h.device, h.dtype))
        if v is None:
            v = cache[(h.device, h.dtype)] = vec.to(h.device, h.dtype)
        if where is True:
            return h + v
        return h + v * where.to(h.device, h.dtype).unsqueeze(-1)

    return add


def sum_by_layer(additions) -> dict[int, torch.Tensor]:
    """Several ``{layer: vector}`` additions as one (a profile of vector methods)."""
    out: dict[int, torch.Tensor] = {}
    for adds in additions:
        for i, v in adds.items():
            out[i] = out[i] + v if i in out else v
    return out


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded batch: 0 at each row's first real token."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
