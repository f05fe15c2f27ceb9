"""The public Python API: load a model, identify trait neurons, induce a trait, steer.

    import pkt
    lm = pkt.load_model("smollm2_135m")
    sets = pkt.identify(lm, "extraversion", n_search=16, max_new_tokens=48)
    with pkt.induce(lm, sets, aspect="high", strength=1.0):
        print(pkt.answer(lm, ["What do you do on a free evening?"])[0])

Everything here is what ``python -m pkt.run`` uses underneath (the same identification,
cache, selection rules and hooks); nothing needs Hydra.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pkt import prompts, resources
from pkt.artifacts import ArtifactStore, write_json_atomic
from pkt.errors import PktError
from pkt.resources import CONF_DIR, DATA_DIR

if TYPE_CHECKING:  # torch is imported only when the API is used, not by `import pkt`
    from pkt.neurons.select import NeuronSet

ASPECTS = ("high", "low")
OTHER = {"high": "low", "low": "high"}
RELEASE_META = "pkt_neuron_sets.json"


def cache_dir() -> Path:
    return resources.cache_dir()


def load_model(name: str = "smollm2_135m", **overrides):
    """A model by pkt config name (``conf/model/<name>.yaml``), HF id or local folder.

    Returns a :class:`pkt.models.LoadedModel` (``.model``, ``.tokenizer``, ``.fingerprint``).
    """
    from omegaconf import OmegaConf

    from pkt.models import HFModel

    cfg_file = CONF_DIR / "model" / f"{name}.yaml"
    if cfg_file.is_file():
        from hydra.utils import instantiate

        model_cache = str(resources.model_cache_dir())
        root = OmegaConf.create({"paths": {"model_cache": model_cache,
                                           "cache_dir": str(cache_dir())},
                                 "model": OmegaConf.load(cfg_file)})
        node = OmegaConf.merge(root.model, overrides)
        root.model = node
        return instantiate(root.model).load()
    if "/" in name or Path(name).exists():
        return HFModel(name=Path(name).name, path=name, **overrides).load()
    known = ", ".join(sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml")))
    raise PktError(f"unknown model '{name}' (a pkt model config: {known}; or an HF id / path)")


@dataclass
class NeuronSets:
    """Both aspects' neuron sets of one trait, for one model (the release's file format)."""

    trait: str  # capitalised, e.g. "Extraversion"
    sets: dict[str, NeuronSet]
    model_fingerprint: str | None = None
    info: dict = field(default_factory=dict)

    def __getitem__(self, aspect: str) -> NeuronSet:
        return self.sets[aspect]

    def save(self, path: str | Path) -> Path:
        """``<Trait>_dict.json`` + ``<Trait>_reversed_dict.json`` (release format) + metadata."""
        from pkt.neurons.release import export_release

        path = Path(path)
        export_release(path, self.trait, self.sets)
        write_json_atomic(path / RELEASE_META, {"trait": self.trait,
                                                "model_fingerprint": self.model_fingerprint,
                                                **self.info})
        return path

    @classmethod
    def load(cls, path: str | Path, trait: str | None = None, lm=None) -> NeuronSets:
        """Sets saved by :meth:`save` or a release folder (then ``trait`` is needed).

        With ``lm`` the sets are range-checked against the model, and sets saved for another
        model (by fingerprint) are refused.
        """
        from pkt.dataset import trait_title
        from pkt.neurons.release import import_release
        from pkt.neurons.sites import shape

        path = Path(path)
        meta = {}
        if (path / RELEASE_META).is_file():
            meta = json.loads((path / RELEASE_META).read_text())
        title = trait_title(trait or meta.get("trait") or "")
        fp = meta.get("model_fingerprint")
        if lm is not None and fp and fp != lm.fingerprint:
            raise PktError(f"neuron sets in {path} were made for another model (fingerprint "
                           f"{fp}, this model {lm.fingerprint})")
        dims = shape(lm.model) if lm is not None else (None, None)
        sets = import_release(path, title, *dims)
        return cls(title, sets, fp, {k: v for k, v in meta.items()
                                     if k not in ("trait", "model_fingerprint")})


def identify(lm, trait: str, n_search: int | None = None, max_new_tokens: int | None = None,
             k_min: float | None = None, diff_threshold: float = 0.1, selection: str = "npti",
             seed: int = 0, batch_size: int | None = None,
             repetition_penalty: float | None = None, data_path: str | Path | None = None,
             cache: str | Path | None = None, progress: bool = True, compute: bool = True,
             workers: int | str | None = None, dtype: str | None = None) -> NeuronSets:
    """NPTI step 1 for ``trait``: persona answers, statistics (cached), both aspects' sets.

    Generation settings left at None are the runner's (``pkt.generation.SEARCH_GEN``, the
    ``search_gen`` block of the config), so the statistics are the same cached artifact.
    ``workers``: processes answering the two aspects side by side (``auto``: two on a
    multi-core CPU, forked from this one; 1: in this process).

    ``k_min`` defaults to the model's own budget (its config's ``npti_k_min``), else 0.013.
    ``compute=False`` uses the cache only and raises
    :class:`pkt.neurons.identify.NotIdentified` when the statistics are not there yet.
    """
    from pkt.dataset import load_bench
    from pkt.generation import GenConfig
    from pkt.neurons import identify as ident
    from pkt.neurons.select import select_sets

    bench = load_bench(str(data_path or DATA_DIR), trait, n_search=n_search, n_test=None,
                       seed=seed)
    store = ArtifactStore(Path(cache or cache_dir()) / "artifacts")
    gen = GenConfig.search(lm, {"max_new_tokens": max_new_tokens, "batch_size": batch_size,
                                "repetition_penalty": repetition_penalty, "workers": workers,
                                "dtype": dtype})
    st, path, hit = ident.load_or_compute(store, lm, bench, seed, gen, progress=progress,
                                          compute=compute)
    if k_min is None:
        from pkt.methods.neuron import DEFAULT_K_MIN

        k_min = getattr(lm, "npti_k_min", None) or DEFAULT_K_MIN
    sets = select_sets(st, selection, k_min, diff_threshold)
    return NeuronSets(bench.trait, sets, lm.fingerprint,
                      {"statistics": path.name, "selection": selection, "k_min": k_min,
                       "diff_threshold": diff_threshold, "cached": hit})


def induce(lm, sets: NeuronSets, aspect: str = "high", strength: float = 1.0,
           keep_prob: float = 0.9, deactivate: bool = True, include_prompt: bool = False,
           seed: int = 0) -> contextlib.AbstractContextManager:
    """NPTI step 2 as a context manager: the model expresses ``aspect`` while it is open."""
    from pkt.neurons.induce import Induction

    if aspect not in ASPECTS:
        raise PktError(f"unknown aspect '{aspect}' (choose from: high, low)")
    if sets.model_fingerprint and sets.model_fingerprint != lm.fingerprint:
        raise PktError("these neuron sets were made for another model "
                       f"(fingerprint {sets.model_fingerprint}, this model {lm.fingerprint})")
    ind = Induction(lm.model, sets[aspect], sets[OTHER[aspect]], strength=strength,
                    keep_prob=keep_prob, deactivate=deactivate, include_prompt=include_prompt,
                    seed=seed)
    return ind.apply()


def steer(lm, trait: str, aspect: str = "high", *, seed: int = 0, n_search: int | None = None,
          data_path: str | Path | None = None, cache: str | Path | None = None,
          progress: bool = False, **params) -> contextlib.AbstractContextManager:
    """ActAdd as a context manager: ``coefficient`` × the high − low persona vector (negated
    for ``aspect='low'``) added to the output of the decoder blocks ``layers`` (the method's
    defaults, as ``python -m pkt.run method=actadd``; the vector is cached on disk)."""
    return personality(lm, f"{trait}:{aspect}", "actadd", seed=seed, n_search=n_search,
                       data_path=data_path, cache=cache, progress=progress, **params).apply()


def answer(lm, questions: list[str], max_new_tokens: int = 96, repetition_penalty: float = 1.15,
           batch_size: int = 16) -> list[str]:
    """Greedy answers to ``questions`` under the neutral evaluation prompt (as pkt.run)."""
    from pkt.generation import GenConfig, chat_prompt, generate

    texts = [chat_prompt(lm.tokenizer, prompts.neutral(q)) for q in questions]
    gens = generate(lm.model, lm.tokenizer, texts,
                    GenConfig(max_new_tokens, batch_size, repetition_penalty), progress=False)
    return [g.text for g in gens]


class Personality:
    """A personality made usable on one model by one method (:func:`personality`): a
    prepared method object from :mod:`pkt.methods.registry`, the same one the runner and
    the server build.

    ``rewrite(question, i)`` is the user turn the method asks (the neutral evaluation
    prompt, or with prompting the persona prompt); ``apply(scope)`` is a context manager
    holding the method's hooks or adapter (none for prompting); ``answer(questions)``
    answers with both. One object can be applied many times.
    """

    def __init__(self, method, profile, name: str):
        self.method_obj, self.profile, self.method = method, profile, name

    @property
    def lm(self):
        return self.method_obj.ctx.lm

    @property
    def info(self) -> dict:
        """The method's settings (every parameter, defaults included), its figures and the
        artifacts it used."""
        return {"method": self.method, "settings": self.method_obj.describe(),
                "figures": self.method_obj.prepared.metrics,
                "artifacts": self.method_obj.prepared.artifacts}

    def identified(self) -> list[str]:
        """The traits whose statistics, vectors or adapters this personality computed (not
        found in the cache)."""
        return self.method_obj.fresh_traits()

    def rewrite(self, question: str, i: int = 0) -> str:
        return self.method_obj.rewrite(question, i)

    def apply(self, scope=None) -> contextlib.AbstractContextManager:
        return self.method_obj.intervention(scope)

    def row_edit(self):
        """The edit as one row of a shared decoding batch (:class:`pkt.rows.RowEdit`, None
        for the plain model or prompting), made once per personality."""
        if not hasattr(self, "_row_edit"):
            self._row_edit = self.method_obj.row_edit()
        return self._row_edit

    def answer(self, questions: list[str], max_new_tokens: int | None = None,
               batch_size: int | None = None, repetition_penalty: float | None = None) -> list[str]:
        """Greedy answers under this personality, with the runner's generation defaults."""
        from pkt.generation import GenConfig

        gen = self.method_obj.ctx.gen
        gen = GenConfig(max_new_tokens or gen.max_new_tokens, batch_size or gen.batch_size,
                        repetition_penalty or gen.repetition_penalty)
        return [g.text for g in self.method_obj.respond(questions, gen)]


def personality(lm, profile, method: str = "neuron", *, seed: int = 0,
                n_search: int | None = None, data_path: str | Path | None = None,
                cache: str | Path | None = None, progress: bool = False,
                compute: bool = True, gen=None, **params) -> Personality:
    """A personality: a profile (``"extraversion:high:1.2+neuroticism:low"``, a dict, or a
    :class:`pkt.profiles.Profile`) under ``method`` (a name in
    :mod:`pkt.methods.registry`), built and prepared exactly as ``python -m pkt.run``
    builds it: the same class, the same defaults (NPTI's ``strength`` is the model's own or
    ``auto``, identification uses the whole search split, ActAdd the middle block), the same
    artifacts in the same cache. ``params`` are the method's own parameters (e.g.
    ``strength=1.2``, ``k_min=300``, ``layers=[12]``, ``coefficient=6``,
    ``search_gen={"max_new_tokens": 48}``). ``n_search`` limits the search questions per
    aspect (a cheaper identification; the default is all). ``compute=False`` uses cached
    artifacts only (:class:`pkt.neurons.identify.NotIdentified` otherwise).
    """
    from pkt.dataset import load_bench
    from pkt.generation import GenConfig
    from pkt.methods import registry
    from pkt.profiles import Profile

    if isinstance(profile, str):
        profile = Profile.parse(profile)
    elif isinstance(profile, dict):
        profile = Profile.from_config(profile)
    elif profile is None:
        profile = Profile(())
    benches: dict = {}

    def bench_for(trait: str):
        if trait not in benches:
            benches[trait] = load_bench(str(data_path or DATA_DIR), trait, n_search=n_search,
                                        n_test=None, seed=seed)
        return benches[trait]

    m = registry.compose(lm, profile, method, bench_for, seed=seed, gen=gen or GenConfig(),
                         cache_dir=Path(cache or cache_dir()), progress=progress,
                         compute=compute, params=params)
    m.prepare()
    return Personality(m, profile, method if profile.traits else "base")
