"""LLM-as-judge ratings (1-5) of responses: trait expression and fluency.

Two backends share one interface, ``rate(items, rubric, trait, facets) -> list[dict]``:

* :class:`OpenAIJudge` talks to any OpenAI-compatible chat-completions endpoint (OpenAI,
  vLLM, llama.cpp, Ollama) with the standard library only: bounded concurrency, retries
  with exponential backoff on timeouts, connection errors, 429 and 5xx, and an on-disk cache
  of judge outputs so that a re-run makes no request. The API key is read from an
  environment variable at request time and is never stored anywhere.
* :class:`LocalJudge` scores with any Hugging Face causal LM in one forward pass: the rubric
  is followed by the forced answer prefix ``Rating: [[`` and the rating is the expectation of
  the digit 1-5 under the model's next-token distribution restricted to those five digits.

Each result is ``{"rating": float | None, "raw": str | None, "error": str | None,
"cached": bool}``; a missing or unparsable rating is ``None``, never a number.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import inspect
import json
import logging
import math
import os
import random
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm.auto import tqdm

import pkt
from pkt import PktError
from pkt.artifacts import write_json_atomic

log = logging.getLogger(__name__)

RUBRICS = ("trait", "fluency")
# bump when a rubric's wording changes: it is part of every cache key
RUBRIC_VERSION = 1
RATING_MIN, RATING_MAX = 1, 5
RETRY_AFTER_CAP_S = 30.0
BACKOFF_CAP_S = 60.0

_TRAIT_RUBRIC = """\
You are an impartial judge of personality in writing. Below is a question and a response \
to it. Decide how strongly the response expresses the Big Five personality trait \
{trait_title}.

{facet_line}
Score the personality that comes through in the response (its attitudes, preferences, \
feelings and way of engaging), not whether the response is helpful, correct, polite or \
well written, and do not let its length sway you.

1 = {trait_title} is absent: the response shows the opposite of the trait
2 = weak: the response leans away from the trait or shows it only faintly
3 = mixed or neutral: the trait is neither clearly present nor clearly absent
4 = clear: the response shows the trait in several places
5 = very strong: the trait runs through the whole response

First write a short explanation of no more than 30 words. Then, on a final line of its \
own, give your score in exactly this format: Rating: [[r]], where r is a whole number \
from 1 to 5.

### Question
{question}

### Response
{response}
"""

_FLUENCY_RUBRIC = """\
You are an impartial judge of writing. Below is a question and a response to it. Decide \
how fluently the response conveys the speaker's thoughts and feelings: whether it reads \
smoothly and naturally, hangs together from start to finish, and puts its ideas and \
emotions across clearly.

Casual or informal wording is fine and must not lower the score, and the length of the \
response must not affect it either way.

1 = hard to follow: broken, repetitive or incoherent
2 = awkward: frequent stumbles or disjointed ideas
3 = understandable but uneven or stilted in places
4 = smooth and natural, with small lapses at most
5 = effortless and natural throughout; thoughts and feelings come across clearly

First write a short explanation of no more than 30 words. Then, on a final line of its \
own, give your score in exactly this format: Rating: [[r]], where r is a whole number \
from 1 to 5.

### Question
{question}

### Response
{response}
"""


def _check_rubric(rubric: str) -> None:
    if rubric not in RUBRICS:
        raise PktError(f"unknown judge rubric '{rubric}' (choose from: {', '.join(RUBRICS)})")


def build_rubric(rubric: str, question: str, response: str, trait: str | None = None,
                 facets: list[str] | None = None) -> str:
    """The judge's user message for one (question, response) pair."""
    _check_rubric(rubric)
    question, response = str(question).strip(), str(response).strip()
    if rubric == "fluency":
        return _FLUENCY_RUBRIC.format(question=question, response=response)
    if not trait or not str(trait).strip():
        raise PktError("the 'trait' judge rubric needs a trait name")
    name = str(trait).strip()
    title = name[:1].upper() + name[1:]
    facets = [str(f).strip() for f in (facets or []) if str(f).strip()]
    if facets:
        facet_line = (f"{title} has six facets in the Big Five model: {', '.join(facets)}. "
                      f"A response can show the trait through any of them.\n")
    else:
        facet_line = ""
    return _TRAIT_RUBRIC.format(trait_title=title, facet_line=facet_line, question=question,
                                response=response)


# ---------------------------------------------------------------------------------------
# rating parser

_NUM = r"(\d+(?:\.\d+)?)(?![.,]?\d)"
_RATING_RE = re.compile(
    # [[r]], optionally preceded by "Rating:" (one marker), or "Rating: r" / "**Rating:** r"
    rf"(?:rating\s*\**\s*[:=]?\s*\**\s*)?\[\[\s*{_NUM}\s*\]\]"
    rf"|rating\s*\**\s*[:=]\s*\**\s*{_NUM}",
    re.IGNORECASE,
)


def parse_rating(text) -> float | None:
    """The value of the last rating marker in ``text`` if it lies in 1..5, else None.

    Accepts ``Rating: [[4]]``, ``[[4]]``, ``Rating: 4``, ``[[4.5]]``, ``Rating: [[ 3 ]]`` in any
    case. A value out of range is None (never clipped), and so is text without a marker.
    """
    if not isinstance(text, str):
        return None
    last = None
    for m in _RATING_RE.finditer(text):
        last = m
    if last is None:
        return None
    value = float(last.group(1) if last.group(1) is not None else last.group(2))
    if not math.isfinite(value) or not RATING_MIN <= value <= RATING_MAX:
        return None
    return value


def _result(rating=None, raw=None, error=None, cached=False) -> dict:
    return {"rating": rating, "raw": raw, "error": error, "cached": cached}


def _check_items(items) -> list[tuple[str, str]]:
    out = []
    for i, it in enumerate(items):
        if not isinstance(it, dict) or "question" not in it or "response" not in it:
            raise PktError(f"judge item {i} needs 'question' and 'response' keys")
        out.append((str(it["question"]), str(it["response"] if it["response"] is not None else "")))
    return out


# ---------------------------------------------------------------------------------------
# OpenAI-compatible HTTP judge

_LOOPBACK = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}


class _Failure(Exception):
    """One attempt failed: ``kind`` is connection | timeout | http | protocol | malformed."""

    def __init__(self, kind: str, reason: str, retry: bool, status: int | None = None,
                 retry_after: float | None = None):
        super().__init__(reason)
        self.kind, self.reason, self.retry = kind, reason, retry
        self.status, self.retry_after = status, retry_after


def _retry_after(headers) -> float | None:
    if headers is None:
        return None
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(str(value).strip())
    except ValueError:
        return None  # an HTTP date: fall back to exponential backoff
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, RETRY_AFTER_CAP_S)


def _os_reason(err: BaseException) -> tuple[str, str]:
    if isinstance(err, (TimeoutError, socket.timeout)):
        return "timeout", "timed out"
    if isinstance(err, ConnectionRefusedError):
        return "connection", "connection refused"
    if isinstance(err, socket.gaierror):
        return "connection", "host not found"
    if isinstance(err, http.client.RemoteDisconnected):
        return "connection", "server closed the connection"
    if isinstance(err, ConnectionResetError):
        return "connection", "connection reset"
    if isinstance(err, OSError) and err.strerror:
        return "connection", err.strerror.lower()
    return "connection", type(err).__name__


class OpenAIJudge:
    """A judge behind an OpenAI-compatible ``POST {base_url}/chat/completions`` endpoint."""

    backend = "openai"

    def __init__(self, model: str, base_url: str, api_key_env: str = "OPENAI_API_KEY",
                 temperature: float = 0.0, max_tokens: int = 128, timeout: float = 30.0,
                 max_retries: int = 4, backoff: float = 1.0, concurrency: int = 4,
                 cache_dir: str | None = None, preflight: bool = True):
        if not model or not str(model).strip():
            raise PktError("judge.model must name the judge model")
        if not base_url or not str(base_url).strip():
            raise PktError("judge.base_url must be set (e.g. https://api.openai.com/v1)")
        parsed = urllib.parse.urlparse(str(base_url).strip())
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise PktError(f"judge.base_url must be an http(s) URL, got '{base_url}'")
        if int(concurrency) < 1:
            raise PktError(f"judge.concurrency must be at least 1, got {concurrency}")
        if int(max_retries) < 0:
            raise PktError(f"judge.max_retries must be 0 or more, got {max_retries}")
        if float(timeout) <= 0:
            raise PktError(f"judge.timeout must be positive, got {timeout}")
        self.model = str(model).strip()
        self.base_url = str(base_url).strip().rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.api_key_env = str(api_key_env) if api_key_env else None
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = max(0.0, float(backoff))
        self.concurrency = int(concurrency)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        # the runner calls check_endpoint() before loading data and model when this is set
        self.preflight = bool(preflight)
        if parsed.hostname in _LOOPBACK:  # a local server is never reached through a proxy
            self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        else:
            self._opener = urllib.request.build_opener()
        self._rng = random.Random()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OpenAIJudge(model={self.model!r}, base_url={self.base_url!r})"

    def describe(self) -> dict:
        return {"backend": self.backend, "model": self.model, "base_url": self.base_url}

    # -- cache ---------------------------------------------------------------------------

    def cache_key(self, rubric: str, trait: str | None, facets: list | None, question: str,
                  response: str) -> str:
        key = {"model": self.model, "base_url": self.base_url, "rubric": rubric,
               "rubric_version": RUBRIC_VERSION, "trait": trait,
               "facets": [str(f) for f in facets] if facets else None,
               "question": question, "response": response}
        return hashlib.sha256(json.dumps(key, sort_keys=True, ensure_ascii=False)
                              .encode("utf-8")).hexdigest()

    def _cache_path(self, key: str) -> Path | None:
        if self.cache_dir is None:
            return None
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", self.model).strip("._") or "model"
        return self.cache_dir / "judge" / safe / key[:2] / f"{key}.json"

    def _cache_get(self, key: str) -> dict | None:
        path = self._cache_path(key)
        if path is None or not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            log.warning("ignoring unreadable judge cache entry %s", path)
            return None
        if not isinstance(entry, dict) or not isinstance(entry.get("raw"), str):
            return None
        rating = parse_rating(entry["raw"])
        return _result(rating, entry["raw"], None if rating is not None else "no rating in judge output",
                       cached=True)

    def _cache_put(self, key: str, raw: str, rating: float | None, rubric: str,
                   trait: str | None) -> None:
        path = self._cache_path(key)
        if path is None:
            return
        try:
            write_json_atomic(path, {"model": self.model, "rubric": rubric, "trait": trait,
                                     "rating": rating, "raw": raw})
        except OSError as e:
            log.warning("could not write judge cache entry %s: %s", path, e.strerror or e)

    # -- HTTP ----------------------------------------------------------------------------

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   "User-Agent": f"pkt/{pkt.__version__}"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _post(self, content: str) -> str:
        """One attempt: the judge's reply text, or a :class:`_Failure`."""
        body = json.dumps({"model": self.model,
                           "messages": [{"role": "user", "content": content}],
                           "temperature": self.temperature,
                           "max_tokens": self.max_tokens}).encode("utf-8")
        req = urllib.request.Request(self.url, data=body, headers=self._headers(), method="POST")
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as e:
            status = e.code
            retry_after = _retry_after(e.headers)
            with contextlib.suppress(Exception):
                e.close()
            retry = status == 429 or 500 <= status <= 599
            raise _Failure("http", f"HTTP {status}", retry, status, retry_after) from None
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, BaseException):
                kind, text = _os_reason(reason)
            else:
                kind, text = "connection", str(reason)[:80]
            raise _Failure(kind, text, True) from None
        except http.client.HTTPException as e:
            if isinstance(e, ConnectionError):
                kind, text = _os_reason(e)
                raise _Failure(kind, text, True) from None
            raise _Failure("protocol", f"bad HTTP response ({type(e).__name__})", True) from None
        except OSError as e:
            kind, text = _os_reason(e)
            raise _Failure(kind, text, True) from None
        try:
            data = json.loads(payload.decode("utf-8"))
            text = data["choices"][0]["message"]["content"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, IndexError, TypeError):
            raise _Failure("malformed", "malformed response", False) from None
        if not isinstance(text, str):
            raise _Failure("malformed", "malformed response", False)
        return text

    def check_endpoint(self) -> None:
        """One cheap request before any real work: ``GET {base_url}/models`` (free on paid
        APIs, served by vLLM, llama.cpp and Ollama alike), with the key if one is set.

        * no answer at all (connection refused, host not found, timeout): the endpoint is
          down, a :class:`PktError`;
        * HTTP 401 / 403: something listens but refuses the key, which every rating request
          would meet too, a :class:`PktError`;
        * any other HTTP status (404, 405, 5xx: a server without ``/models``, a busy one) or
          a body that is not JSON: something listens, so the run goes on with a warning; the
          ratings themselves decide (a judge that fails on every answer fails the run).

        ``eval.judge.preflight=false`` skips the check (the run's own ratings still fail
        loudly when the endpoint is down by then).
        """
        url = f"{self.base_url}/models"
        headers = {k: v for k, v in self._headers().items() if k != "Content-Type"}
        req = urllib.request.Request(url, headers=headers, method="GET")
        skip = "eval.judge.preflight=false skips this check"
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                payload = resp.read(1 << 20)
        except urllib.error.HTTPError as e:
            status = e.code
            with contextlib.suppress(Exception):
                e.close()
            if status in (401, 403):
                raise PktError(f"judge endpoint {self.base_url} answered HTTP {status} to "
                               f"GET /models (check the API key in ${self.api_key_env}; "
                               f"{skip})") from None
            log.warning("judge endpoint %s answered HTTP %d to GET /models; going on (the "
                        "ratings will show whether it serves chat completions)",
                        self.base_url, status)
            return
        except http.client.HTTPException as e:
            if not isinstance(e, ConnectionError):
                raise PktError(f"judge endpoint {self.base_url} did not answer in HTTP "
                               f"({type(e).__name__}) to GET /models ({skip})") from None
            kind, text = _os_reason(e)
            raise PktError(f"judge endpoint {self.base_url} is unreachable ({text}); checked "
                           f"before loading data and model ({skip})") from None
        except (urllib.error.URLError, OSError) as e:
            reason = e.reason if isinstance(e, urllib.error.URLError) else e
            if isinstance(reason, BaseException):
                kind, text = _os_reason(reason)
            else:
                kind, text = "connection", str(reason)[:80]
            if kind == "timeout":
                text = f"timed out after {self.timeout:g} s"
            raise PktError(f"judge endpoint {self.base_url} is unreachable ({text}); checked "
                           f"before loading data and model ({skip})") from None
        try:
            json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            log.warning("judge endpoint %s answered GET /models with something that is not "
                        "JSON; is judge.base_url the API root (e.g. http://host:8000/v1)?",
                        self.base_url)

    def _delay(self, attempt: int, failure: _Failure) -> float:
        if failure.retry_after is not None:
            return failure.retry_after
        base = min(self.backoff * (2 ** attempt), BACKOFF_CAP_S)
        return base * (1.0 + 0.1 * self._rng.random())

    def _request(self, content: str, state: dict) -> tuple[str | None, _Failure | None]:
        """Up to ``1 + max_retries`` attempts; stops early once the endpoint looks down."""
        failure = None
        for attempt in range(self.max_retries + 1):
            if state["abort"]:
                return None, _Failure("skipped", "skipped: judge endpoint unreachable", False)
            try:
                text = self._post(content)
            except _Failure as f:
                failure = f
                if f.kind not in ("connection", "timeout"):
                    with self._lock:
                        state["reached"] = True
                if not f.retry or attempt == self.max_retries:
                    break
                time.sleep(self._delay(attempt, f))
                continue
            with self._lock:
                state["reached"] = True
                state["abort"] = False
            return text, None
        if failure is not None and failure.kind in ("connection", "timeout"):
            with self._lock:
                if not state["reached"]:
                    state["abort"] = True  # nothing has answered yet: do not wait on the rest
        return None, failure

    # -- public --------------------------------------------------------------------------

    def rate(self, items: list[dict], rubric: str, trait: str | None = None,
             facets: list | None = None, progress: bool = False) -> list[dict]:
        _check_rubric(rubric)
        pairs = _check_items(items)
        results: list[dict | None] = [None] * len(pairs)
        pending: dict[str, list[int]] = {}  # cache key -> item indices (duplicates share one call)
        for i, (q, r) in enumerate(pairs):
            key = self.cache_key(rubric, trait, facets, q, r)
            if key in pending:
                pending[key].append(i)
                continue
            hit = self._cache_get(key)
            if hit is not None:
                results[i] = hit
            else:
                pending[key] = [i]
        if pending:
            self._run(pairs, pending, results, rubric, trait, facets, progress)
        return results  # type: ignore[return-value]

    def _run(self, pairs, pending, results, rubric, trait, facets, progress) -> None:
        state = {"reached": False, "abort": False}
        failures: list[_Failure] = []
        none_cached = all(r is None for r in results)

        def one(key: str, i: int):
            q, r = pairs[i]
            content = build_rubric(rubric, q, r, trait, facets)
            return key, self._request(content, state)

        workers = min(self.concurrency, len(pending))
        bar = tqdm(total=len(pending), desc=f"judge {rubric}", unit="q", disable=not progress)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pkt-judge") as pool:
            futures = [pool.submit(one, key, idx[0]) for key, idx in pending.items()]
            for fut in as_completed(futures):
                key, (text, failure) = fut.result()
                if failure is None:
                    rating = parse_rating(text)
                    self._cache_put(key, text, rating, rubric, trait)
                    res = _result(rating, text,
                                  None if rating is not None else "no rating in judge output")
                else:
                    failures.append(failure)
                    res = _result(error=failure.reason)
                for i in pending[key]:
                    results[i] = dict(res)
                bar.update(1)
        bar.close()
        if len(failures) == len(pending):
            self._raise_if_down(failures, none_cached)
        elif failures:
            log.warning("judge: %d of %d requests failed (%s); their ratings are None",
                        len(failures), len(pending),
                        Counter(f.reason for f in failures).most_common(1)[0][0])

    def _raise_if_down(self, failures: list[_Failure], none_cached: bool = True) -> None:
        """Every request failed: a down endpoint or a client error is one clear error, and
        so is any other failure when no item got a rating from the cache either."""
        real = [f for f in failures if f.kind != "skipped"]
        if not real:
            return
        tries = self.max_retries + 1
        if all(f.kind in ("connection", "timeout") for f in real):
            reason = Counter(f.reason for f in real).most_common(1)[0][0]
            if reason == "timed out":
                reason = f"timed out after {self.timeout:g} s"
            raise PktError(f"judge endpoint {self.base_url} is unreachable ({reason}) "
                           f"after {tries} tries")
        statuses = {f.status for f in real}
        if len(statuses) == 1 and next(iter(statuses)) in (400, 401, 403, 404):
            status = next(iter(statuses))
            hint = {401: f"check the API key in ${self.api_key_env}",
                    403: f"check the API key in ${self.api_key_env}",
                    404: f"check judge.base_url and judge.model '{self.model}'",
                    400: f"check judge.model '{self.model}' and the request settings"}[status]
            raise PktError(f"judge endpoint {self.base_url} answered HTTP {status} to every "
                           f"request ({hint})")
        if not none_cached:
            return  # some items were answered before (cache): a re-run asking for the rest
        # anything else that failed everywhere (HTML or other non-JSON 200s, 5xx after all
        # retries, mixed): no rating at all is a failed judge, never a silent null score
        reason = Counter(f.reason for f in real).most_common(1)[0][0]
        n = len(failures)
        raise PktError(f"judge endpoint {self.base_url} failed on every request ({n} of {n}: "
                       f"{reason}); check judge.base_url (the API root of an OpenAI-compatible "
                       f"server) and judge.model '{self.model}'")


# ---------------------------------------------------------------------------------------
# local HF judge


class LocalJudge:
    """Any Hugging Face causal LM as judge: expected rating from one forward pass."""

    backend = "local"

    def __init__(self, path: str | None = None, lm=None, dtype: str = "float32",
                 device: str = "auto", batch_size: int = 4, name: str = "local"):
        if lm is None and not path:
            raise PktError("the local judge needs judge.path (an HF id or a local directory)")
        if int(batch_size) < 1:
            raise PktError(f"judge.batch_size must be at least 1, got {batch_size}")
        self.path = str(path) if path else None
        self.dtype, self.device = dtype, device
        self.batch_size = int(batch_size)
        self.name = name
        self._lm = lm
        self._digit_ids: list[int] | None = None

    def __repr__(self) -> str:
        return f"LocalJudge(name={self.name!r}, path={self.path!r})"

    @property
    def lm(self):
        if self._lm is None:
            from pkt.models import load_pretrained_dir, resolve_device, resolve_dtype

            self._lm = load_pretrained_dir(self.path, resolve_dtype(self.dtype),
                                           resolve_device(self.device), self.name)
        return self._lm

    def describe(self) -> dict:
        d = {"backend": self.backend, "model": self.name, "path": self.path}
        if self._lm is not None:
            d["model"] = getattr(self._lm, "name", self.name)
            d["fingerprint"] = getattr(self._lm, "fingerprint", None)
        return d

    def digit_ids(self) -> list[int]:
        """Token ids of "1".."5"; an error if the tokenizer splits a digit."""
        if self._digit_ids is None:
            tok = self.lm.tokenizer
            ids = []
            for d in range(RATING_MIN, RATING_MAX + 1):
                enc = tok.encode(str(d), add_special_tokens=False)
                if len(enc) != 1:
                    raise PktError(f"local judge '{self.name}': the digit '{d}' is not a single "
                                   f"token in its tokenizer ({len(enc)} tokens); choose "
                                   f"another judge model")
                ids.append(int(enc[0]))
            if len(set(ids)) != len(ids):
                raise PktError(f"local judge '{self.name}': the digits 1-5 share token ids")
            self._digit_ids = ids
        return self._digit_ids

    def prompts(self, items: list[dict], rubric: str, trait: str | None = None,
                facets: list | None = None) -> list[str]:
        """The full judge inputs: chat prompt + the forced answer prefix ``Rating: [[``."""
        from pkt.generation import chat_prompt

        _check_rubric(rubric)
        tok = self.lm.tokenizer
        return [chat_prompt(tok, build_rubric(rubric, q, r, trait, facets)) + "Rating: [["
                for q, r in _check_items(items)]

    def rate(self, items: list[dict], rubric: str, trait: str | None = None,
             facets: list | None = None, progress: bool = False) -> list[dict]:
        import torch

        _check_rubric(rubric)
        if not items:
            return []
        prompts = self.prompts(items, rubric, trait, facets)
        ids = self.digit_ids()
        lm = self.lm
        model, tok = lm.model, lm.tokenizer
        device = lm.device
        digits = torch.arange(RATING_MIN, RATING_MAX + 1, dtype=torch.float64)
        keep_last = "logits_to_keep" in inspect.signature(model.forward).parameters
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: list[dict | None] = [None] * len(prompts)
        old_side = tok.padding_side
        tok.padding_side = "left"
        bar = tqdm(total=len(prompts), desc=f"judge {rubric}", unit="q", disable=not progress)
        try:
            with torch.inference_mode():
                for start in range(0, len(order), self.batch_size):
                    idx = order[start:start + self.batch_size]
                    enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True,
                              add_special_tokens=False)
                    mask = enc["attention_mask"].to(device)
                    input_ids = enc["input_ids"].to(device)
                    # positions count real tokens only, so a left-padded row scores as alone
                    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
                    kw = {"logits_to_keep": 1} if keep_last else {}
                    out = model(input_ids=input_ids, attention_mask=mask, position_ids=pos,
                                use_cache=False, **kw)
                    logits = out.logits[:, -1, :].float()[:, ids].double().cpu()
                    probs = torch.softmax(logits, dim=-1)
                    expect = (probs * digits).sum(-1)
                    for row, i in enumerate(idx):
                        p = {str(d): round(float(probs[row, k]), 6)
                             for k, d in enumerate(range(RATING_MIN, RATING_MAX + 1))}
                        rating = min(max(float(expect[row]), RATING_MIN), RATING_MAX)
                        results[i] = _result(rating, json.dumps(p))
                    bar.update(len(idx))
        finally:
            tok.padding_side = old_side
            bar.close()
        return results  # type: ignore[return-value]
