"""The request body of ``POST /v1/chat/completions`` as a pydantic model, and the errors.

:class:`ChatCompletionRequest` declares the OpenAI fields the server reads (and two
extensions, ``repetition_penalty`` and ``ignore_eos``, plus ``personality``); other fields
are ignored, as OpenAI-compatible servers do. A body that does not validate is answered
with an OpenAI-style error, ``{"error": {"message", "type", "param", "code"}}``:
:func:`request_error` turns pydantic's first error into that message, its parameter
(``messages[0].role``) and code (``missing_required_parameter``, ``invalid_type``,
``invalid_value``). :func:`parse_chat` then resolves the personality and the sampling
settings against the server's :class:`~pkt.serve.settings.Settings`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from pkt.serve.engine import Sampling
from pkt.serve.personas import RequestError, Spec, parse_field, parse_model
from pkt.serve.settings import Settings, bounds

ROLES = ("system", "developer", "user", "assistant")
MAX_STOPS = 4
TEXT_PART = '{"type": "text", "text": ...}'


def _integral(v):
    """5.0 is the integer 5 (JSON has one number type)."""
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


Int = Annotated[int, BeforeValidator(_integral)]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    role: Literal[ROLES] = Field(None, validate_default=True)
    content: str | list[TextPart] = Field(None, validate_default=True)

    @field_validator("content", mode="before")
    @classmethod
    def _content(cls, v):
        if v is None:
            raise PydanticCustomError("missing", "missing")
        if isinstance(v, list):
            for j, part in enumerate(v):
                if not isinstance(part, dict) or part.get("type") != "text" or \
                        not isinstance(part.get("text"), str):
                    raise PydanticCustomError(
                        "invalid_value", f"{{param}}[{j}]: only text parts {TEXT_PART} "
                        f"are supported")
        elif not isinstance(v, str):
            raise PydanticCustomError("invalid_type",
                                      "{param} must be a string or a list of text parts")
        return v

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else \
            "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    include_usage: bool | None = None


class ChatCompletionRequest(BaseModel):
    """The fields of a chat completion request this server reads (others are ignored)."""

    model_config = ConfigDict(strict=True, extra="ignore")

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    # {"traits": {...}, "method": ..., "conflict": ...} or a shorthand string
    personality: str | dict[str, Any] | None = None
    n: int | None = None
    max_completion_tokens: Int | None = Field(None, ge=1)
    max_tokens: Int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    seed: Int | None = None
    repetition_penalty: float | None = Field(None, gt=0, le=10, allow_inf_nan=False)
    stream: bool | None = None
    ignore_eos: bool | None = None
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None

    @field_validator("personality", mode="before")
    @classmethod
    def _personality(cls, v):
        if v is not None and not isinstance(v, (str, dict)):
            raise PydanticCustomError(
                "invalid_personality", "personality must be an object {\"traits\": {...}, "
                f"\"method\": ...}} or a shorthand string, got {type(v).__name__}")
        return v

    @field_validator("n", mode="before")
    @classmethod
    def _n(cls, v):
        if v is not None and (v != 1 or isinstance(v, bool)):
            raise PydanticCustomError("invalid_value",
                                      f"only n=1 is supported, got {json.dumps(v)[:40]}")
        return None if v is None else 1

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, v):
        stops = [v] if isinstance(v, str) else v
        if v is not None and (not isinstance(stops, list) or
                              not all(isinstance(s, str) for s in stops)):
            raise PydanticCustomError("invalid_type",
                                      "'stop' must be a string or an array of strings")
        if v is not None and len(stops) > MAX_STOPS:
            raise PydanticCustomError("invalid_value", f"'stop' takes at most {MAX_STOPS} "
                                                       f"strings, got {len(stops)}")
        return v

    @property
    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        return tuple(s for s in stops if s)

    @property
    def limit_param(self) -> str:
        """The field the completion length came from."""
        return "max_tokens" if self.max_tokens is not None else "max_completion_tokens"


@dataclass
class ChatRequest:
    """A validated request, its personality and sampling resolved."""

    model: str
    messages: list[dict]
    spec: Spec
    sampling: Sampling
    stream: bool = False
    include_usage: bool = False


# -- pydantic's errors as OpenAI's ------------------------------------------------------------

KINDS = {"int": "an integer", "float": "a number", "bool": "a boolean"}
OBJECTS = {"": "the request body must be a JSON object",
           "messages": "'messages' must be a non-empty array of {role, content} objects",
           "stream_options": "'stream_options' must be an object"}


def _param(loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def _field(loc):
    model, field = ChatCompletionRequest, None
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if model is not None else None
        model = {"messages": Message, "stream_options": StreamOptions}.get(part)
    return field


def request_error(e: ValidationError) -> RequestError:
    """The first error of ``e`` as an OpenAI error (message, parameter, code)."""
    err = e.errors(include_url=False)[0]
    loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and "[" in x))  # union tags
    kind, v, param = err["type"], err.get("input"), _param(loc)
    named = f"'{param}'" if len(loc) == 1 else param  # top-level keys are quoted
    shown = json.dumps(v)[:40] if _jsonable(v) else repr(v)[:40]
    if kind == "missing" or (v is None and kind.endswith("_type")):
        return RequestError(f"Missing required parameter: '{param}'.", param,
                            "missing_required_parameter")
    if kind in ("invalid_value", "invalid_type", "invalid_personality"):
        return RequestError(err["msg"].replace("{param}", param), param, kind)
    if kind in ("dict_type", "model_type", "model_attributes_type", "list_type",
                "too_short"):
        message = OBJECTS.get(param, f"{param} must be an object with role and content")
        return RequestError(message, param or None,
                            "invalid_value" if kind == "too_short" else "invalid_type")
    if kind in ("string_type", "string_too_short"):
        return RequestError(f"{param} must be a non-empty string", param, "invalid_type")
    if kind == "literal_error":
        return RequestError(f"{param} must be one of {', '.join(ROLES)}, got {shown}", param,
                            "invalid_value")
    if kind == "finite_number":
        return RequestError(f"{named} must be a finite number, got {v}", param,
                            "invalid_value")
    base = kind.split("_")[0]
    if base in KINDS:
        got = "" if base == "bool" else f", got {shown}"
        return RequestError(f"{named} must be {KINDS[base]}{got}", param, "invalid_type")
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        field = _field(loc)
        lo, hi, lo_open = bounds(field.metadata if field is not None else ())
        rng = (f"> {lo:g}" if lo_open else f">= {lo:g}") if lo is not None else ""
        rng += (" and " if rng and hi is not None else "") + (f"<= {hi:g}" if hi is not None
                                                               else "")
        return RequestError(f"{named} must be {rng}, got {v:g}", param, "invalid_value")
    return RequestError(f"{param}: {err['msg']}", param or None, "invalid_value")


def _jsonable(v) -> bool:
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False


def parse_chat(body, base: str, settings: Settings) -> ChatRequest:
    """A JSON body (already decoded) as a :class:`ChatRequest` for the model ``base``;
    :class:`RequestError` when it is not one (the model name is checked first: 404)."""
    if isinstance(body, dict) and isinstance(body.get("model"), str) and body["model"]:
        from_model = parse_model(body["model"], base, settings.method)
    try:
        req = ChatCompletionRequest.model_validate(body)
    except ValidationError as e:
        raise request_error(e) from None
    if req.personality is not None:
        if from_model.profile:
            raise RequestError("the personality is given twice (in the model name and in "
                               "'personality'); give it once", "personality",
                               "invalid_personality")
        default = from_model.method if "@" in req.model else settings.method
        spec = parse_field(req.personality, default)
    else:
        spec = from_model
    max_tokens = req.max_tokens or req.max_completion_tokens or settings.max_tokens
    if max_tokens > settings.max_tokens_limit:
        raise RequestError(f"'{req.limit_param}' must be <= {settings.max_tokens_limit} "
                           f"(this server's serve.max_tokens_limit), got {max_tokens}",
                           req.limit_param, "invalid_value")

    def given(x, default):
        return default if x is None else x

    sampling = Sampling(max_tokens=max_tokens,
                        temperature=given(req.temperature, settings.temperature),
                        top_p=given(req.top_p, 1.0), seed=req.seed, stop=req.stops,
                        repetition_penalty=given(req.repetition_penalty,
                                                 settings.repetition_penalty),
                        ignore_eos=bool(req.ignore_eos))
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text}
                for m in req.messages]
    return ChatRequest(req.model, messages, spec, sampling, bool(req.stream),
                       bool(req.stream_options and req.stream_options.include_usage))
