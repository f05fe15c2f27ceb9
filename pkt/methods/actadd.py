"""method=actadd: activation addition (a steering vector added to the residual stream).

The vector of an aspect at decoder block ``l`` is the mean difference of that block's output
(the residual stream after it) between role-play prompts with a HIGH and with a LOW persona
over the same search questions: each prompt's activations are averaged over its tokens
(``position: mean``) or taken at its last token (``position: last``), then averaged over
questions; ``v_high = mean_high - mean_low`` and ``v_low = -v_high``. Only forward passes
over the prompts are needed (no generation).

While answering, ``coefficient * v`` is added to the output of each configured block: at
decode steps only (like NPTI; a decode step feeds one position), or at every position with
``include_prompt: true``. Vectors are cached artifacts (``actadd_vector``) keyed by model
fingerprint, trait, data, search questions, layers, position and seed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from pkt import prompts
from pkt.artifacts import ArtifactStore
from pkt.errors import PktError
from pkt.hooks import Scope, hooked, masked_add, position_ids, sum_by_layer
from pkt.methods import Method, Outputs, Prepared, Setting
from pkt.neurons import identify
from pkt.neurons.sites import decoder_layers, resolve_layers
from pkt.params import Rule
from pkt.rows import RowEdit, generating

log = logging.getLogger(__name__)

VECTOR_VERSION = 1
POSITIONS = ("mean", "last")


class _Stop(Exception):
    """Raised by the deepest hook: nothing after the last needed block is computed."""


def _hidden(out):
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def mean_activations(model, tokenizer, texts: list[str], layers: list[int],
                     position: str = "mean", batch_size: int = 8, progress: bool = True,
                     desc: str = "activations") -> dict[int, torch.Tensor]:
    """Per layer, the mean over ``texts`` of each text's block-output summary (float32, CPU).

    Batches are left padded with position ids from the attention mask; a text's summary is
    the mean over its own (non-padding) tokens, or its last token.
    """
    if position not in POSITIONS:
        raise PktError(f"unknown method.position '{position}' (choose from: {', '.join(POSITIONS)})")
    if not texts:
        raise PktError("activation addition needs at least one search question")
    device = next(model.parameters()).device
    decoder_layers(model)  # an unsupported architecture fails here, with its message
    wanted = sorted(set(layers))
    deepest = wanted[-1]
    captured: dict[int, torch.Tensor] = {}
    sums: dict[int, torch.Tensor] = {}

    def make(layer):
        def hook(_mod, _inp, out):
            captured[layer] = _hidden(out).detach()
            if layer == deepest:
                raise _Stop

        return hook

    with hooked(model, {("resid.post", i): make(i) for i in wanted}):
        for s in tqdm(range(0, len(texts), batch_size), desc=desc, disable=not progress):
            enc = tokenizer(texts[s : s + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=False)
            ids, attn = enc["input_ids"].to(device), enc["attention_mask"].to(device)
            pos = position_ids(attn)
            captured.clear()
            try:
                model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False)
            except _Stop:
                pass
            keep = attn.bool().unsqueeze(-1)
            last = (attn * torch.arange(attn.shape[1], device=device)).argmax(-1)
            for i in wanted:
                h = captured[i].float()
                if position == "mean":
                    # where(), not a product: padding rows may hold anything, even NaN
                    v = torch.where(keep, h, 0.0).sum(1) / keep.sum(1).clamp_min(1)
                else:
                    v = h[torch.arange(h.shape[0], device=h.device), last]
                sums[i] = sums.get(i, 0) + v.sum(0).cpu()
    return {i: sums[i] / len(texts) for i in wanted}


def steering_vectors(lm, bench, seed: int, layers: list[int], position: str = "mean",
                     batch_size: int = 8, progress: bool = True) -> dict[int, torch.Tensor]:
    """``mean_high - mean_low`` per layer over the role-play prompts of the search questions."""
    means = {}
    for aspect in identify.ASPECTS:
        texts = identify.roleplay_prompts(lm, bench, aspect, seed)
        means[aspect] = mean_activations(lm.model, lm.tokenizer, texts, layers, position,
                                         batch_size, progress, desc=f"activations ({aspect})")
    return {i: (means["high"][i] - means["low"][i]).contiguous() for i in means["high"]}


def steer(model, adds: dict[int, torch.Tensor], include_prompt: bool = False,
          scope: Scope | None = None):
    """Context manager: ``adds[l]`` added to the ``resid.post`` site of block ``l`` at the
    positions of ``scope`` (default: decode steps, or every position with
    ``include_prompt``); removed on exit."""
    if scope is None:  # generation: pkt.rows, as the server's batch
        return generating(model, RowEdit.vectors("resid.post", adds, include_prompt))
    if include_prompt:  # include_prompt: every position, also when scoring
        scope = Scope.every()

    def make(vec: torch.Tensor):
        add = masked_add(vec, scope)

        def hook(_mod, _inp, out):
            h = add(_hidden(out))
            if h is None:
                return None
            return (h, *out[1:]) if isinstance(out, tuple) else h

        return hook

    return hooked(model, {("resid.post", i): make(vec) for i, vec in adds.items()})


class ActAddMethod(Method):
    RULES = {**Method.RULES, "layers": Rule(nonempty=True),
             "position": Rule(choices="pkt.methods.actadd:POSITIONS")}

    def __init__(self, ctx: Setting, name: str = "actadd", layers: list[int] | int | None = None,
                 coefficient: float = 4.0, position: str = "mean", include_prompt: bool = False,
                 recompute: bool = False, batch_size: int | None = None):
        n = len(decoder_layers(ctx.lm.model))
        if layers is None:  # the middle decoder block (15 of SmolLM2-135M's 30)
            layers = [n // 2]
        layers = [layers] if isinstance(layers, int) else list(layers or [])
        if batch_size is None:
            batch_size = ctx.gen.batch_size
        super().__init__(ctx, name, layers=layers, coefficient=coefficient, position=position,
                         include_prompt=include_prompt)
        resolved = resolve_layers(layers, n, f"; about {n // 2} is the middle")
        self.layers = resolved
        self.coefficient, self.position = float(coefficient), position
        self.include_prompt, self.recompute = bool(include_prompt), bool(recompute)
        self.batch_size = max(1, int(batch_size))
        self.store = ArtifactStore(Path(ctx.cache_dir) / "artifacts")
        self.vectors: dict[int, torch.Tensor] = {}  # the HIGH direction, float32 on CPU

    def vector_key(self) -> dict:
        ctx = self.ctx
        return {
            "stage": "actadd-vector", "version": VECTOR_VERSION, "model": ctx.lm.name,
            "model_fingerprint": ctx.lm.fingerprint, "trait": ctx.bench.trait,
            "data_hash": ctx.bench.data_hash,
            "search_ids": [int(r["_line"]) for r in ctx.bench.search],
            "layers": sorted(self.layers), "position": self.position, "seed": ctx.seed,
            "prompt": prompts.ROLEPLAY,
        }

    def prepare(self, out: Outputs | None = None) -> Prepared:
        ctx = self.ctx
        self.out = out
        key = self.vector_key()
        path = None if self.recompute else self.store.load("actadd_vector", key)
        if path is not None:
            log.info("reusing cached steering vector %s", path)
            t = load_file(str(path / "vectors.safetensors"))
            self.vectors = {i: t[f"layer.{i}"] for i in self.layers}
            cached = True
        else:
            if not ctx.compute:
                raise identify.NotIdentified(f"no ActAdd vector of {ctx.bench.trait} is cached "
                                             f"yet for {ctx.lm.name} with these settings")
            self.vectors = steering_vectors(ctx.lm, ctx.bench, ctx.seed, self.layers,
                                            self.position, self.batch_size, ctx.progress)
            norms = {str(i): float(v.norm()) for i, v in self.vectors.items()}

            def write(tmp: Path):
                save_file({f"layer.{i}": v for i, v in self.vectors.items()},
                          str(tmp / "vectors.safetensors"))

            path = self.store.save("actadd_vector", key, write,
                                   extra={"model": ctx.lm.name, "trait": ctx.bench.trait,
                                          "direction": "high - low", "norms": norms,
                                          "n_questions": len(ctx.bench.search)})
            cached = False
        self.prepared.artifacts["actadd_vector"] = path.name
        self.prepared.metrics["actadd_vector_norm"] = [float(self.vectors[i].norm()) for i in self.layers]
        self.prepared.metrics["actadd_cached"] = cached
        self.prepared.fresh = not cached
        return self.prepared

    def additions(self, aspect: str | None = None) -> dict[int, torch.Tensor]:
        """What is added per layer for ``aspect``: +-coefficient * strength * vector (the
        strength a profile gives, 1.0 without one)."""
        if not self.vectors:
            raise PktError("method=actadd: call prepare() before intervention()")
        sign = 1.0 if (aspect or self.ctx.aspect) == "high" else -1.0
        s = sign * self.coefficient * (1.0 if self.profile_strength is None
                                       else float(self.profile_strength))
        return {i: s * self.vectors[i] for i in self.layers}

    def intervention(self, scope: Scope | None = None):
        return steer(self.ctx.lm.model, self.additions(), self.include_prompt, scope)

    def row_edit(self) -> RowEdit:
        return RowEdit.vectors("resid.post", self.additions(), self.include_prompt)

    # a profile: the sum of every trait's additions (its vector times its sign and
    # strength), at the layers of the method's config
    @classmethod
    def profile_additions(cls, parts: list[ActAddMethod]) -> dict[int, torch.Tensor]:
        return sum_by_layer(m.additions() for m in parts)

    @classmethod
    def profile_intervention(cls, parts: list[ActAddMethod], profile, scope=None):
        return steer(parts[0].ctx.lm.model, cls.profile_additions(parts),
                     parts[0].include_prompt, scope)

    @classmethod
    def profile_row_edit(cls, parts: list[ActAddMethod], profile) -> RowEdit:
        return RowEdit.vectors("resid.post", cls.profile_additions(parts), parts[0].include_prompt)

    @classmethod
    def profile_info(cls, parts: list[ActAddMethod], profile) -> dict:
        adds = cls.profile_additions(parts)
        return {"vector_norm": {str(i): float(v.norm()) for i, v in adds.items()}}
