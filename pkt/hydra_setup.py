"""What the Hydra entry points share: pkt's config resolvers (registered by entry points
and tests that compose configs, never by ``import pkt``)."""

from __future__ import annotations

from omegaconf import OmegaConf

from pkt import resources


def what(profile, trait, aspect) -> str:
    """What a run induces, for its folder name: ``<trait>_<aspect>`` or the profile."""
    traits = (profile or {}).get("traits") if hasattr(profile, "get") else None
    if not traits:
        return f"{trait}_{aspect}"
    name = profile.get("name")
    if name:
        return str(name)
    try:  # a malformed profile is the validator's to report; the folder is just "profile"
        parts = [f"{t}-{spec.get('aspect') if hasattr(spec, 'get') else spec}"
                 for t, spec in traits.items()]
    except (AttributeError, TypeError):
        return "profile"
    return "".join(c if c.isalnum() or c in "+-_." else "-" for c in "+".join(parts))[:80]


RESOLVERS = {
    "pkt_root": lambda: str(resources.work_dir()),
    "pkt_cache": lambda: str(resources.cache_dir()),
    "pkt_data": lambda: str(resources.DATA_DIR),
    "pkt_what": what,
}


def register() -> None:
    for name, fn in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register()
