"""The KV cache of a batch whose rows join and leave between decode steps.

Rows are right-aligned: slot ``T - 1`` is every row's latest token, and a row with ``n``
tokens so far holds them in slots ``T - n .. T - 1`` with zeros (masked out) before them.
A newcomer is prefilled alone and copied in (:meth:`RowCache.admit`): if its prompt is
longer than the batch, the other rows move right. Rows that finish are dropped
(:meth:`RowCache.keep`), and slots that no row uses any more are cut off the left, so ``T``
stays the longest row's length. Keys and values live in preallocated slabs (rows x slots)
that grow by doubling; a decode step writes one slot per row in place.

Position ids count each row's own tokens, so a row's rotary positions and its attention
over its own slots are those it would have alone; the padding slots hold zeros and are
masked.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import torch

from pkt.kvcache import SlabLayer


class _RowLayer(SlabLayer):
    """One layer's keys and values: slabs ``[rows, heads, slots, dim]``, the first
    ``rows`` x ``length`` in use (a transformers cache layer; the mask sizes and lengths
    of pkt.generation's slab layer)."""

    def __init__(self):
        self.is_initialized = False
        self.rows = self.length = 0
        self._k = self._v = self.keys = self.values = None

    def lazy_initialization(self, key_states, value_states) -> None:
        self.device, self.dtype = key_states.device, key_states.dtype
        self._k = key_states.new_zeros(key_states.shape[0], key_states.shape[1], 0,
                                       key_states.shape[-1])
        self._v = value_states.new_zeros(value_states.shape[0], value_states.shape[1], 0,
                                         value_states.shape[-1])
        self.rows = key_states.shape[0]
        self.is_initialized = True

    def reserve(self, rows: int, slots: int) -> None:
        """Room for ``rows`` x ``slots`` (grown by doubling, contents kept)."""
        R, S = self._k.shape[0], self._k.shape[2]
        if rows <= R and slots <= S:
            return
        R2, S2 = max(rows, R if rows <= R else 2 * R), max(slots, S if slots <= S else 2 * S)
        k = self._k.new_zeros(R2, self._k.shape[1], S2, self._k.shape[3])
        v = self._v.new_zeros(R2, self._v.shape[1], S2, self._v.shape[3])
        k[: self.rows, :, : self.length] = self._k[: self.rows, :, : self.length]
        v[: self.rows, :, : self.length] = self._v[: self.rows, :, : self.length]
        self._k, self._v = k, v

    def _views(self) -> None:
        self.keys = self._k[: self.rows, :, : self.length]
        self.values = self._v[: self.rows, :, : self.length]

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, m = self.length, key_states.shape[-2]
        self.reserve(self.rows, n + m)
        self._k[: self.rows, :, n : n + m] = key_states
        self._v[: self.rows, :, n : n + m] = value_states
        self.length = n + m
        self._views()
        return self.keys, self.values

    # -- rows joining and leaving -----------------------------------------------------
    def admit(self, other: _RowLayer) -> None:
        """Append ``other``'s single row (its ``length`` slots), right-aligned."""
        if not self.is_initialized:
            self.lazy_initialization(other._k[:0], other._v[:0])
            self.rows = 0
        B, T, P = self.rows, self.length, other.length
        T2 = max(T, P)
        self.reserve(B + 1, T2)
        if T2 > T:  # the batch moves right to make room for a longer newcomer
            for s in (self._k, self._v):
                s[:B, :, T2 - T : T2] = s[:B, :, :T].clone()
                s[:B, :, : T2 - T] = 0
        for s, o in ((self._k, other._k), (self._v, other._v)):
            s[B, :, : T2 - P] = 0
            s[B, :, T2 - P : T2] = o[0, :, :P]
        self.rows, self.length = B + 1, T2
        self._views()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.keep(indices, 0)

    def keep(self, idx: torch.Tensor, cut: int) -> None:
        """Keep the rows ``idx`` (in that order) and drop the first ``cut`` slots."""
        n, T = len(idx), self.length
        for s in (self._k, self._v):
            s[:n, :, : T - cut] = s[idx, :, cut:T]
        self.rows, self.length = n, T - cut
        self._views()


class RowCache:
    """A batch's cache (:attr:`cache`, a transformers ``Cache``) and its attention mask
    (:attr:`mask`, long ``[rows, slots]``)."""

    def __init__(self, model):
        from transformers.cache_utils import Cache, CacheLayerMixin

        CacheLayerMixin.register(_RowLayer)  # transformers looks for attention layers by type
        self.layers = [_RowLayer() for _ in range(model.config.num_hidden_layers)]
        self.cache = Cache(layers=self.layers)
        self.device = next(model.parameters()).device
        self.mask = torch.zeros(0, 0, dtype=torch.long, device=self.device)

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    @property
    def length(self) -> int:
        return self.mask.shape[1]

    def admit(self, other: RowCache) -> None:
        """Add ``other``'s one row (a prefilled prompt) as the last row."""
        P = other.length
        T2 = max(self.length, P)
        mask = torch.zeros(self.rows + 1, T2, dtype=torch.long, device=self.device)
        mask[: self.rows, T2 - self.length :] = self.mask
        mask[self.rows, T2 - P :] = 1
        for mine, theirs in zip(self.layers, other.layers):
            mine.admit(theirs)
        self.mask = mask

    def keep(self, idx: list[int]) -> None:
        """Keep the rows ``idx`` (in that order); slots no kept row uses are dropped."""
        t = torch.tensor(idx, dtype=torch.long, device=self.device)
        mask = self.mask[t]
        used = mask.any(0).nonzero()
        cut = int(used[0]) if used.numel() else mask.shape[1]
        for layer in self.layers:
            if layer.is_initialized:
                layer.keep(t, cut)
        self.mask = mask[:, cut:]

    def seed(self, kv: list[tuple[torch.Tensor, torch.Tensor]], n: int) -> None:
        """An empty one-row cache starts from the first ``n`` slots of ``kv`` (per layer,
        keys and values ``[1, heads, slots, dim]``: a cached prompt)."""
        for layer, (k, v) in zip(self.layers, kv):
            layer.update(k[:, :, :n], v[:, :, :n])
        self.mask = torch.ones(1, n, dtype=torch.long, device=self.device)

    def grow(self) -> torch.Tensor:
        """The attention mask of the next decode step (one more slot for every row)."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.rows, 1)], 1)
        return self.mask


class PromptCache:
    """Keys and values of recent prompts' unedited prefill, so that a newcomer whose prompt
    starts like an earlier one (the chat template's system turn, a personality's neutral
    instruction or persona description) computes only the rest of it.

    Least recently used entries go first past ``max_tokens`` slots in all; an entry that
    a newer prompt extends is replaced by it. Only prefills that no edit touches may be
    stored or reused (a row whose edit includes the prompt prefills alone)."""

    def __init__(self, max_tokens: int):
        self.max_tokens = int(max_tokens)
        self.entries: OrderedDict[tuple[int, ...], list] = OrderedDict()
        self.tokens = 0
        self.hits = self.reused = 0  # prefills that started from a cached prompt; slots saved

    def longest(self, ids: list[int]) -> tuple[int, list | None]:
        """The longest cached prefix of ``ids`` but its last token (which must be computed
        for the next token's logits): its length and its entry's keys and values."""
        best, kv, key, ids = 0, None, None, tuple(ids)
        for k, e in self.entries.items():
            n = min(len(os.path.commonprefix([k, ids])), len(ids) - 1)
            if n > best:
                best, kv, key = n, e, k
        if key is not None:
            self.entries.move_to_end(key)
            self.hits += 1
            self.reused += best
        return best, kv

    def put(self, ids: list[int], one: RowCache) -> None:
        """Keep ``one``'s prompt (its single row's first ``len(ids)`` slots)."""
        n = len(ids)
        if self.max_tokens < n:
            return
        key = tuple(ids)
        for k in [k for k in self.entries if len(k) <= n and key[: len(k)] == k]:
            self.tokens -= len(k)  # covered by the new one
            del self.entries[k]
        kv = [(layer._k[:1, :, :n].clone(), layer._v[:1, :, :n].clone()) for layer in one.layers]
        self.entries[key] = kv
        self.tokens += n
        while self.tokens > self.max_tokens:
            k, _ = self.entries.popitem(last=False)
            self.tokens -= len(k)
