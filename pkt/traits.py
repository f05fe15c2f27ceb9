"""A Big Five trait as methods and evaluators see it: name, title, facets, adjectives."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import OmegaConf

from pkt.errors import PktError
from pkt.profiles import TRAIT_NAMES, trait_name
from pkt.resources import CONF_DIR


@dataclass(frozen=True)
class Trait:
    name: str  # lower case, e.g. "extraversion"
    title: str  # the release's capitalised name, e.g. "Extraversion"
    facets: tuple[str, ...]
    adjectives: dict  # {"high": "extraverted", "low": "introverted"}

    @classmethod
    def from_cfg(cls, node) -> Trait:
        d = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
        try:
            return cls(str(d["name"]), str(d["title"]), tuple(d.get("facets") or ()),
                       dict(d["adjectives"]))
        except KeyError as e:
            raise PktError(f"trait config {d.get('name', '?')} lacks the key {e.args[0]}") from None

    @classmethod
    def load(cls, name: str) -> Trait:
        """The trait config ``conf/trait/<name>.yaml``."""
        return cls.from_cfg(OmegaConf.load(CONF_DIR / "trait" / f"{trait_name(name)}.yaml"))


def all_traits() -> dict[str, Trait]:
    return {n: Trait.load(n) for n in TRAIT_NAMES}
