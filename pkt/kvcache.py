"""KV caches written in place (preallocated slabs) for pkt's decoding engine, its
likelihood scoring and the serving batch; and the attention window a model's cache uses."""

from __future__ import annotations

import torch


class SlabLayer:
    """One layer's KV cache written in place into preallocated slabs.

    transformers' ``DynamicLayer`` concatenates the whole cache with the new step's keys
    and values at every decode step (a copy of the cache per layer per token); here each
    step writes its slice and the attention reads a view. Rows that leave the batch are
    dropped with one copy.
    """

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self, keys: torch.Tensor | None, values: torch.Tensor | None, capacity: int):
        self.capacity = capacity
        self.length = 0
        self.is_initialized = False
        self.keys = self.values = None
        if keys is not None:
            self.update(keys, values)

    def lazy_initialization(self, key_states, value_states) -> None:
        b, h, _, d = key_states.shape
        self.device = key_states.device
        self.dtype = key_states.dtype
        self._k = key_states.new_zeros(b, h, self.capacity, d)
        self._v = value_states.new_zeros(b, h, self.capacity, value_states.shape[-1])
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, m = self.length, key_states.shape[-2]
        if n + m > self._k.shape[-2]:  # past the planned capacity: grow (not expected)
            grow = max(n + m, 2 * self._k.shape[-2]) - self._k.shape[-2]
            self._k = torch.cat([self._k, self._k.new_zeros(*self._k.shape[:2], grow, self._k.shape[-1])], 2)
            self._v = torch.cat([self._v, self._v.new_zeros(*self._v.shape[:2], grow, self._v.shape[-1])], 2)
        self._k[:, :, n : n + m] = key_states
        self._v[:, :, n : n + m] = value_states
        self.length = n + m
        self.keys, self.values = self._k[:, :, : self.length], self._v[:, :, : self.length]
        return self.keys, self.values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self._k, self._v = self._k[indices], self._v[indices]
            self.keys, self.values = self._k[:, :, : self.length], self._v[:, :, : self.length]


def slab_cache(model, kv, capacity: int):
    """A transformers ``Cache`` of :class:`SlabLayer` (filled from ``kv`` when given)."""
    from transformers.cache_utils import Cache, CacheLayerMixin

    CacheLayerMixin.register(SlabLayer)  # transformers looks for attention layers by type
    n = model.config.num_hidden_layers
    layers = [SlabLayer(*(kv[i] if kv else (None, None)), capacity) for i in range(n)]
    return Cache(layers=layers)


def sliding_window(cfg) -> int | None:
    """The smallest attention window of ``cfg``'s sliding-window layers (as transformers
    builds its cache), or None when it has none."""
    from transformers import DynamicCache

    sizes = [int(getattr(layer, "sliding_window", 0) or 0)
             for layer in DynamicCache(config=cfg).layers if getattr(layer, "is_sliding", False)]
    return min(sizes) if sizes else None
