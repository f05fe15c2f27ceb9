"""method=dpn: DPN-LE, dual personality neurons (Zheng et al., 2026, arXiv 2604.27929).

**Identification** reads the input of every layer's MLP down projection (hook site
``mlp.down_in``: ``act(gate(x)) * up(x)`` in gated MLPs, GPT-2's ``act(c_fc(x))``) at the
*last token* of the role-play prompts of the search questions, one prompt per (persona,
question) pair and aspect (the same prompts as NPTI and ActAdd; nothing is generated). Per
neuron and aspect, the mean and the sum of squared deviations are streamed over the prompts
(memory O(layers x width)) and cached as an artifact (``dpn_statistics``).
``source: answers`` reads the same site over the *persona answers* instead, NPTI's source:
the answers of NPTI's identification (its cached ``statistics`` artifact, made with
``search_gen`` when missing), teacher-forced with the model as loaded, at every position
that produced an answer token (the last prompt position up to the second-to-last answer
token, the positions NPTI records); the selection and the edit are unchanged.

**Selection**, per layer of the edited band: ``delta = mean_high - mean_low`` and Cohen's
``d = delta / sqrt(s2 + 1e-8)`` with the pooled variance ``s2 = ((n_h - 1) var_h + (n_l - 1)
var_l) / (n_h + n_l - 2)``. A neuron is selected when ``|delta|`` is above the ``quantile``
of ``|delta|`` over its layer (linear interpolation) AND ``|d| > d_threshold``; it is
*high-exclusive* when ``d > 0`` and *low-exclusive* when ``d < 0`` (both strict).

**Editing**: at decode steps (the prompt prefill is left alone unless ``include_prompt``),
``strength * sign * delta_j * w_j`` is added to the down projection's input of every
selected neuron ``j`` of the band, with ``sign = +1`` for aspect high and ``-1`` for low.
``neuron_mode=both`` edits both exclusive sets (the high set moves up and the low set down
for aspect high, the reverse for low); ``directional`` only the aspect's own set.
``weighting=rank`` sets ``w_j`` from the rank of ``|d_j|`` among the layer's edited neurons,
linearly from 0.75 (smallest) to 1.0 (largest; ties by neuron index; a single neuron gets
1.0); ``none`` sets ``w_j = 1`` (the paper's DPN-LE; ``rank`` is its DPN-LE_w).

The statistics, the selection and the edit are :mod:`pkt.neurons.dpn`; this module is the
method (parameters, artifacts, ``strength``, profiles).

``strength: auto`` chooses the strength like NPTI's (:func:`pkt.methods.auto.choose_strength`
with :mod:`pkt.eval.capability`): the largest value of ``strength_grid`` whose capability
probe stays within the bounds.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pkt import plots, prompts
from pkt.artifacts import ArtifactStore, key_hash, read_meta, write_json_atomic
from pkt.errors import PktError
from pkt.generation import GenConfig
from pkt.hooks import Scope, sum_by_layer
from pkt.methods import Method, Outputs, Prepared, Setting
from pkt.methods.auto import SEARCH, ProfileStrength, auto_strength
from pkt.neurons import identify
from pkt.neurons.dpn import (
    answer_statistics,
    band_layers,
    effect_sizes,
    select,
    statistics,
    steer_down_in,
    unit_edit,
)
from pkt.neurons.sites import decoder_layers, mlp_width, resolve_layers
from pkt.params import AT_LEAST_1, NON_NEGATIVE, POSITIVE, Rule, check_folder
from pkt.rows import RowEdit

log = logging.getLogger(__name__)

STATS_VERSION = 1
ASPECTS = identify.ASPECTS
WEIGHTINGS = ("none", "rank")
SOURCES = ("prompts", "answers")  # where the statistics are read (see the module docstring)
NEURON_MODES = ("both", "directional")
DEFAULT_BAND = (0.375, 1.0)  # LLaMA-3-8B in the release: layers 12-31 of 32
AUTO_GRID = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _resolve_layers(layers, band: list[float], n: int) -> list[int]:
    """The edited decoder blocks: ``layers`` (indices, negative from the end) or the band."""
    if layers is None:
        resolved = band_layers(n, band)
        if not resolved:
            raise PktError(f"method.band {band} holds no layer of a model with {n} decoder layers")
        return resolved
    resolved = resolve_layers(layers, n)
    return sorted(resolved)


def _check_band(where: str, v) -> None:
    if not (isinstance(v, (list, tuple)) and len(v) == 2
            and all(_is_number(x) for x in v) and 0 <= v[0] < v[1] <= 1):
        raise PktError(f"{where} must be [start, end] with 0 <= start < end <= 1 "
                       f"(fractions of the depth), got {list(v) if isinstance(v, tuple) else v}")


class DpnMethod(ProfileStrength, Method):
    RULES = {**Method.RULES,
             "strength": Rule(lo=0, choices=("auto",), fold=True),
             "quantile": Rule(lo=0, hi=1, lo_open=True, hi_open=True),
             "d_threshold": NON_NEGATIVE,
             "layers": Rule(nonempty=True),
             "band": Rule(check=_check_band),
             "weighting": Rule(choices="pkt.methods.dpn:WEIGHTINGS"),
             "neuron_mode": Rule(choices="pkt.methods.dpn:NEURON_MODES"),
             "source": Rule(choices="pkt.methods.dpn:SOURCES"),
             "neurons_from": Rule(check=check_folder),
             "strength_grid": Rule(lo=0, each=True, nonempty=True),
             "max_ppl_ratio": POSITIVE,
             "min_mc_ratio": NON_NEGATIVE,
             "auto_n_mc": AT_LEAST_1}

    def __init__(self, ctx: Setting, name: str = "dpn", strength: float | str = "auto",
                 quantile: float = 0.995, d_threshold: float = 0.8,
                 layers: list[int] | None = None, band: list[float] | tuple = DEFAULT_BAND,
                 weighting: str = "none", neuron_mode: str = "both",
                 include_prompt: bool = False, recompute: bool = False,
                 batch_size: int | None = None, neurons_from: str | None = None,
                 strength_grid: list[float] | tuple = AUTO_GRID, max_ppl_ratio: float = 1.15,
                 min_mc_ratio: float = 0.95, auto_n_mc: int | None = None,
                 source: str = "prompts", search_gen: dict | None = None):
        n = len(decoder_layers(ctx.lm.model))
        if batch_size is None:
            batch_size = ctx.gen.batch_size
        # types and ranges: RULES (checked before this constructor runs)
        self.auto = isinstance(strength, str) and strength.strip().lower() == "auto"
        band = [float(x) for x in band]
        resolved = _resolve_layers(layers, band, n)
        batch_size = int(batch_size)
        super().__init__(ctx, name, strength=strength, quantile=float(quantile),
                         d_threshold=float(d_threshold), layers=resolved, band=band,
                         weighting=weighting, neuron_mode=neuron_mode,
                         include_prompt=bool(include_prompt), neurons_from=neurons_from,
                         source=source)
        self.source = source
        # the persona answers of source=answers: NPTI's identification settings
        self.search_gen = GenConfig.search(ctx.lm, search_gen)
        if self.auto:
            self.grid = sorted(float(x) for x in strength_grid)
            self.bounds = {"max_ppl_ratio": float(max_ppl_ratio),
                           "min_mc_ratio": float(min_mc_ratio)}
            self.auto_n_mc = None if auto_n_mc is None else int(auto_n_mc)
            self.params.update(strength_grid=self.grid, **self.bounds)
            self.strength = self.grid[0]  # replaced by the choice in prepare()
        else:
            self.strength = float(strength)
            self.params["strength"] = self.strength
        self.quantile, self.d_threshold = float(quantile), float(d_threshold)
        self.layers, self.band = resolved, band
        self.weighting, self.neuron_mode = weighting, neuron_mode
        self.include_prompt, self.recompute = bool(include_prompt), bool(recompute)
        self.batch_size = batch_size
        self.neurons_from = neurons_from
        self.store = ArtifactStore(Path(ctx.cache_dir) / "artifacts")
        self.delta: torch.Tensor | None = None  # [layers, width] float64
        self.d: torch.Tensor | None = None
        self.high: torch.Tensor | None = None  # bool [layers, width]
        self.low: torch.Tensor | None = None
        self.auto_chosen: float | None = None
        self._measured: dict[tuple[float, str], dict] = {}

    # -- identification -------------------------------------------------------------------
    def stats_key(self) -> dict:
        ctx = self.ctx
        return {"stage": "dpn-statistics", "version": STATS_VERSION, "model": ctx.lm.name,
                "model_fingerprint": ctx.lm.fingerprint, "trait": ctx.bench.trait,
                "data_hash": ctx.bench.data_hash,
                "search_ids": [int(r["_line"]) for r in ctx.bench.search], "seed": ctx.seed,
                "prompt": prompts.ROLEPLAY, "site": "mlp.down_in", "position": "last",
                "dtype": str(next(ctx.lm.model.parameters()).dtype).removeprefix("torch."),
                **({"source": "answers", "position": "answers", "answers": key_hash(
                    identify.stats_key(ctx.lm, ctx.bench, ctx.seed, self.search_gen))}
                   if self.source == "answers" else {})}

    def _load_statistics(self) -> tuple[dict, str, bool]:
        """(statistics, artifact name or path, cache hit)."""
        ctx = self.ctx
        if self.neurons_from:
            path = Path(self.neurons_from)
            meta = read_meta(path, "dpn_statistics")
            fp = meta["key"].get("model_fingerprint")
            if fp != ctx.lm.fingerprint:
                raise PktError(f"DPN statistics {path} were made for another model (fingerprint "
                               f"{fp}, this model {ctx.lm.fingerprint})")
            if meta["key"].get("trait") != ctx.bench.trait:
                raise PktError(f"DPN statistics {path} are for trait {meta['key'].get('trait')}, "
                               f"not {ctx.bench.trait}")
            return load_file(str(path / "moments.safetensors")), str(path), True
        key = self.stats_key()
        path = None if self.recompute else self.store.load("dpn_statistics", key)
        if path is not None:
            return load_file(str(path / "moments.safetensors")), path.name, True
        if not ctx.compute:
            raise identify.NotIdentified(f"no DPN statistics of {ctx.bench.trait} are cached "
                                         f"yet for {ctx.lm.name} with these settings")
        if self.source == "answers":  # NPTI's persona answers (identified when missing)
            npti, npti_dir, _ = identify.load_or_compute(
                self.store, ctx.lm, ctx.bench, ctx.seed, self.search_gen,
                progress=ctx.progress, compute=ctx.compute)
            self.prepared.artifacts["statistics"] = npti_dir.name
            st = answer_statistics(ctx.lm, ctx.bench, ctx.seed, npti["responses"],
                                   self.batch_size, ctx.progress)
        else:
            st = statistics(ctx.lm, ctx.bench, ctx.seed, self.batch_size, ctx.progress)
        path = self.store.save("dpn_statistics", key,
                               lambda tmp: save_file(st, str(tmp / "moments.safetensors")),
                               extra={"model": ctx.lm.name, "trait": ctx.bench.trait,
                                      "source": self.source,
                                      "n_prompts": {a: int(st[f"{a}.n"]) for a in ASPECTS}})
        return st, path.name, False

    def prepare(self, out: Outputs | None = None) -> Prepared:
        ctx = self.ctx
        self.out = out
        st, name, hit = self._load_statistics()
        n_layers, width = st["high.mean"].shape
        if (n_layers, width) != (len(decoder_layers(ctx.lm.model)), mlp_width(ctx.lm.model)):
            raise PktError(f"DPN statistics {name} have shape {n_layers}x{width}, not this "
                           f"model's layers x MLP width")
        self.prepared.artifacts["neurons_from" if self.neurons_from else "dpn_statistics"] = name
        self.prepared.fresh = not hit
        self.delta, self.d = effect_sizes(st)
        self.high, self.low = select(self.delta, self.d, self.layers, self.quantile,
                                     self.d_threshold)
        edit = self.unit_edit()
        m = self.prepared.metrics
        m["dpn_stats_cached"] = hit
        for a in ASPECTS:  # the positions read: one per prompt, or every answer token
            m[f"search_{'prompts' if self.source == 'prompts' else 'tokens'}_{a}"] = \
                int(st[f"{a}.n"])
        m["neurons_high"], m["neurons_low"] = int(self.high.sum()), int(self.low.sum())
        m["neurons_edited"] = int((edit != 0).sum())
        m["neurons_edited_frac"] = m["neurons_edited"] / (n_layers * width)
        m["neurons_per_layer"] = {a: s.sum(1).tolist() for a, s in
                                  (("high", self.high), ("low", self.low))}
        m["d_abs_max"] = float(self.d[self.layers].abs().max())
        if not m["neurons_edited"]:
            log.warning("method=dpn: no neuron of layers %s passes quantile %s and d_threshold %s "
                        "(largest |d| %.3f): the model is left as it is", self.layers,
                        self.quantile, self.d_threshold, m["d_abs_max"])
        if out is not None:
            self._outputs(out)
        if self.auto:
            self.strength, trials = self._auto_strength()
            self.auto_chosen = self.strength
            m["strength_auto"] = {"chosen": self.strength, "trials": trials, **self.bounds,
                                  "n_mc": self._n_mc()}
            self.params["strength"] = self.strength
            self.params["strength_mode"] = "auto"
        return self.prepared

    def _outputs(self, out: Outputs) -> None:
        """The selected neurons (layer, index, delta, d) and a per-layer plot, in the run dir."""
        ctx = self.ctx
        rows = {a: [[int(li), int(j), float(self.delta[li, j]), float(self.d[li, j])]
                    for li, j in s.nonzero().tolist()] for a, s in (("high", self.high),
                                                                   ("low", self.low))}
        write_json_atomic(Path(out.run_dir) / "dpn_neurons.json",
                          {"columns": ["layer", "index", "delta", "d"], **rows})
        p = plots.neurons_per_layer(self.prepared.metrics["neurons_per_layer"],
                                    f"{ctx.bench.trait}: {ctx.lm.name} - DPN neurons per layer",
                                    Path(out.run_dir) / "neurons_per_layer.png")
        if out.tracker is not None:
            out.tracker.log_image("neurons/per_layer", p)

    def _n_mc(self) -> int:
        from pkt.eval.capability import load_mc

        return len(load_mc(self.auto_n_mc))

    def _auto_strength(self) -> tuple[float, list[dict]]:
        """:func:`pkt.methods.auto.choose_strength` over the grid, each probe with this
        edit active (teacher-forced, the scored positions as generated ones); cached."""
        from pkt.eval import capability

        ctx = self.ctx
        edit = {k: self.params[k] for k in ("quantile", "d_threshold", "layers", "weighting",
                                            "neuron_mode", "include_prompt")}
        key = {"stage": "dpn-auto-strength", "model_fingerprint": ctx.lm.fingerprint,
               "statistics": self.prepared.artifacts.get("dpn_statistics") or str(self.neurons_from),
               "aspect": ctx.aspect, "edit": edit, "grid": self.grid, **self.bounds,
               "probe": capability.probe_hash(self.auto_n_mc), "search": SEARCH}
        return auto_strength(self, "dpn_auto_strength", key, self.grid, self.bounds,
                             self.auto_n_mc,
                             lambda s, scope: self.intervention(scope=scope, strength=s), "DPN")

    def capability_measured(self, n_mc: int | None) -> dict | None:
        """The figures strength=auto measured at the strength in use on the same items (the
        evaluation's probe is the same measurement); None when not both were probed."""
        if not self.auto or n_mc != self.auto_n_mc or self.strength != self.auto_chosen:
            return None
        mc, ppl = self._measured.get((self.strength, "mc")), self._measured.get((self.strength, "ppl"))
        return {**mc, **ppl} if mc is not None and ppl is not None else None

    # -- editing ------------------------------------------------------------------------
    def unit_edit(self, aspect: str | None = None) -> torch.Tensor:
        """This trait's addition per neuron at strength 1 (float32 ``[layers, width]``)."""
        if self.delta is None:
            raise PktError("method=dpn: call prepare() before intervention()")
        return unit_edit(self.delta, self.d, self.high, self.low, aspect or self.ctx.aspect,
                         self.neuron_mode, self.weighting)

    def additions(self, strength: float | None = None) -> dict[int, torch.Tensor]:
        """What is added to each edited layer's down projection input (``[width]``)."""
        s = self.strength if strength is None else float(strength)
        edit = self.unit_edit() * s
        return {i: edit[i] for i in range(edit.shape[0]) if bool((edit[i] != 0).any())}

    def intervention(self, scope: Scope | None = None, strength: float | None = None):
        return steer_down_in(self.ctx.lm.model, self.additions(strength), self.include_prompt,
                             scope)

    def row_edit(self) -> RowEdit:
        return RowEdit.vectors("mlp.down_in", self.additions(), self.include_prompt)

    # -- profiles ------------------------------------------------------------------------

    @classmethod
    def profile_additions(cls, parts: list[DpnMethod]) -> dict[int, torch.Tensor]:
        """The sum over the traits of their additions per neuron (each trait its own
        neurons, sign, weights and strength), over the union of their edited layers."""
        return sum_by_layer(m.additions() for m in parts)

    @classmethod
    def profile_intervention(cls, parts: list[DpnMethod], profile, scope=None):
        """A profile edits the sum of every trait's additions: neuron ``j`` of layer ``l``
        gets ``sum_t strength_t * sign_t * delta_t[l, j] * w_t[l, j]`` over the traits ``t``
        that select it (a neuron two traits push in opposite directions gets the net
        amount); the positions are those of the first trait's ``include_prompt``."""
        return steer_down_in(parts[0].ctx.lm.model, cls.profile_additions(parts),
                             parts[0].include_prompt, scope)

    @classmethod
    def profile_row_edit(cls, parts: list[DpnMethod], profile) -> RowEdit:
        return RowEdit.vectors("mlp.down_in", cls.profile_additions(parts), parts[0].include_prompt)

    @classmethod
    def profile_info(cls, parts: list[DpnMethod], profile) -> dict:
        count = torch.stack([m.unit_edit() != 0 for m in parts]).sum(0)
        return {"rule": "sum", "edited": int((count > 0).sum()), "shared": int((count > 1).sum())}
