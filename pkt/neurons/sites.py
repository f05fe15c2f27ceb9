"""Where a model's MLP neurons live, per architecture.

A *neuron* is one unit of the MLP's activation output *before* any product with an up
projection: ``act_fn(gate_proj(x))`` in gated Llama-style MLPs, the gate half of Phi-3's
fused ``gate_up_proj`` (its ``activation_fn`` sees only that half), ``act(c_fc(x))`` in
GPT-2. Every supported family applies that activation through its own module, so a forward
hook on that module reads (and may replace) exactly the neuron values, without computing
anything twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pkt.errors import PktError


@dataclass(frozen=True)
class SiteSpec:
    layers: str  # attribute path from the base model to the list of decoder blocks
    act: str  # attribute path from a block to the activation module
    mlp: str  # attribute path from a block to its MLP (for messages)
    # attribute path from a block to the MLP's down projection, whose input is site
    # mlp.down_in (DPN-LE's neurons)
    down: str = "mlp.down_proj"


_GATED = SiteSpec(layers="model.layers", act="mlp.act_fn", mlp="mlp")

ARCHITECTURES: dict[str, SiteSpec] = {
    "llama": _GATED,
    "mistral": _GATED,
    "qwen2": _GATED,
    "qwen3": _GATED,
    "gemma": _GATED,
    "gemma2": _GATED,
    "gemma3_text": _GATED,
    "olmo2": _GATED,
    "phi3": SiteSpec(layers="model.layers", act="mlp.activation_fn", mlp="mlp"),
    "gpt2": SiteSpec(layers="transformer.h", act="mlp.act", mlp="mlp", down="mlp.c_proj"),
}


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """Unwrap a peft model to the transformers model underneath."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


# config fields that only mixture-of-experts models have (Mixtral, Qwen2/3-MoE, OLMoE,
# DeepSeek, Phi-MoE, Granite-MoE, ...)
_MOE_FIELDS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_intermediate_size")


def is_moe(config) -> bool:
    """Whether ``config`` describes a mixture-of-experts model."""
    mt = str(getattr(config, "model_type", "") or "")
    return "moe" in mt or mt == "mixtral" or any(getattr(config, k, None) for k in _MOE_FIELDS)


def spec_for(model: torch.nn.Module) -> SiteSpec:
    m = base_model(model)
    mt = getattr(m.config, "model_type", None)
    spec = ARCHITECTURES.get(mt)
    if spec is None:
        if is_moe(m.config):
            raise PktError(
                f"unsupported architecture: model_type '{mt}' is a mixture of experts (its MLP "
                f"neurons are split over experts routed per token; pkt's neuron statistics and "
                f"edits need one dense MLP per layer); supported: {', '.join(sorted(ARCHITECTURES))}"
            )
        try:
            mlp_cls = type(_get(_get(m, "model.layers")[0], "mlp")).__name__
        except (AttributeError, IndexError, TypeError):
            mlp_cls = "unknown"
        raise PktError(
            f"unsupported architecture: model_type '{mt}' (MLP class {mlp_cls}); "
            f"supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    return spec


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    return list(_get(base_model(model), spec_for(model).layers))


def neuron_sites(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The activation module of every layer, in layer order (one hook site per layer)."""
    spec = spec_for(model)
    sites = [_get(layer, spec.act) for layer in decoder_layers(model)]
    if len({id(s) for s in sites}) != len(sites):
        raise PktError("activation modules are shared between layers; cannot address neurons per layer")
    return sites


def down_proj_sites(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The MLP down projection of every layer, in layer order. A forward *pre*-hook there
    reads (and may replace) its input ``[batch, seq, width]``: the gated hidden state
    ``act(gate(x)) * up(x)`` of gated MLPs (Phi-3: the halves of its fused ``gate_up_proj``),
    GPT-2's ``act(c_fc(x))``; the same width as the neurons of :func:`neuron_sites`."""
    spec = spec_for(model)
    sites = [_get(layer, spec.down) for layer in decoder_layers(model)]
    if len({id(s) for s in sites}) != len(sites):
        raise PktError("down projections are shared between layers; cannot address neurons per layer")
    return sites


def require_one_device(model: torch.nn.Module, what: str) -> None:
    """One clear error when a model is spread over several devices by ``device_map``."""
    devices = sorted({str(d) for d in (getattr(base_model(model), "hf_device_map", None) or {}).values()})
    if len(devices) > 1:
        raise PktError(f"{what} needs the model on one device; this one is spread over "
                       f"{len(devices)} ({', '.join(devices)}) by model.device_map "
                       f"(set model.device_map=null to load it on one GPU)")


def mlp_width(model: torch.nn.Module) -> int:
    cfg = base_model(model).config
    for k in ("intermediate_size", "n_inner"):
        v = getattr(cfg, k, None)
        if v:
            return int(v)
    return 4 * int(cfg.n_embd)  # GPT-2 default


def shape(model: torch.nn.Module) -> tuple[int, int]:
    """(layers, neurons per layer)."""
    return len(neuron_sites(model)), mlp_width(model)


def resolve_layers(layers, n: int, hint: str = "") -> list[int]:
    """Decoder block indices (negative count from the end) checked against a model with
    ``n`` blocks, as non-negative indices in the given order; one PktError line otherwise."""
    layers = [layers] if isinstance(layers, int) and not isinstance(layers, bool) else layers
    if not isinstance(layers, (list, tuple)) or not layers:
        raise PktError(f"method.layers is empty (give decoder block indices, e.g. [{n // 2}])")
    resolved = []
    for layer in layers:
        if not isinstance(layer, int) or isinstance(layer, bool) or not -n <= layer < n:
            raise PktError(f"method.layers: {layer!r} is out of range for a model with {n} "
                           f"decoder layers (0..{n - 1}{hint})")
        resolved.append(layer % n)
    if len(set(resolved)) != len(resolved):
        raise PktError(f"method.layers names a layer twice: {list(layers)}")
    return resolved
