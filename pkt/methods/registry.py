"""Methods by name: the one place that maps a method's name to its class, and the one
function that builds a personality (a method prepared for one trait, or a profile of
several) for every front door.

    from pkt.methods import registry
    m = registry.compose(lm, Profile.parse("extraversion:high"), "neuron", bench_for)
    m.prepare()
    with m.intervention():
        ...

The runner gives ``params`` from its Hydra config (``conf/method/<name>.yaml``), the API
from keyword arguments and the server from the request; every default is the class's own
(``tests/test_doors.py`` checks that the shipped configs say the same).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from pkt.errors import PktError
from pkt.methods import Method, ProfileMethod, Setting
from pkt.params import check_params

# name -> (module, class, preset parameters)
METHODS: dict[str, tuple[str, str, dict]] = {
    "base": ("pkt.methods.base", "BaseMethod", {}),
    "prompt": ("pkt.methods.prompt", "PromptMethod", {}),
    "prompt_p2": ("pkt.methods.prompt", "PromptMethod", {"variant": "p2"}),
    "neuron": ("pkt.methods.neuron", "NeuronMethod", {}),
    "actadd": ("pkt.methods.actadd", "ActAddMethod", {}),
    "dpn": ("pkt.methods.dpn", "DpnMethod", {}),
    "lora": ("pkt.methods.lora", "LoraMethod", {}),
}


def lookup(name: str) -> tuple[type[Method], dict]:
    """The class registered as ``name`` and its preset parameters."""
    try:
        module, cls, preset = METHODS[name]
    except (KeyError, TypeError):
        raise PktError(f"unknown method '{name}' (choose from: {', '.join(METHODS)})") from None
    return getattr(importlib.import_module(module), cls), dict(preset)


def method_class(name: str) -> type[Method]:
    return lookup(name)[0]


def accepts(name: str, param: str) -> bool:
    """Whether method ``name`` takes the parameter ``param`` (e.g. ``search_gen``)."""
    import inspect

    return param in inspect.signature(method_class(name)).parameters


def profile_methods() -> list[str]:
    """The methods that express a profile of several traits."""
    classes = {n: method_class(n) for n in METHODS}
    return [n for n, c in classes.items() if c.profile_support is True and c.expresses_traits]


def compose(lm, profile, method: str, bench_for: Callable[[str], object], *,
            trait_for: Callable[[str], object] | None = None, seed: int = 0, gen=None,
            cache_dir: str | Path | None = None, progress: bool = False, compute: bool = True,
            params: dict | None = None, as_profile: bool | None = None,
            gen_stats=None) -> Method:
    """The personality ``profile`` (a :class:`pkt.profiles.Profile`) under ``method``,
    built but not prepared: one method object per trait, composed by
    :class:`ProfileMethod` when ``as_profile`` (default: for more than one trait). An
    empty profile is the plain model under the neutral prompt (method ``base``).

    ``bench_for(trait)`` gives a trait's data; ``trait_for(trait)`` its
    :class:`pkt.traits.Trait` (default: the shipped trait config); ``params`` the method's
    parameters beyond its defaults.
    """
    from pkt.generation import GenConfig, GenStats
    from pkt.resources import cache_dir as default_cache

    if not profile.traits:
        method, params = "base", {}
    cls, preset = lookup(method)
    clash = sorted(k for k in set(preset) & set(params or {}) if params[k] != preset[k])
    if clash:
        raise PktError(f"method {method} fixes {clash[0]}={preset[clash[0]]}")
    kwargs = {**preset, **(params or {})}
    # the class's declared types and ranges, as the runner's pre-flight checks them
    check_params(cls, kwargs, "method", method, runtime=("ctx",))
    if trait_for is None:
        from pkt.traits import Trait

        trait_for = Trait.load
    stats = gen_stats if gen_stats is not None else GenStats()
    where = Path(cache_dir) if cache_dir is not None else default_cache()

    def setting(trait, aspect, bench) -> Setting:
        return Setting(lm=lm, bench=bench, trait=trait, aspect=aspect, seed=int(seed),
                       gen=gen or GenConfig(), cache_dir=where, progress=progress,
                       compute=compute, gen_stats=stats)

    if not profile.traits:
        return cls(setting(None, None, None), **kwargs)
    if as_profile is None:
        as_profile = len(profile.traits) > 1
    if as_profile and cls.profile_support is not True:
        raise PktError(str(cls.profile_support))
    parts = []
    for e in profile:
        m = cls(setting(trait_for(e.trait), e.aspect, bench_for(e.trait)), **kwargs)
        m.use_profile_strength(e.strength)
        parts.append(m)
    if not as_profile:
        return parts[0]
    return ProfileMethod(setting(None, None, parts[0].ctx.bench), parts, profile)
