"""Attach a fresh peft LoRA adapter to a model, or load a saved one."""

from __future__ import annotations

from pathlib import Path

from pkt.errors import PktError

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def attach_lora(model, rank: int, alpha: float, dropout: float, target_modules: list[str]):
    """Inject a fresh LoRA adapter into ``model`` (in place); returns the PeftModel."""
    from peft import LoraConfig, get_peft_model

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


