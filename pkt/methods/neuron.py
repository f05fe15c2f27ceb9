"""method=neuron: NPTI (identify personality neurons, then edit them while generating)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from safetensors.torch import load_file, save_file

from pkt import PktError, plots
from pkt.artifacts import ArtifactStore, read_meta
from pkt.methods import Method, RunContext
from pkt.neurons import identify
from pkt.neurons.induce import Induction
from pkt.neurons.release import export_release, file_name, import_release
from pkt.neurons.select import NeuronSet, resolve_k, select
from pkt.neurons.sites import shape

log = logging.getLogger(__name__)
OTHER = {"high": "low", "low": "high"}


class NeuronMethod(Method):
    def __init__(self, ctx: RunContext, name: str = "neuron", strength: float = 1.0,
                 k_min: float = 0.013, diff_threshold: float = 0.1, keep_prob: float = 0.9,
                 deactivate: bool = True, include_prompt: bool = False, recompute: bool = False,
                 neurons_from: str | None = None, search_gen: dict | None = None):
        super().__init__(ctx, name, strength=strength, k_min=k_min, diff_threshold=diff_threshold,
                         keep_prob=keep_prob, deactivate=deactivate,
                         include_prompt=include_prompt, neurons_from=neurons_from)
        self.strength, self.k_min, self.threshold = float(strength), k_min, float(diff_threshold)
        self.keep_prob, self.deactivate, self.include_prompt = keep_prob, deactivate, include_prompt
        self.recompute, self.neurons_from = recompute, neurons_from
        self.search_gen = ctx.gen.merged(search_gen)
        self.store = ArtifactStore(Path(ctx.cache_dir) / "artifacts")
        self.sets: dict[str, NeuronSet] = {}
        self.stats_dir: Path | None = None
        # validate before any expensive work (Induction checks the same at apply time)
        if not math.isfinite(self.strength) or self.strength < 0:
            raise PktError(f"method.strength must be a finite number >= 0, got {strength}")

    # -- step 1 ------------------------------------------------------------------
    def prepare(self) -> None:
        ctx = self.ctx
        n_layers, width = shape(ctx.lm.model)
        if self.neurons_from:
            self.sets = self._load_external(Path(self.neurons_from), n_layers, width)
            ctx.artifacts["neurons_from"] = str(self.neurons_from)
        else:
            st, self.stats_dir, hit = identify.load_or_compute(
                self.store, ctx.lm, ctx.bench, ctx.seed, self.search_gen,
                recompute=bool(self.recompute), progress=ctx.progress, gen_stats=None)
            ctx.artifacts["statistics"] = self.stats_dir.name
            ctx.metrics["neuron_stats_cached"] = hit
            for a in identify.ASPECTS:
                ctx.metrics[f"search_tokens_{a}"] = int(st[f"{a}.tokens"])
            self.sets = {a: select(st[f"{a}.prob"], st[f"{OTHER[a]}.prob"], st[f"{a}.p95"],
                                   self.k_min, self.threshold) for a in identify.ASPECTS}
            self._save_sets()
            diffs = (st["high.prob"] - st["low.prob"]).flatten().numpy()
            ctx.metrics["diff_max"] = float(diffs.max())
            ctx.metrics["diff_min"] = float(diffs.min())
            self._plots(diffs, n_layers)
        total = n_layers * width
        for a, ns in self.sets.items():
            ctx.metrics[f"neurons_{a}"] = len(ns)
            ctx.metrics[f"neurons_{a}_frac"] = len(ns) / total
            ctx.metrics[f"neurons_{a}_per_layer"] = ns.per_layer(n_layers)
        export_release(ctx.run_dir / "neurons", ctx.bench.trait, self.sets)

    def _save_sets(self) -> None:
        ctx = self.ctx
        key = {"stage": "npti-neuron-sets", "statistics": self.stats_dir.name,
               "model_fingerprint": ctx.lm.fingerprint, "k_min": self.k_min,
               "diff_threshold": self.threshold}
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
        ctx.artifacts["neuron_sets"] = self.store.path("neuron_sets", key).name

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

    def _plots(self, diffs, n_layers: int) -> None:
        ctx = self.ctx
        counts = {a: ns.per_layer(n_layers) for a, ns in self.sets.items()}
        title = f"{ctx.bench.trait}: {ctx.lm.name}"
        p1 = plots.neurons_per_layer(counts, f"{title} - selected neurons per layer",
                                     ctx.run_dir / "neurons_per_layer.png")
        cut = {a: float(ns.diff.min()) if len(ns) else 0.0 for a, ns in self.sets.items()}
        p2 = plots.diff_distribution(diffs, cut, f"{title} - activation-probability difference",
                                     ctx.run_dir / "diff_distribution.png")
        if ctx.tracker is not None:
            ctx.tracker.log_image("neurons/per_layer", p1)
            ctx.tracker.log_image("neurons/diff_distribution", p2)

    # -- step 2 ------------------------------------------------------------------
    def induction(self, aspect: str | None = None, positions: dict | None = None) -> Induction:
        a = aspect or self.ctx.aspect
        return Induction(self.ctx.lm.model, self.sets[a], self.sets[OTHER[a]],
                         strength=self.strength, keep_prob=self.keep_prob,
                         deactivate=self.deactivate, include_prompt=self.include_prompt,
                         seed=self.ctx.seed, positions=positions)

    def intervention(self, positions: dict | None = None):
        return self.induction(positions=positions).apply()

    def persona_responses(self) -> list[dict]:
        """The persona-conditioned answers of identification (fine-tuning data for LoRA)."""
        if self.stats_dir is None:
            raise PktError("no identification statistics in this run (neurons_from was used)")
        return identify.read_responses(self.stats_dir)
