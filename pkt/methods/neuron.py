"""method=neuron: NPTI (identify personality neurons, then edit them while generating)."""

from __future__ import annotations

import logging
from pathlib import Path

from safetensors.torch import load_file, save_file

from pkt import plots
from pkt.artifacts import ArtifactStore, read_meta
from pkt.errors import PktError
from pkt.generation import GenConfig
from pkt.hooks import Scope
from pkt.methods import Method, Outputs, Prepared, Setting
from pkt.methods.auto import AUTO_GRID, SEARCH, ProfileStrength, auto_strength
from pkt.neurons import identify
from pkt.neurons.induce import Induction, edit_tables
from pkt.neurons.release import export_release, file_name, import_release
from pkt.neurons.select import NeuronSet, resolve_k, select_sets
from pkt.neurons.sites import shape
from pkt.params import AT_LEAST_1, NON_NEGATIVE, POSITIVE, Rule, check_folder

log = logging.getLogger(__name__)
OTHER = {"high": "low", "low": "high"}
DEFAULT_K_MIN = 0.013


class NeuronMethod(ProfileStrength, Method):
    RULES = {**Method.RULES,
             "strength": Rule(lo=0, choices=("auto",), fold=True),
             "k_min": POSITIVE,
             "keep_prob": Rule(lo=0, hi=1, lo_open=True),
             "neurons_from": Rule(check=check_folder),
             "selection": Rule(choices="pkt.neurons.select:SELECTIONS"),
             "source": Rule(choices="pkt.neurons.identify:SOURCES"),
             "strength_grid": Rule(lo=0, each=True, nonempty=True),
             "max_ppl_ratio": POSITIVE,
             "min_mc_ratio": NON_NEGATIVE,
             "auto_n_mc": AT_LEAST_1}

    def __init__(self, ctx: Setting, name: str = "neuron", strength: float | str | None = None,
                 k_min: float | None = None, diff_threshold: float = 0.1, keep_prob: float = 0.9,
                 deactivate: bool = True, include_prompt: bool = False, recompute: bool = False,
                 neurons_from: str | None = None, search_gen: dict | None = None,
                 selection: str = "npti", strength_grid: list | None = None,
                 max_ppl_ratio: float = 1.15, min_mc_ratio: float = 0.95,
                 auto_n_mc: int | None = None, source: str = "answers"):
        # None: the model's own default (its config's npti_strength / npti_k_min), else
        # strength=auto and 1.3% of the MLP neurons
        if strength is None:
            strength = getattr(ctx.lm, "npti_strength", None) or "auto"
        if k_min is None:
            k_min = getattr(ctx.lm, "npti_k_min", None) or DEFAULT_K_MIN
        super().__init__(ctx, name, strength=strength, k_min=k_min, diff_threshold=diff_threshold,
                         keep_prob=keep_prob, deactivate=deactivate,
                         include_prompt=include_prompt, neurons_from=neurons_from,
                         selection=selection, source=source)
        # types and ranges: RULES (checked before this constructor runs)
        self.auto = isinstance(strength, str) and strength.strip().lower() == "auto"
        if self.auto:
            self.grid = sorted(float(x) for x in (strength_grid or AUTO_GRID))
            self.bounds = {"max_ppl_ratio": float(max_ppl_ratio), "min_mc_ratio": float(min_mc_ratio)}
            self.auto_n_mc = auto_n_mc
            self.params.update(strength_grid=self.grid, **self.bounds)
            self.strength = self.grid[0]  # replaced by the choice in prepare()
        else:
            self.strength = float(strength)
        self.selection, self.source = selection, source
        self.k_min, self.threshold = k_min, float(diff_threshold)
        self.keep_prob, self.deactivate, self.include_prompt = keep_prob, deactivate, include_prompt
        self.recompute, self.neurons_from = recompute, neurons_from
        self.search_gen = GenConfig.search(ctx.lm, search_gen)
        self.store = ArtifactStore(Path(ctx.cache_dir) / "artifacts")
        self.sets: dict[str, NeuronSet] = {}
        self.stats_dir: Path | None = None
        self.auto_chosen: float | None = None  # the single-trait strength=auto choice
        self._measured: dict[tuple[float, str], dict] = {}  # strength=auto's probes, this run

    # -- step 1 ------------------------------------------------------------------
    def prepare(self, out: Outputs | None = None) -> Prepared:
        ctx = self.ctx
        self.out = out
        n_layers, width = shape(ctx.lm.model)
        if self.neurons_from:
            self.sets = self._load_external(Path(self.neurons_from), n_layers, width)
            self.prepared.artifacts["neurons_from"] = str(self.neurons_from)
        else:
            st, self.stats_dir, hit = identify.load_or_compute(
                self.store, ctx.lm, ctx.bench, ctx.seed, self.search_gen,
                recompute=bool(self.recompute), progress=ctx.progress, gen_stats=None,
                compute=ctx.compute, source=self.source)
            self.prepared.artifacts["statistics"] = self.stats_dir.name
            self.prepared.metrics["neuron_stats_cached"] = hit
            self.prepared.fresh = self.prepared.fresh or not hit
            for a in identify.ASPECTS:
                self.prepared.metrics[f"search_tokens_{a}"] = int(st[f"{a}.tokens"])
            self.sets = select_sets(st, self.selection, self.k_min, self.threshold)
            self._save_sets()
            diffs = (st["high.prob"] - st["low.prob"]).flatten().numpy()
            self.prepared.metrics["diff_max"] = float(diffs.max())
            self.prepared.metrics["diff_min"] = float(diffs.min())
            if out is not None:
                self._plots(diffs, n_layers, out)
        total = n_layers * width
        for a, ns in self.sets.items():
            self.prepared.metrics[f"neurons_{a}"] = len(ns)
            self.prepared.metrics[f"neurons_{a}_frac"] = len(ns) / total
            self.prepared.metrics[f"neurons_{a}_per_layer"] = ns.per_layer(n_layers)
        if out is not None:
            export_release(Path(out.run_dir) / "neurons", ctx.bench.trait, self.sets)
        if self.auto:
            self.strength, trials = self._auto_strength(ctx.aspect)
            self.auto_chosen = self.strength
            self.prepared.metrics["strength_auto"] = {"chosen": self.strength, "trials": trials,
                                                      **self.bounds,
                                                      "n_mc": self.auto_n_mc_count()}
            self.params["strength"] = self.strength
            self.params["strength_mode"] = "auto"
        return self.prepared

    def _auto_strength(self, aspect: str) -> tuple[float, list[dict]]:
        """The largest strength of the grid whose capability stays within the bounds
        (:func:`choose_strength`: a perplexity scan, then MC accuracy at the largest
        strength that passed, bisecting below it when that fails), each probe with the
        edit active, as ratios to the plain model. If even the smallest
        strength is out of bounds it is used anyway and the trials say so. Cached per
        neuron sets, aspect, grid, bounds and probe.
        """
        from pkt.eval import capability

        ctx = self.ctx
        key = {"stage": "npti-auto-strength", "model_fingerprint": ctx.lm.fingerprint,
               "sets": self.prepared.artifacts.get("neuron_sets") or str(self.neurons_from),
               "aspect": aspect, "grid": self.grid, **self.bounds,
               "probe": capability.probe_hash(self.auto_n_mc), "keep_prob": self.keep_prob,
               "deactivate": self.deactivate, "include_prompt": self.include_prompt,
               "seed": ctx.seed, "search": SEARCH}
        return auto_strength(self, "auto_strength", key, self.grid, self.bounds, self.auto_n_mc,
                             lambda s, scope: self.induction(aspect, scope=scope,
                                                             strength=s).apply(), "NPTI")

    def _save_sets(self) -> None:
        ctx = self.ctx
        key = {"stage": "npti-neuron-sets", "statistics": self.stats_dir.name,
               "model_fingerprint": ctx.lm.fingerprint, "k_min": self.k_min,
               "diff_threshold": self.threshold}
        if self.selection != "npti":  # keys of sets made before the option stay the same
            key["selection"] = self.selection
        if self.store.load("neuron_sets", key) is None or self.recompute:
            def write(tmp: Path):
                t = {}
                for a, ns in self.sets.items():
                    t.update(ns.tensors(a))
                save_file(t, str(tmp / "sets.safetensors"))
                export_release(tmp, ctx.bench.trait, self.sets)

            n_layers, width = shape(ctx.lm.model)
            total = n_layers * width
            self.store.save("neuron_sets", key, write,
                            extra={"model": ctx.lm.name, "trait": ctx.bench.trait,
                                   "k_min_resolved": resolve_k(self.k_min, total)})
        self.prepared.artifacts["neuron_sets"] = self.store.path("neuron_sets", key).name

    def _load_external(self, path: Path, n_layers: int, width: int) -> dict[str, NeuronSet]:
        title = self.ctx.bench.trait
        if (path / "meta.json").is_file():  # a pkt neuron_sets artifact
            meta = read_meta(path, "neuron_sets")
            fp = meta["key"].get("model_fingerprint")
            if fp != self.ctx.lm.fingerprint:
                raise PktError(f"neuron artifact {path} was made for another model "
                               f"(fingerprint {fp}, this model {self.ctx.lm.fingerprint})")
            if meta.get("trait") != title:
                raise PktError(f"neuron artifact {path} is for trait {meta.get('trait')}, not {title}")
            t = load_file(str(path / "sets.safetensors"))
            return {a: NeuronSet.from_tensors(t, a) for a in identify.ASPECTS}
        if not (path / file_name(title, "high")).exists() and path.is_dir():
            raise PktError(f"{path} holds neither a pkt neuron artifact nor {file_name(title, 'high')}")
        return import_release(path, title, n_layers, width)

    def auto_n_mc_count(self) -> int:
        from pkt.eval.capability import load_mc

        return len(load_mc(self.auto_n_mc))

    def _plots(self, diffs, n_layers: int, out: Outputs) -> None:
        ctx = self.ctx
        counts = {a: ns.per_layer(n_layers) for a, ns in self.sets.items()}
        title = f"{ctx.bench.trait}: {ctx.lm.name}"
        p1 = plots.neurons_per_layer(counts, f"{title} - selected neurons per layer",
                                     Path(out.run_dir) / "neurons_per_layer.png")
        cut = {a: float(ns.diff.min()) if len(ns) else 0.0 for a, ns in self.sets.items()}
        p2 = plots.diff_distribution(diffs, cut, f"{title} - activation-probability difference",
                                     Path(out.run_dir) / "diff_distribution.png")
        if out.tracker is not None:
            out.tracker.log_image("neurons/per_layer", p1)
            out.tracker.log_image("neurons/diff_distribution", p2)

    # -- step 2 ------------------------------------------------------------------
    def induction(self, aspect: str | None = None, scope: Scope | None = None,
                  strength: float | None = None) -> Induction:
        a = aspect or self.ctx.aspect
        return Induction(self.ctx.lm.model, self.sets[a], self.sets[OTHER[a]],
                         strength=self.strength if strength is None else strength,
                         keep_prob=self.keep_prob,
                         deactivate=self.deactivate, include_prompt=self.include_prompt,
                         seed=self.ctx.seed, scope=scope)

    def intervention(self, scope: Scope | None = None):
        return self.induction(scope=scope).apply()

    def row_edit(self):
        return self.induction().row_edit()

    def capability_measured(self, n_mc: int | None) -> dict | None:
        """The capability figures (MC accuracy and perplexity, edit active) that this run's
        ``strength=auto`` measured at the strength in use, on the same ``n_mc`` items: the
        evaluation's probe is the same measurement, so it takes these instead of repeating
        it. None when a part was not probed there (or came from the cache)."""
        if not self.auto or n_mc != self.auto_n_mc or self.strength != self.auto_chosen:
            return None
        mc, ppl = self._measured.get((self.strength, "mc")), self._measured.get((self.strength, "ppl"))
        return {**mc, **ppl} if mc is not None and ppl is not None else None

    def persona_responses(self) -> list[dict]:
        """The persona-conditioned answers of identification (fine-tuning data for LoRA)."""
        if self.stats_dir is None:
            raise PktError("no identification statistics in this run (neurons_from was used)")
        return identify.read_responses(self.stats_dir)

    # -- profiles ------------------------------------------------------------------

    def edit_part(self) -> tuple:
        a = self.ctx.aspect
        return self.sets[a], self.sets[OTHER[a]], self.strength

    @classmethod
    def profile_induction(cls, parts: list[NeuronMethod], profile, scope=None) -> Induction:
        """The union of every trait's edits (:func:`pkt.neurons.induce.edit_tables`)."""
        first = parts[0]
        return Induction(first.ctx.lm.model, None, None, keep_prob=first.keep_prob,
                         deactivate=first.deactivate, include_prompt=first.include_prompt,
                         seed=first.ctx.seed, scope=scope,
                         parts=[m.edit_part() for m in parts], conflict=profile.conflict)

    @classmethod
    def profile_intervention(cls, parts: list[NeuronMethod], profile, scope=None):
        return cls.profile_induction(parts, profile, scope).apply()

    @classmethod
    def profile_row_edit(cls, parts: list[NeuronMethod], profile):
        return cls.profile_induction(parts, profile).row_edit()

    PROFILE_SCALES = (1.0, 0.85, 0.7, 0.55, 0.4)

    @classmethod
    def profile_finish(cls, parts: list[NeuronMethod], profile) -> dict:
        """strength=auto in a profile: each trait's own choice, then one common factor.

        The traits' single-trait choices each keep capability within the bounds, but their
        union need not. The composed edit is probed at factors 1.0, 0.85, ... 0.4 of the
        auto strengths (traits with a strength from the profile keep theirs) and the
        largest factor within the same bounds is used. Cached like the single choice.
        """
        auto = [m for m in parts if m.auto_chosen]
        if not auto:
            return {}
        from pkt.eval import capability

        first = parts[0]
        ctx = first.ctx
        key = {"stage": "npti-profile-auto", "model_fingerprint": ctx.lm.fingerprint,
               "parts": [[m.prepared.artifacts.get("neuron_sets"), m.ctx.aspect, m.strength,
                          m.auto_chosen] for m in parts],
               "conflict": profile.conflict, "scales": list(cls.PROFILE_SCALES),
               **first.bounds, "probe": capability.probe_hash(first.auto_n_mc),
               "keep_prob": first.keep_prob, "deactivate": first.deactivate, "seed": ctx.seed}
        base = None
        chosen0 = {id(m): m.strength for m in parts}

        def probe() -> dict:
            nonlocal base
            base = capability.base_figures(ctx.lm, ctx.cache_dir, first.auto_n_mc,
                                           ctx.gen.batch_size)
            trials, pick = [], None
            for f in cls.PROFILE_SCALES:
                for m in auto:
                    m.strength = chosen0[id(m)] * f
                scope = Scope.marked()
                with cls.profile_intervention(parts, profile, scope):
                    now = capability.measure(ctx.lm, first.auto_n_mc, ctx.gen.batch_size, scope)
                ppl_r = now["ppl"] / base["ppl"]
                mc_r = now["mc_accuracy"] / base["mc_accuracy"] if base["mc_accuracy"] else 1.0
                ok = ppl_r <= first.bounds["max_ppl_ratio"] and mc_r >= first.bounds["min_mc_ratio"]
                trials.append({"factor": f, "ppl_ratio": ppl_r, "mc_ratio": mc_r, "within": ok})
                log.info("profile strength=auto: factor %.2f -> ppl ratio %.3f, MC ratio %.3f",
                         f, ppl_r, mc_r)
                if ok:
                    pick = f
                    break
            return {"factor": pick if pick is not None else cls.PROFILE_SCALES[-1],
                    "trials": trials}

        d, hit = first.store.cached_json("profile_auto_strength", key, probe)
        for m in auto:
            m.strength = chosen0[id(m)] * d["factor"]
            m.params["strength"] = m.strength
        return {"auto_factor": d["factor"], "auto_trials": d["trials"], "auto_cached": hit}

    @classmethod
    def profile_info(cls, parts: list[NeuronMethod], profile) -> dict:
        n_layers, width = shape(parts[0].ctx.lm.model)
        _, _, info = edit_tables([m.edit_part() for m in parts], n_layers, width,
                                 parts[0].deactivate, profile.conflict)
        return {"conflict_rule": profile.conflict, **info}
