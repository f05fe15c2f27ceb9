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
import os
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

        model_cache = os.environ.get("PKT_MODEL_CACHE", str(cache_dir() / "models"))
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


def identify(lm, trait: str, n_search: int | None = None, max_new_tokens: int = 80,
             k_min: float | None = None, diff_threshold: float = 0.1, selection: str = "npti",
             seed: int = 0, batch_size: int = 16, repetition_penalty: float = 1.1,
             data_path: str | Path | None = None, cache: str | Path | None = None,
             progress: bool = True, compute: bool = True,
             workers: int | str = "auto") -> NeuronSets:
    """NPTI step 1 for ``trait``: persona answers, statistics (cached), both aspects' sets.

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
    gen = GenConfig(max_new_tokens, batch_size, repetition_penalty, workers=workers)
    st, path, hit = ident.load_or_compute(store, lm, bench, seed, gen, progress=progress,
                                          compute=compute)
    if k_min is None:
        k_min = getattr(lm, "npti_k_min", None) or 0.013
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


def steer(lm, trait: str, aspect: str = "high", layers=(15,), coefficient: float = 4.0,
          n_search: int | None = 48, position: str = "mean", seed: int = 0,
          data_path: str | Path | None = None,
          batch_size: int = 16) -> contextlib.AbstractContextManager:
    """ActAdd as a context manager: ``coefficient`` × the high − low persona vector (negated
    for ``aspect='low'``) added to the output of the decoder blocks ``layers``."""
    from pkt.dataset import load_bench
    from pkt.methods.actadd import steer as _steer
    from pkt.methods.actadd import steering_vectors

    if aspect not in ASPECTS:
        raise PktError(f"unknown aspect '{aspect}' (choose from: high, low)")
    bench = load_bench(str(data_path or DATA_DIR), trait, n_search=n_search, n_test=None,
                       seed=seed)
    vecs = steering_vectors(lm, bench, seed, list(layers), position, batch_size, progress=False)
    sign = 1.0 if aspect == "high" else -1.0
    return _steer(lm.model, {i: sign * coefficient * v for i, v in vecs.items()})


def answer(lm, questions: list[str], max_new_tokens: int = 96, repetition_penalty: float = 1.15,
           batch_size: int = 16) -> list[str]:
    """Greedy answers to ``questions`` under the neutral evaluation prompt (as pkt.run)."""
    from pkt.generation import GenConfig, chat_prompt, generate

    texts = [chat_prompt(lm.tokenizer, prompts.neutral(q)) for q in questions]
    gens = generate(lm.model, lm.tokenizer, texts,
                    GenConfig(max_new_tokens, batch_size, repetition_penalty), progress=False)
    return [g.text for g in gens]


PROFILE_METHODS = ("neuron", "actadd", "prompt", "prompt_p2")


class Personality:
    """A profile made usable on one model by one method (:func:`personality`).

    ``rewrite(question)`` is the user turn the method asks (the neutral evaluation prompt,
    or with prompting the persona prompt); ``apply()`` is a context manager holding the
    method's hooks (none for prompting). One object can be applied many times.
    """

    def __init__(self, lm, profile, method: str, parts: list, info: dict):
        self.lm, self.profile, self.method, self.parts, self.info = lm, profile, method, parts, info

    def rewrite(self, question: str, i: int = 0) -> str:
        from pkt.profiles import adjective, adjective_phrase

        if not self.profile or self.method in ("neuron", "actadd"):
            return prompts.neutral(question)
        if self.method == "prompt":
            words = [adjective(trait.adjectives[e.aspect], e.strength) for trait, e in self.parts]
            return prompts.simple(adjective_phrase(words), question)
        return prompts.p2(" ".join(persona for persona, _ in self.parts), question)

    def apply(self) -> contextlib.AbstractContextManager:
        if not self.profile or self.method in ("prompt", "prompt_p2"):
            return contextlib.nullcontext()
        if self.method == "neuron":
            from pkt.neurons.induce import Induction

            return Induction(self.lm.model, None, None, keep_prob=self.info["keep_prob"],
                             deactivate=True, seed=self.info["seed"], parts=self.parts,
                             conflict=self.profile.conflict).apply()
        from pkt.methods.actadd import steer as _steer

        return _steer(self.lm.model, self.parts)


def personality(lm, profile, method: str = "neuron", compute: bool = True,
                n_search: int | None = None, max_new_tokens: int = 80, seed: int = 0,
                keep_prob: float = 0.9, layers=None, coefficient: float = 4.0,
                data_path: str | Path | None = None, cache: str | Path | None = None,
                progress: bool = False) -> Personality:
    """A profile (``"extraversion:high:1.2+neuroticism:low"``, a dict, or a
    :class:`pkt.profiles.Profile`) composed for ``method`` with the same rules as
    ``python -m pkt.run profile=...``. NPTI's strength defaults to 1.0 per trait, ActAdd's
    multiplier of ``coefficient`` to 1.0; ActAdd's ``layers`` default to the middle
    decoder block. With ``compute=False`` NPTI uses cached
    identification only (:class:`pkt.neurons.identify.NotIdentified` otherwise).
    """
    from pkt.profiles import Profile

    if method not in PROFILE_METHODS:
        raise PktError(f"unknown personality method '{method}' (choose from: "
                       f"{', '.join(PROFILE_METHODS)})")
    if isinstance(profile, str):
        profile = Profile.parse(profile)
    elif isinstance(profile, dict):
        profile = Profile.from_config(profile)
    info = {"method": method, "seed": seed, "keep_prob": keep_prob, "identified": {}}
    parts: list = []
    if method == "neuron":
        for e in profile:
            sets = identify(lm, e.trait, n_search=n_search, max_new_tokens=max_new_tokens,
                            seed=seed, data_path=data_path, cache=cache, progress=progress,
                            compute=compute)
            info["identified"][e.trait] = not sets.info.get("cached", True)
            parts.append((sets[e.aspect], sets[OTHER[e.aspect]],
                          1.0 if e.strength is None else e.strength))
    elif method == "actadd":
        from pkt.dataset import load_bench
        from pkt.methods.actadd import steering_vectors
        from pkt.neurons.sites import decoder_layers

        if layers is None:
            layers = (len(decoder_layers(lm.model)) // 2,)
        adds: dict = {}
        for e in profile:
            bench = load_bench(str(data_path or DATA_DIR), e.trait, n_search=n_search or 48,
                               n_test=None, seed=seed)
            vecs = steering_vectors(lm, bench, seed, list(layers), progress=progress)
            s = (1.0 if e.aspect == "high" else -1.0) * coefficient * (
                1.0 if e.strength is None else e.strength)
            for i, v in vecs.items():
                adds[i] = adds[i] + s * v if i in adds else s * v
        parts = adds
    elif method == "prompt":
        from pkt.traits import Trait

        parts = [(Trait.load(e.trait), e) for e in profile]
    else:
        from pkt.dataset import load_bench

        for e in profile:
            bench = load_bench(str(data_path or DATA_DIR), e.trait, n_search=None, n_test=None,
                               seed=seed)
            parts.append((bench.persona_for(e.aspect, 0, seed + 7919), e))
    return Personality(lm, profile, method, parts, info)
