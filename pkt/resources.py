"""Where pkt's shipped files are, and where it writes (a leaf module: standard library only).

* The configs (``conf/``) and the data ship inside the package. In a source checkout the
  top-level ``conf/`` is the source of truth; the wheel maps it to ``pkt/conf`` at build
  time, so both layouts resolve here, to one :data:`CONF_DIR`.
* Outputs go under the *work directory*: the repository root in a source checkout, else
  the current directory (``PKT_HOME`` overrides both).
* Caches (dequantised models, neuron statistics, vectors, adapters, judge answers) go to
  ``PKT_CACHE`` if set, else ``<repository>/.cache`` in a source checkout, else the user's
  cache directory (``$XDG_CACHE_HOME/pkt`` or ``~/.cache/pkt``): never next to the
  installed package.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
_PACKAGED_CONF = PACKAGE_DIR / "conf"
_CHECKOUT_CONF = PACKAGE_DIR.parent / "conf"
# a source checkout: the package sits beside the project's pyproject.toml and conf/
SOURCE_CHECKOUT = (not _PACKAGED_CONF.is_dir() and _CHECKOUT_CONF.is_dir()
                   and (PACKAGE_DIR.parent / "pyproject.toml").is_file())
CONF_DIR = _CHECKOUT_CONF if SOURCE_CHECKOUT else _PACKAGED_CONF
DATA_DIR = PACKAGE_DIR / "dataset" / "data"
# the repository root in a source checkout (None when installed)
REPO_DIR = PACKAGE_DIR.parent if SOURCE_CHECKOUT else None


def work_dir() -> Path:
    """Where outputs go by default (``<work dir>/outputs``)."""
    env = os.environ.get("PKT_HOME")
    if env:
        return Path(env)
    return REPO_DIR if REPO_DIR is not None else Path.cwd()


def cache_dir() -> Path:
    """pkt's cache folder (artifacts, models, judge answers)."""
    env = os.environ.get("PKT_CACHE")
    if env:
        return Path(env)
    if REPO_DIR is not None:
        return REPO_DIR / ".cache"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "pkt"


def model_cache_dir() -> Path:
    """Dequantised model weights (``PKT_MODEL_CACHE``, else ``<cache>/models``)."""
    env = os.environ.get("PKT_MODEL_CACHE")
    return Path(env) if env else cache_dir() / "models"
