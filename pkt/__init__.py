"""pkt: neuron-based personality trait induction (NPTI) and its baselines."""

from pathlib import Path

from omegaconf import OmegaConf

__version__ = "0.1.0"

PACKAGE_DIR = Path(__file__).resolve().parent
ROOT_DIR = PACKAGE_DIR.parent
CONF_DIR = ROOT_DIR / "conf"
DATA_DIR = PACKAGE_DIR / "dataset" / "data"


class PktError(Exception):
    """A user-facing error: reported as one line, never as a traceback."""


def _register_resolvers() -> None:
    if not OmegaConf.has_resolver("pkt_root"):
        OmegaConf.register_new_resolver("pkt_root", lambda: str(ROOT_DIR))
    if not OmegaConf.has_resolver("pkt_data"):
        OmegaConf.register_new_resolver("pkt_data", lambda: str(DATA_DIR))
    if not OmegaConf.has_resolver("pkt_what"):
        OmegaConf.register_new_resolver("pkt_what", _what)


def _what(profile, trait, aspect) -> str:
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


_register_resolvers()

from pkt.api import (  # noqa: E402
    NeuronSets,
    Personality,
    answer,
    identify,
    induce,
    load_model,
    personality,
    steer,
)

__all__ = ["NeuronSets", "Personality", "PktError", "answer", "identify", "induce",
           "load_model", "personality", "steer"]
