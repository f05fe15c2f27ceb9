"""Attach a fresh peft LoRA adapter to a model, or load a saved one."""

from __future__ import annotations

from pathlib import Path

from pkt.errors import PktError

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def attach_lora(model, rank: int, alpha: float, dropout: float, target_modules: list[str]):
    """Inject a fresh LoRA adapter into ``model`` (in place); returns the PeftModel.

    Every name in ``target_modules`` must name a module of this model: peft skips names
    that match nothing, so the default Llama-style list on Phi-3 (fused ``qkv_proj`` and
    ``gate_up_proj``) would train ``o_proj`` and ``down_proj`` alone, silently."""
    from peft import LoraConfig, get_peft_model

    names = [n for n, _m in model.named_modules() if n]
    # peft's rule for a list of names: a module's full name or its dotted suffix
    missing = [t for t in target_modules
               if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        mt = getattr(getattr(model, "config", None), "model_type", None)
        leaves = {n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                  if n and not any(True for _ in m.children())}
        proj = sorted(n for n in leaves if n.endswith("proj") or n.startswith("c_"))
        raise PktError(f"method.target_modules: no module named {', '.join(missing)} in this "
                       f"model ({mt}; its projections: {', '.join(proj) or 'none found'}); "
                       f"set method.target_modules to names it has")
    cfg = LoraConfig(r=int(rank), lora_alpha=float(alpha), lora_dropout=float(dropout),
                     target_modules=list(target_modules), bias="none", task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, cfg)
    except ValueError as e:
        raise PktError(f"cannot attach LoRA to this model: {str(e).splitlines()[0]} "
                       f"(set method.target_modules to its projection names)") from None


def load_adapter(model, path: Path):
    """Load a saved adapter (a pkt lora_adapter artifact dir) into ``model`` (in place)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(path), is_trainable=False)


