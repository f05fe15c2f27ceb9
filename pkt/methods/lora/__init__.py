"""method=lora: the fine-tuning baseline (a peft LoRA adapter trained with Lightning).

Training data are the persona-conditioned answers of neuron identification (the same cached
``statistics`` artifact as method=neuron, so a prior neuron run makes them free): the answers
of ``ctx.aspect`` only, each re-paired with the NEUTRAL evaluation prompt, so that the
adapter learns to answer in that aspect without being told. The loss covers the response
tokens (and the EOS after them) only.

The adapter is injected into ``ctx.lm.model`` in place (``ctx.lm.model`` stays the same
transformers model, so neuron hooks and generation keep working) and is DISABLED outside
:meth:`LoraMethod.intervention`: the plain base model stays available, e.g. for perplexity.
Trained adapters are cached artifacts (``lora_adapter``) keyed by model fingerprint, trait,
aspect, training data and every hyper-parameter, and reused by later runs.

Files: ``data.py`` (training examples, split, batches), ``adapter.py`` (attach or load a
peft adapter), ``module.py`` (the Lightning module), this file (the method: cache key,
training run, intervention).
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import typing
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from torch.utils.data import DataLoader

from pkt import prompts
from pkt.artifacts import ArtifactStore, key_hash, read_meta
from pkt.errors import PktError
from pkt.generation import GenConfig
from pkt.methods import Method, Outputs, Prepared, Setting
from pkt.methods.lora.adapter import DEFAULT_TARGETS, attach_lora, load_adapter
from pkt.methods.lora.data import collate, split, training_examples
from pkt.methods.lora.module import LoraModule
from pkt.neurons import identify
from pkt.neurons.sites import require_one_device
from pkt.params import AT_LEAST_1, NON_NEGATIVE, POSITIVE, Rule, _show, check_folder

log = logging.getLogger(__name__)

ADAPTER_VERSION = 1
STRATEGIES = ("auto", "ddp", "fsdp", "deepspeed", "single_device")
__all__ = ["ADAPTER_VERSION", "DEFAULT_TARGETS", "STRATEGIES", "LoraMethod", "LoraModule",
           "attach_lora", "collate", "load_adapter", "split", "training_examples"]


# -- what Lightning accepts (method.precision, accelerator, devices) --------------------

def _lightning_precisions() -> tuple:
    from lightning.fabric.connector import (
        _PRECISION_INPUT_INT,
        _PRECISION_INPUT_STR,
        _PRECISION_INPUT_STR_ALIAS,
    )

    return tuple(typing.get_args(_PRECISION_INPUT_STR) + typing.get_args(_PRECISION_INPUT_STR_ALIAS)
                 + typing.get_args(_PRECISION_INPUT_INT))


def _lightning_accelerators() -> tuple:
    from lightning.pytorch.accelerators import AcceleratorRegistry

    return ("auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators()))


def _check_precision(where: str, v) -> None:
    allowed = _lightning_precisions()
    if v not in allowed or isinstance(v, bool):
        raise PktError(f"unknown {where} {_show(v)} (choose from: "
                       f"{', '.join(str(a) for a in allowed)})")


def _check_devices(where: str, v) -> None:
    """Lightning's ``devices``: auto, a count (>= 1, or -1: all), or device ids (a list, or a
    comma-separated string). Whether this machine has them is Lightning's to say."""
    def count(x) -> bool:
        return isinstance(x, int) and not isinstance(x, bool) and (1 <= x <= MAX_DEVICES
                                                                   or x == -1)

    def ids(xs) -> bool:
        return bool(xs) and all(isinstance(x, int) and not isinstance(x, bool)
                                and 0 <= x < MAX_DEVICES for x in xs)

    ok = v == "auto" or count(v)
    if isinstance(v, str) and not ok:
        parts = [x.strip() for x in v.split(",")]
        try:
            nums = [int(x) for x in parts if x]
        except ValueError:
            nums = None
        ok = nums is not None and len(nums) == len(parts) and (
            count(nums[0]) if len(nums) == 1 and "," not in v else ids(nums))
    if isinstance(v, (list, tuple)):
        ok = ids(list(v))
    if not ok:
        raise PktError(f"{where} must be auto, a device count in [1, {MAX_DEVICES}] (or -1: all), "
                       f"or a list of device ids >= 0, got {_show(v)}")


def _device_list(v) -> tuple[int | None, list[int] | None]:
    """Lightning's ``devices`` (already well formed) as (count, ids): one of them is set."""
    if isinstance(v, (list, tuple)):
        return None, [int(x) for x in v]
    if isinstance(v, str) and "," in v:
        return None, [int(x) for x in v.split(",") if x.strip()]
    return int(v), None


def check_lora_devices(node: dict) -> None:
    """``method.devices`` against this machine, as Lightning will check it when training
    starts (after identification): CPU takes a process count, CUDA ids or counts that exist."""
    dev, acc = node.get("devices", "auto"), str(node.get("accelerator", "auto"))
    if dev == "auto" or acc not in ("auto", "cpu", "gpu", "cuda"):
        return
    import torch

    if acc in ("auto", "gpu"):
        mps = getattr(torch.backends, "mps", None)
        acc = ("cuda" if torch.cuda.is_available()
               else "mps" if mps is not None and mps.is_available() else "cpu")
    n, ids = _device_list(dev)
    if acc == "cpu":
        if ids is not None or n is None or n < 1:
            raise PktError(f"method.devices on CPU is a number of processes >= 1, got "
                           f"{_show(dev)} (accelerator {node.get('accelerator', 'auto')})")
    elif acc == "cuda":
        have = torch.cuda.device_count()
        missing = [i for i in ids if i >= have] if ids is not None else []
        if missing or (n is not None and n > have):
            raise PktError(f"method.devices={_show(dev)} asks for GPUs this machine does not have "
                           f"({have} visible)")


MAX_DEVICES = 1024  # per node



class LoraMethod(Method):
    profile_support = ("method=lora does not compose profiles (its adapter is trained on one "
                       "trait and aspect's persona answers); use method=neuron, actadd, prompt "
                       "or prompt_p2 for a profile")
    # a rank above the model's width adds nothing; 10**12 would only fail allocating the
    # adapter after identification (no model this runs on is 65536 wide)
    RULES = {**Method.RULES,
             "rank": Rule(lo=1, hi=65536), "alpha": POSITIVE,
             "dropout": Rule(lo=0, hi=1, hi_open=True),
             "target_modules": Rule(nonempty=True, each=True), "lr": POSITIVE,
             "weight_decay": NON_NEGATIVE, "max_epochs": AT_LEAST_1,
             "max_steps": Rule(lo=1, also=(-1,)),
             "val_fraction": Rule(lo=0, hi=1, lo_open=True, hi_open=True),
             "patience": NON_NEGATIVE, "max_length": Rule(lo=2), "grad_clip": NON_NEGATIVE,
             "accumulate_grad_batches": AT_LEAST_1,
             "accelerator": Rule(choices=_lightning_accelerators),
             "devices": Rule(check=_check_devices),
             "strategy": Rule(choices="pkt.methods.lora:STRATEGIES"),
             "precision": Rule(check=_check_precision),
             "adapter_from": Rule(check=check_folder)}
    # Lightning's precision may also be 16, 32 or 64
    ALSO = {"precision": [("int", None)]}
    NODE_CHECK = staticmethod(check_lora_devices)

    def __init__(self, ctx: Setting, name: str = "lora", rank: int = 8, alpha: float = 16,
                 dropout: float = 0.05, target_modules: list[str] | None = None,
                 lr: float = 2e-4, weight_decay: float = 0.0, batch_size: int = 8,
                 max_epochs: int = 2, max_steps: int = 100, val_fraction: float = 0.15,
                 patience: int = 2, restore_best: bool = True, max_length: int = 512,
                 grad_clip: float | None = 1.0, accumulate_grad_batches: int = 1,
                 accelerator: str = "auto", devices: int | str | list = "auto",
                 strategy: str = "auto", precision: str = "32-true",
                 gradient_checkpointing: bool = False, recompute: bool = False,
                 adapter_from: str | None = None, search_gen: dict | None = None):
        targets = list(target_modules or DEFAULT_TARGETS)
        super().__init__(ctx, name, rank=rank, alpha=alpha, dropout=dropout,
                         target_modules=targets, lr=lr, weight_decay=weight_decay,
                         batch_size=batch_size, max_epochs=max_epochs, max_steps=max_steps,
                         val_fraction=val_fraction, patience=patience, restore_best=restore_best,
                         max_length=max_length, grad_clip=grad_clip,
                         accumulate_grad_batches=accumulate_grad_batches, precision=precision,
                         adapter_from=adapter_from)
        # types and ranges: RULES (checked before this constructor runs)
        self.targets = targets
        self.accelerator, self.devices, self.strategy = accelerator, devices, str(strategy)
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self.recompute = bool(recompute)
        self.adapter_from = adapter_from
        self.search_gen = GenConfig.search(ctx.lm, search_gen)
        self.store = ArtifactStore(Path(ctx.cache_dir) / "artifacts")
        self.peft = None  # the PeftModel around ctx.lm.model, after prepare()
        self.training: dict = {}

    # -- keys ------------------------------------------------------------------------
    def hparams(self) -> dict:
        p = self.params
        return {k: p[k] for k in ("rank", "alpha", "dropout", "target_modules", "lr",
                                  "weight_decay", "batch_size", "max_epochs", "max_steps",
                                  "val_fraction", "patience", "restore_best", "max_length",
                                  "grad_clip", "accumulate_grad_batches", "precision")}

    def adapter_key(self) -> dict:
        ctx = self.ctx
        return {
            "stage": "lora-adapter", "version": ADAPTER_VERSION, "model": ctx.lm.name,
            "model_fingerprint": ctx.lm.fingerprint, "trait": ctx.bench.trait,
            "aspect": ctx.aspect, "data_hash": ctx.bench.data_hash,
            # the persona answers: statistics key (data, search ids, seed, search generation)
            "statistics": key_hash(identify.stats_key(ctx.lm, ctx.bench, ctx.seed, self.search_gen)),
            "prompt": prompts.NEUTRAL, "seed": ctx.seed, "hparams": self.hparams(),
        }

    # -- prepare ---------------------------------------------------------------------
    def prepare(self, out: Outputs | None = None) -> Prepared:
        ctx = self.ctx
        self.out = out
        if self.peft is not None:
            return self.prepared
        if self.adapter_from:
            path = Path(self.adapter_from)
            self._load(path)
            self.prepared.artifacts["lora_adapter_from"] = str(path)
            cached = True
        else:
            key = self.adapter_key()
            path = None if self.recompute else self.store.load("lora_adapter", key)
            if path is None and not ctx.compute:
                raise identify.NotIdentified(f"no LoRA adapter of {ctx.bench.trait} "
                                             f"({ctx.aspect}) is cached yet for {ctx.lm.name}")
            if path is None:  # trained here, or by another process this one waited for
                path, cached = self.store.load_or_compute(
                    "lora_adapter", key, lambda: self._train_and_save(key), self.recompute)
            else:
                cached = True
            if cached:
                log.info("reusing cached adapter %s", path)
                self._load(path)
            self.prepared.fresh = not cached
            self.prepared.artifacts["lora_adapter"] = path.name
        self.peft.base_model.disable_adapter_layers()
        ctx.lm.model.eval()
        t = self.training
        self.prepared.metrics.update({
            "lora_train_examples": t.get("train_examples"),
            "lora_val_examples": t.get("val_examples"),
            "lora_final_train_loss": t.get("final_train_loss"),
            "lora_best_val_loss": t.get("best_val_loss"),
            "lora_steps": t.get("steps"),
            "lora_adapter_cached": cached,
        })
        return self.prepared

    def _load(self, path: Path) -> None:
        ctx = self.ctx
        meta = read_meta(path, "lora_adapter")
        fp = meta.get("base_model_fingerprint")
        if fp != ctx.lm.fingerprint:
            raise PktError(f"LoRA adapter {path} was made for another base model "
                           f"(fingerprint {fp}, this model {ctx.lm.fingerprint})")
        for what, want in (("trait", ctx.bench.trait), ("aspect", ctx.aspect)):
            if meta.get(what) != want:
                raise PktError(f"LoRA adapter {path} is for {what} {meta.get(what)}, not {want}")
        self.peft = load_adapter(ctx.lm.model, path)
        self.training = dict(meta.get("training", {}))

    def _train_and_save(self, key: dict) -> Path:
        ctx = self.ctx
        st, stats_dir, hit = identify.load_or_compute(self.store, ctx.lm, ctx.bench, ctx.seed,
                                                      self.search_gen, progress=ctx.progress)
        self.prepared.artifacts["statistics"] = stats_dir.name
        self.prepared.metrics["neuron_stats_cached"] = hit
        examples = training_examples(ctx.lm.tokenizer, st["responses"], ctx.aspect,
                                     int(self.params["max_length"]))
        train, val = split(examples, self.params["val_fraction"], ctx.seed)
        torch.manual_seed(ctx.seed)
        self.peft = attach_lora(ctx.lm.model, self.params["rank"], self.params["alpha"],
                                self.params["dropout"], self.targets)
        module = self.fit(train, val)
        self.training = {
            "train_examples": len(train), "val_examples": len(val),
            "final_train_loss": module.final_train_loss, "best_val_loss": module.best_val_loss,
            "steps": int(module.trainer.global_step),
        }
        for k in ("final_train_loss", "best_val_loss"):  # JSON has no inf/nan
            if not math.isfinite(self.training[k]):
                self.training[k] = None
        return self.store.save(
            "lora_adapter", key, lambda tmp: self.peft.save_pretrained(str(tmp)),
            extra={"base_model_fingerprint": ctx.lm.fingerprint, "model": ctx.lm.name,
                   "trait": ctx.bench.trait, "aspect": ctx.aspect, "training": self.training})

    def loggers(self) -> list | bool:
        """The run's CSV log and W&B run; none when the method is prepared outside a run."""
        if self.out is None:
            return False
        out: list = [CSVLogger(save_dir=str(Path(self.out.run_dir) / "lightning"), name="",
                               version="lora")]
        tracker = self.out.tracker
        run = getattr(tracker, "run", None) if tracker is not None else None
        if run is not None:
            # the runner's own W&B run: Lightning logs into it and never finishes it
            out.append(WandbLogger(experiment=run))
        return out

    def fit(self, train: list[dict], val: list[dict]) -> LoraModule:
        """Train the attached adapter with a Lightning Trainer; restores the best val weights."""
        ctx, p = self.ctx, self.params
        model = ctx.lm.model
        require_one_device(model, "LoRA training")
        device = next(model.parameters()).device
        pad = ctx.lm.tokenizer.pad_token_id
        pad = 0 if pad is None else pad
        gen = torch.Generator()
        gen.manual_seed(int(ctx.seed))
        bs = int(p["batch_size"])
        train_dl = DataLoader(train, batch_size=bs, shuffle=True, generator=gen,
                              collate_fn=lambda b: collate(b, pad), num_workers=0)
        val_dl = DataLoader(val, batch_size=bs, shuffle=False,
                            collate_fn=lambda b: collate(b, pad), num_workers=0)
        module = LoraModule(self.peft, lr=p["lr"], weight_decay=p["weight_decay"])
        # Lightning's own folder: the run's, or (outside a run) one that is removed after
        scratch = tempfile.TemporaryDirectory(prefix="pkt-lora-") if self.out is None else None
        root = scratch.name if scratch else str(Path(self.out.run_dir) / "lightning")
        # max_steps may end training inside the first epoch, before the epoch's validation:
        # then validate at that batch, so early stopping and restore_best have a val_loss
        batches = int(p["max_steps"]) * int(p["accumulate_grad_batches"])
        check = batches if 0 < batches < len(train_dl) else None
        trainer = L.Trainer(
            val_check_interval=check,
            accelerator=self.accelerator, devices=self.devices, strategy=self.strategy,
            precision=p["precision"], max_epochs=int(p["max_epochs"]),
            max_steps=int(p["max_steps"]), gradient_clip_val=p["grad_clip"],
            accumulate_grad_batches=int(p["accumulate_grad_batches"]),
            callbacks=[EarlyStopping(monitor="val_loss", mode="min", patience=int(p["patience"]))],
            logger=self.loggers(), log_every_n_steps=1, enable_checkpointing=False,
            enable_progress_bar=bool(ctx.progress), enable_model_summary=bool(ctx.progress),
            num_sanity_val_steps=0, default_root_dir=root,
            deterministic=False,
        )
        if self.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.peft.train()  # Lightning keeps the module's mode; LoRA dropout needs train mode
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*does not have many workers.*")
                warnings.filterwarnings("ignore", message=".*is smaller than the logging interval.*")
                trainer.fit(module, train_dataloaders=train_dl, val_dataloaders=val_dl)
        finally:
            if self.gradient_checkpointing:
                model.gradient_checkpointing_disable()
            self.peft.to(device)
            self.peft.eval()
            if scratch is not None:
                scratch.cleanup()
        if p["restore_best"]:
            module.restore_best()
        log.info("LoRA: %d steps, final train loss %.4f, best val loss %.4f", trainer.global_step,
                 module.final_train_loss, module.best_val_loss)
        return module

    # -- apply -----------------------------------------------------------------------
    @contextlib.contextmanager
    def _enabled(self):
        if self.peft is None:
            raise PktError("method=lora: call prepare() before intervention()")
        self.peft.base_model.enable_adapter_layers()
        try:
            yield self
        finally:
            self.peft.base_model.disable_adapter_layers()

    def intervention(self, scope=None):
        """The adapter is enabled while the context is open. It acts at every position (prompt
        and answer alike, as in generation), so a teacher-forced ``scope`` changes nothing."""
        return self._enabled()
