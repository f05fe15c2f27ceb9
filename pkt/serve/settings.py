"""The server's settings: the ``serve`` block of ``conf/serve.yaml`` as a pydantic model.

Types and ranges are declared on the fields; a bad value is one line, the same as the
runner's (``serve.port must be an integer 0..65535, got 99999``), raised as a
:class:`pkt.PktError` both by ``python -m pkt.serve`` (before the model loads) and by
``Settings(...)`` in Python. The choices that depend on the installed methods (``method``,
``params``, ``preload``) are checked by validators against :mod:`pkt.methods.registry`.
"""

from __future__ import annotations

import os
from typing import Any, Literal, get_args

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from pkt.errors import PktError

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
# fields that do not come from the serve block (the top-level seed, the paths group)
NOT_SERVE_KEYS = ("seed", "cache_dir", "data_path")


def _custom(message: str) -> PydanticCustomError:
    return PydanticCustomError("pkt", message)  # no context: braces are kept as they are


class Settings(BaseModel):
    """The ``serve`` block (plus the seed and where caches and data live)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    identify: bool = True
    # identification's budget: null = the runner's (the whole search split, search_gen)
    n_search: int | None = Field(None, ge=1)
    search_max_new_tokens: int | None = Field(None, ge=1)
    # per method, its parameters beyond the class defaults, e.g. {"neuron": {"strength":
    # 1.5}}: the same keys as conf/method/<name>.yaml
    params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    max_tokens: int = Field(128, ge=1)  # a request's default
    max_tokens_limit: int = Field(2048, ge=1)  # the most a request may ask for
    method: str = "neuron"
    temperature: float = Field(0.0, ge=0, le=2, allow_inf_nan=False)
    repetition_penalty: float = Field(1.15, gt=0, le=10, allow_inf_nan=False)
    preload: tuple[str, ...] = ()
    cache_size: int = Field(64, ge=1)
    # the decoding batch: rows decoded together, and requests that may wait for a row
    # (beyond that: HTTP 429 with Retry-After)
    max_batch: int = Field(16, ge=1, le=1024)
    max_waiting: int = Field(64, ge=1)
    # prompt slots whose keys and values are kept for newcomers that start the same way
    # (0: every prompt is computed whole)
    prompt_cache_tokens: int = Field(4096, ge=0)
    # seconds between identification progress lines (log, SSE comments)
    progress_interval: float = Field(2.0, gt=0, le=600, allow_inf_nan=False)
    log_level: Literal[LOG_LEVELS] = "info"
    seed: int = 0
    cache_dir: str | None = None
    data_path: str | None = None

    def __init__(self, **data):
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise PktError(setting_message(e)) from None

    @classmethod
    def serve_keys(cls) -> tuple[str, ...]:
        """The keys of the ``serve`` block."""
        return tuple(k for k in cls.model_fields if k not in NOT_SERVE_KEYS)

    @classmethod
    def from_cfg(cls, cfg) -> Settings:
        """From a composed ``conf/serve.yaml`` (the serve block, ``seed``, ``paths``)."""
        from omegaconf import OmegaConf

        node = OmegaConf.to_container(cfg.serve, resolve=True)
        return cls(**node, seed=cfg.get("seed", 0), cache_dir=str(cfg.paths.cache_dir))

    @field_validator("host")
    @classmethod
    def _host(cls, v):
        if not v:
            raise _custom(f"serve.host must be a host name or address, got {v!r}")
        return v

    @field_validator("cache_dir", "data_path", mode="before")
    @classmethod
    def _path(cls, v):
        return os.fspath(v) if isinstance(v, os.PathLike) else v

    @field_validator("preload", mode="before")
    @classmethod
    def _preload(cls, v):
        if v is None:
            return ()
        if isinstance(v, str):
            return (v,)
        if not isinstance(v, (list, tuple)):
            raise _custom(f"serve.preload must be a list of personalities, got {v!r}")
        return tuple(map(str, v))

    @field_validator("params", mode="before")
    @classmethod
    def _params(cls, v):
        v = {} if v is None else v
        if not isinstance(v, dict) or any(not isinstance(x, dict) for x in v.values()):
            raise _custom(f"serve.params must map a method to its parameters, e.g. "
                          f"{{neuron: {{strength: 1.5}}}}, got {v!r}")
        return v

    @model_validator(mode="after")
    def _methods(self):
        """The checks that need the methods (imported only once the types are right)."""
        from pkt.methods import registry
        from pkt.params import check_params
        from pkt.serve.personas import parse_shorthand, served_methods

        if self.max_tokens > self.max_tokens_limit:
            raise _custom(f"serve.max_tokens must be <= serve.max_tokens_limit "
                          f"({self.max_tokens_limit}), got {self.max_tokens}")
        methods = served_methods()
        if self.method not in methods:
            raise _custom(f"unknown serve.method '{self.method}' (choose from: "
                          f"{', '.join(methods)})")
        for name, values in self.params.items():
            if name not in methods:
                raise _custom(f"unknown method serve.params.{name} (choose from: "
                              f"{', '.join(methods)})")
            try:  # the same declarations as the runner's method.* values
                check_params(registry.method_class(name), values, "method", name,
                             ("ctx", "name"))
            except PktError as e:
                raise _custom(f"serve.params.{name}: {e}") from None
        for p in self.preload:
            try:
                parse_shorthand(p, self.method, "serve.preload")
            except PktError as e:
                raise _custom(f"serve.preload: {e}") from None
        return self


# -- pydantic's errors as the runner's one-line messages ----------------------------------------

def bounds(metadata) -> tuple[float | None, float | None, bool]:
    """(low, high, low bound open) of a field's annotated constraints."""
    lo = hi = None
    lo_open = False
    for m in metadata:
        if isinstance(m, Ge):
            lo = m.ge
        elif isinstance(m, Gt):
            lo, lo_open = m.gt, True
        elif isinstance(m, Le):
            hi = m.le
        elif isinstance(m, Lt):
            hi = m.lt
    return lo, hi, lo_open


def setting_message(e: ValidationError) -> str:
    """The first error of ``e`` as one line naming the key (``serve.port must be ...``)."""
    err = e.errors(include_url=False)[0]
    if err["type"] == "pkt":
        return err["msg"]
    key = str(err["loc"][0]) if err["loc"] else ""
    if err["type"] == "extra_forbidden":
        return f"unknown key serve.{key} (serve keys: {', '.join(Settings.serve_keys())})"
    field = Settings.model_fields.get(key)
    name = key if key in NOT_SERVE_KEYS else f"serve.{key}"
    v = err.get("input")
    if field is None:
        return f"{name}: {err['msg']}"
    ann = field.annotation
    null = " or null" if field.default is None and "None" in str(ann) else ""
    lo, hi, lo_open = bounds(field.metadata)
    if ann is bool:
        return f"{name} must be true or false, got {v!r}"
    if err["type"] == "literal_error":
        return f"unknown {name} '{v}' (choose from: {', '.join(get_args(ann))})"
    if int in (ann, *getattr(ann, "__args__", ())):
        rng = "" if lo is None else f" {lo}..{hi}" if hi is not None else f" >= {lo}"
        return f"{name} must be an integer{rng}{null}, got {v!r}"
    if ann is float:
        return (f"{name} must be a number {'>' if lo_open else '>='} {lo:g} and <= {hi:g}, "
                f"got {v!r}")
    return f"{name}: {err['msg']}, got {v!r}"
