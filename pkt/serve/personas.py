"""What personality a request asks for, and the composed Personality objects, cached.

A request names its personality in one of two ways:

- the body field ``personality``: ``{"traits": {"extraversion": {"aspect": "high",
  "strength": 1.2}}, "method": "actadd"}`` (``method`` and ``conflict`` optional), or the
  shorthand string ``"extraversion:high:1.2+neuroticism:low"`` (``@method`` may end it);
- the model name: ``<model>+extraversion:high:1.2+neuroticism:low`` with an optional
  ``@neuron | @actadd | @prompt | @prompt_p2`` at the end (``<model>@prompt`` alone is the
  plain model under the neutral prompt, like any other empty profile).

Both at once is refused (one place to look). Without either the answer is the plain model
under pkt's neutral evaluation prompt.

:class:`PersonalityCache` keeps composed :class:`pkt.Personality` objects per (profile,
method), least recently used first out. Builds run one at a time (the server's build
lock) on the model ``build_lm()`` gives (the server's copy of its model), since identifying
a trait or computing a vector puts hooks on it; lookups do not wait for a build.
ActAdd's per-trait vectors are kept in memory, so a new strength or a new combination of
traits already seen costs nothing; NPTI's statistics are pkt's cached artifacts on disk.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass

from pkt.errors import PktError
from pkt.profiles import Profile

log = logging.getLogger(__name__)


class RequestError(PktError):
    """A bad request: HTTP ``status``, the offending parameter, an OpenAI error code."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None,
                 status: int = 400, type: str = "invalid_request_error"):
        super().__init__(message)
        self.param, self.code, self.status, self.type = param, code, status, type


@dataclass(frozen=True)
class Spec:
    """A request's personality: the profile (possibly empty) and the method."""

    profile: Profile
    method: str

    @property
    def key(self) -> tuple:
        traits = tuple(sorted((e.trait, e.aspect, None if e.strength is None else
                               float(e.strength)) for e in self.profile))
        if not traits:
            return ((), "none", "")
        return (traits, self.method, self.profile.conflict)

    @property
    def label(self) -> str:
        if not self.profile:
            return "none"
        return f"{self.profile.label}@{self.method}"


def served_methods() -> list[str]:
    """The methods a request may name: those that compose profiles (registry)."""
    from pkt.methods import registry

    return registry.profile_methods()


def _method(name, param: str) -> str:
    methods = served_methods()
    if name not in methods:
        raise RequestError(f"unknown personality method '{name}' (choose from: "
                           f"{', '.join(methods)})", param, "invalid_personality")
    return name


def _profile(fn, param: str) -> Profile:
    try:
        return fn()
    except RequestError:
        raise
    except PktError as e:
        raise RequestError(str(e), param, "invalid_personality") from None


def parse_shorthand(text: str, default_method: str, param: str) -> Spec:
    """``extraversion:high:1.2+neuroticism:low[@method]``; empty text is no personality."""
    body, at, method = text.strip().partition("@")
    method = _method(method.strip(), param) if at else default_method
    if not body.strip():
        return Spec(Profile(()), method)
    return Spec(_profile(lambda: Profile.parse(body), param), method)


def parse_field(value, default_method: str) -> Spec:
    """The body field ``personality``: a dict (``traits``, ``method``, ``conflict``), a
    shorthand string, or null."""
    param = "personality"
    if value is None:
        return Spec(Profile(()), default_method)
    if isinstance(value, str):
        return parse_shorthand(value, default_method, param)
    if not isinstance(value, dict):
        raise RequestError("personality must be an object {\"traits\": {...}, \"method\": ...} "
                           f"or a shorthand string, got {type(value).__name__}", param,
                           "invalid_personality")
    node = dict(value)
    method = _method(node.pop("method"), f"{param}.method") if "method" in node \
        else default_method
    return Spec(_profile(lambda: Profile.from_config(node, where=param), param), method)


def parse_model(model, base: str, default_method: str) -> Spec:
    """The model name: ``base`` or ``base+profile[@method]`` / ``base@method``."""
    if not isinstance(model, str) or not model:
        raise RequestError("model must be a non-empty string", "model",
                           "invalid_type" if model is not None else "missing_required_parameter")
    cut = min([i for i in (model.find("+"), model.find("@")) if i >= 0], default=len(model))
    name, rest = model[:cut], model[cut:]
    if name != base:
        raise RequestError(f"The model '{name}' does not exist (this server serves '{base}'; "
                           f"a personality goes after it, e.g. '{base}+extraversion:high:1.2')",
                           "model", "model_not_found", status=404)
    return parse_shorthand(rest.lstrip("+"), default_method, "model")


def example_ids(base: str) -> list[str]:
    return [f"{base}+extraversion:high:1.2", f"{base}+extraversion:high+neuroticism:low",
            f"{base}+agreeableness:low:1.5@actadd", f"{base}+openness:high@prompt_p2"]


class NotReady(RequestError):
    """A trait the server would have to identify first, with ``serve.identify=false``."""

    def __init__(self, message: str):
        super().__init__(message, "personality", "trait_not_identified", status=409)


class PersonalityCache:
    """Composed :class:`pkt.Personality` per (profile, method); build under the build lock.

    Every personality is built by :func:`pkt.personality`, the same method classes,
    defaults and on-disk artifacts as ``python -m pkt.run``; the server's own settings
    (``n_search``, ``search_max_new_tokens``: null = the runner's) are the only difference,
    and a response says which settings it used."""

    def __init__(self, lm, identify: bool = True, n_search: int | None = None,
                 search_max_new_tokens: int | None = None, seed: int = 0, cache_dir=None,
                 data_path=None, max_size: int = 64, params: dict | None = None,
                 build_lm=None):
        # build_lm(): the model to build on (a copy beside the serving model), default lm
        self.lm, self.identify, self.n_search = lm, identify, n_search
        self.build_lm = build_lm or (lambda: lm)
        self._mu = threading.Lock()  # the dict; a build itself runs outside it
        self.params = dict(params or {})
        self.search_max_new_tokens, self.seed = search_max_new_tokens, seed
        self.cache_dir, self.data_path, self.max_size = cache_dir, data_path, max_size
        self.items: OrderedDict[tuple, object] = OrderedDict()
        # every (trait, method) this server identified or computed, in order
        self.identified: list[dict] = []

    @staticmethod
    def needs_model(spec: Spec) -> bool:
        """Whether building ``spec`` runs the model (identification, vectors, strength=auto):
        not for the plain model or a prompting method, which are built at once."""
        from pkt.methods import Method, registry

        return bool(spec.profile) and \
            registry.method_class(spec.method).intervention is not Method.intervention

    def cached(self, spec: Spec) -> bool:
        with self._mu:
            return spec.key in self.items

    def get(self, spec: Spec, progress: bool = False):
        """(Personality, traits identified by this call); ``progress``: identification's
        progress bars on stderr. A build (not in memory) must hold the caller's build lock."""
        with self._mu:
            hit = self.items.get(spec.key)
            if hit is not None:
                self.items.move_to_end(spec.key)
                return hit, []
        pers, new = self._build(spec, progress)
        pers.row_edit()  # made now, on the build's thread
        with self._mu:
            self.items[spec.key] = pers
            while len(self.items) > self.max_size:
                self.items.popitem(last=False)
        return pers, new

    def _build(self, spec: Spec, progress: bool):
        import pkt
        from pkt.methods import registry
        from pkt.neurons.identify import NotIdentified

        params = dict(self.params.get(spec.method) or {}) if spec.profile else {}
        if spec.profile and registry.accepts(spec.method, "search_gen"):
            # identification answers in this process (no fork beside the decoding thread)
            extra = {"workers": 1}
            if self.search_max_new_tokens is not None:
                extra["max_new_tokens"] = self.search_max_new_tokens
            params["search_gen"] = {**(params.get("search_gen") or {}), **extra}
        try:
            lm = self.build_lm() if self.needs_model(spec) else self.lm
            pers = pkt.personality(lm, spec.profile, spec.method, seed=self.seed,
                                   n_search=self.n_search, data_path=self.data_path,
                                   cache=self.cache_dir, progress=progress,
                                   compute=self.identify, **params)
        except NotIdentified as e:
            raise NotReady(f"{e}; this server does not identify traits on request "
                           f"(serve.identify=false): start it with serve.identify=true, or "
                           f"list the personality in serve.preload") from None
        new = pers.identified()
        if new:
            self.identified += [{"trait": t, "method": pers.method} for t in new]
            log.info("identified %s (%s) for %s", ", ".join(new), pers.method, self.lm.name)
        return pers, new
