"""pkt: neuron-based personality trait induction (NPTI) and its baselines.

``import pkt`` is cheap: it loads neither torch, Hydra nor OmegaConf. The API's names are
re-exported lazily (:mod:`pkt.api`), and load what they need when first used.
"""

from pkt.errors import PktError
from pkt.resources import CONF_DIR, DATA_DIR, PACKAGE_DIR

__version__ = "0.1.0"

_API = ("NeuronSets", "Personality", "answer", "identify", "induce", "load_model",
        "personality", "steer", "methods")

__all__ = ["PktError", "CONF_DIR", "DATA_DIR", "PACKAGE_DIR", *_API]


def __getattr__(name: str):
    if name in _API:
        from pkt import api

        return getattr(api, name)
    raise AttributeError(f"module 'pkt' has no attribute {name!r}")
