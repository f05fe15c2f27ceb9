"""An LLM judge behind any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM,
llama.cpp, Ollama), spoken to through the official ``openai`` client.

The client does the HTTP: the timeout, and the retries with exponential backoff on
connection errors, timeouts, 408, 409, 429 and 5xx, honouring a server's ``Retry-After``.
This module adds what a judge run needs on top: a small thread pool, the rating cache,
one request for duplicate items, no more requests once the endpoint is plainly down, and
one clear error line when every request failed. The API key is read from an environment
variable when the requests are made and is never stored.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import threading
import urllib.parse
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

import openai
from tqdm.auto import tqdm

from pkt.errors import PktError
from pkt.eval.judge.cache import RatingCache
from pkt.eval.judge.results import NO_RATING, check_items, result
from pkt.eval.judge.rubric import build_rubric, check_rubric, parse_rating
from pkt.params import AT_LEAST_1, NON_NEGATIVE, Rule, check_url

log = logging.getLogger(__name__)

# the HTTP layer under the openai client logs every request at INFO, and a judge makes
# hundreds; a level set by the user's own logging config is left alone
for _name in ("httpx", "httpx2"):
    if logging.getLogger(_name).level == logging.NOTSET:
        logging.getLogger(_name).setLevel(logging.WARNING)

_LOOPBACK = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}
# the client insists on a credential; a keyless server gets this one, and the request
# omits the Authorization header altogether, so it is never sent
_NO_KEY = "unused"


@dataclass(frozen=True)
class Failure:
    """Why one item got no reply, after the client's retries.

    ``kind`` is connection | timeout (nothing answered), http (an HTTP error status),
    protocol (an answer that is not HTTP), malformed (a 200 without a reply text) or
    skipped (not asked: the endpoint was down by then).
    """

    kind: str
    reason: str
    status: int | None = None

    @property
    def unreachable(self) -> bool:
        return self.kind in ("connection", "timeout")


SKIPPED = Failure("skipped", "skipped: judge endpoint unreachable")
MALFORMED = Failure("malformed", "malformed response")


def _chain(err: BaseException | None):
    """``err`` and the exceptions it was raised from, outermost first."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _os_failure(e: OSError) -> Failure:
    if isinstance(e, TimeoutError):
        return Failure("timeout", "timed out")
    if isinstance(e, ConnectionRefusedError):
        return Failure("connection", "connection refused")
    if isinstance(e, socket.gaierror):
        return Failure("connection", "host not found")
    if isinstance(e, ConnectionResetError):
        return Failure("connection", "connection reset")
    if isinstance(e, ssl.SSLError):
        return Failure("connection", f"TLS error: {str(e.reason or e).lower()}")
    return Failure("connection", (e.strerror or type(e).__name__).lower())


def failure_of(err: openai.APIError) -> Failure:
    """What a failed client call means for the judge."""
    if isinstance(err, openai.APIStatusError):
        return Failure("http", f"HTTP {err.status_code}", err.status_code)
    if isinstance(err, openai.APITimeoutError):
        return Failure("timeout", "timed out")
    chain = list(_chain(err))
    for e in chain:
        if isinstance(e, OSError):
            return _os_failure(e)
    if isinstance(err, openai.APIConnectionError):  # it answered, but not in HTTP
        inner = chain[-1]
        detail = str(inner).strip().rstrip(".") or type(inner).__name__
        return Failure("protocol", f"bad HTTP response ({detail[:80]})")
    return MALFORMED  # e.g. a response the client could not read


def reply_text(payload: bytes) -> str | None:
    """The reply of a chat-completions body, or None if the body is not one."""
    try:
        text = json.loads(payload.decode("utf-8"))["choices"][0]["message"]["content"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, IndexError, TypeError):
        return None
    return text if isinstance(text, str) else None


class _Reach:
    """Whether anything has answered yet in this batch, and whether to stop asking."""

    def __init__(self):
        self.reached = self.down = False
        self._lock = threading.Lock()

    def saw(self, failure: Failure | None) -> None:
        with self._lock:
            if failure is None or not failure.unreachable:
                self.reached, self.down = True, False
            elif not self.reached:
                self.down = True  # nothing has answered: do not wait on the rest


class OpenAIJudge:
    RULES = {"batch_size": AT_LEAST_1, "model": Rule(nonempty=True),
             "base_url": Rule(check=check_url),
             "temperature": Rule(lo=0, hi=2),  # the OpenAI API's range
             "max_tokens": AT_LEAST_1,
             # a day per request at most (a socket timeout must fit in the platform's time_t)
             "timeout": Rule(lo=0, hi=86400, lo_open=True),
             "max_retries": NON_NEGATIVE, "concurrency": AT_LEAST_1}

    """A judge behind an OpenAI-compatible ``POST {base_url}/chat/completions`` endpoint.

    ``timeout`` (seconds) and ``max_retries`` go to the client as they are; the client
    waits 0.5 s before the first retry, doubling up to 8 s (jittered), or as long as the
    server's ``Retry-After`` says (up to two minutes).
    """

    # its public name: configs (_target_), the validator's rules and pickles use it
    __module__ = "pkt.eval.judge"
    backend = "openai"

    def __init__(self, model: str, base_url: str, api_key_env: str = "OPENAI_API_KEY",
                 temperature: float = 0.0, max_tokens: int = 128, timeout: float = 30.0,
                 max_retries: int = 4, concurrency: int = 4,
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
        self.api_key_env = str(api_key_env) if api_key_env else None
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.concurrency = int(concurrency)
        self.cache = RatingCache(cache_dir, self.model, self.base_url)
        # the runner calls check_endpoint() before loading data and model when this is set
        self.preflight = bool(preflight)
        # a local server is never reached through a proxy from the environment
        self._loopback = parsed.hostname in _LOOPBACK

    def __repr__(self) -> str:
        return f"OpenAIJudge(model={self.model!r}, base_url={self.base_url!r})"

    def describe(self) -> dict:
        return {"backend": self.backend, "model": self.model, "base_url": self.base_url}

    # -- the client ------------------------------------------------------------------------

    def _client(self, max_retries: int | None = None) -> tuple[openai.OpenAI, dict]:
        """A client for one batch of requests (close it after), and the headers each
        request adds: none with a key, an omitted Authorization header without one."""
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        http = openai.DefaultHttpxClient(trust_env=False) if self._loopback else None
        client = openai.OpenAI(base_url=self.base_url, api_key=key or _NO_KEY,
                               timeout=self.timeout, http_client=http,
                               max_retries=self.max_retries if max_retries is None
                               else max_retries)
        return client, ({} if key else {"Authorization": openai.omit})

    def _complete(self, client: openai.OpenAI, headers: dict,
                  content: str) -> tuple[str | None, Failure | None]:
        """One rating request (with the client's retries): the reply text, or why not."""
        try:
            raw = client.chat.completions.with_raw_response.create(
                model=self.model, messages=[{"role": "user", "content": content}],
                temperature=self.temperature, max_tokens=self.max_tokens,
                extra_headers=headers)
        except openai.APIError as e:
            return None, failure_of(e)
        text = reply_text(raw.content)
        return (text, None) if text is not None else (None, MALFORMED)

    def check_endpoint(self) -> None:
        """One cheap request before any real work: ``GET {base_url}/models`` (free on paid
        APIs, served by vLLM, llama.cpp and Ollama alike), with the key if one is set, and
        without retries.

        * no answer at all (connection refused, host not found, timeout) or one that is not
          HTTP: the endpoint is down, a :class:`PktError`;
        * HTTP 401 / 403: something listens but refuses the key, which every rating request
          would meet too, a :class:`PktError`;
        * any other HTTP status (404, 405, 5xx: a server without ``/models``, a busy one) or
          a body that is not JSON: something listens, so the run goes on with a warning; the
          ratings themselves decide (a judge that fails on every answer fails the run).

        ``eval.judge.preflight=false`` skips the check (the run's own ratings still fail
        loudly when the endpoint is down by then).
        """
        skip = "eval.judge.preflight=false skips this check"
        client, headers = self._client(max_retries=0)
        try:
            with client:
                payload = client.models.with_raw_response.list(extra_headers=headers).content
        except openai.APIStatusError as e:
            status = e.status_code
            if status in (401, 403):
                raise PktError(f"judge endpoint {self.base_url} answered HTTP {status} to "
                               f"GET /models (check the API key in ${self.api_key_env}; "
                               f"{skip})") from None
            log.warning("judge endpoint %s answered HTTP %d to GET /models; going on (the "
                        "ratings will show whether it serves chat completions)",
                        self.base_url, status)
            return
        except openai.APIError as e:
            f = failure_of(e)
            if f.kind == "protocol":
                raise PktError(f"judge endpoint {self.base_url} did not answer in HTTP to "
                               f"GET /models: {f.reason} ({skip})") from None
            text = f"timed out after {self.timeout:g} s" if f.kind == "timeout" else f.reason
            raise PktError(f"judge endpoint {self.base_url} is unreachable ({text}); checked "
                           f"before loading data and model ({skip})") from None
        try:
            json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            log.warning("judge endpoint %s answered GET /models with something that is not "
                        "JSON; is judge.base_url the API root (e.g. http://host:8000/v1)?",
                        self.base_url)

    # -- rating ----------------------------------------------------------------------------

    def rate(self, items: list[dict], rubric: str, trait: str | None = None,
             facets: list | None = None, progress: bool = False) -> list[dict]:
        check_rubric(rubric)
        pairs = check_items(items)
        results: list[dict | None] = [None] * len(pairs)
        pending: dict[str, list[int]] = {}  # cache key -> item indices (duplicates share one call)
        for i, (q, r) in enumerate(pairs):
            key = self.cache.key(rubric, trait, facets, q, r)
            if key in pending:
                pending[key].append(i)
                continue
            hit = self.cache.get(key)
            if hit is not None:
                results[i] = hit
            else:
                pending[key] = [i]
        if pending:
            self._ask(pairs, pending, results, rubric, trait, facets, progress)
        return results  # type: ignore[return-value]

    def _ask(self, pairs, pending, results, rubric, trait, facets, progress) -> None:
        """Ask the endpoint for every pending key; fills ``results`` in place."""
        reach = _Reach()
        failures: list[Failure] = []
        none_cached = all(r is None for r in results)
        client, headers = self._client()

        def one(key: str, i: int):
            if reach.down:
                return key, None, SKIPPED
            q, r = pairs[i]
            text, failure = self._complete(client, headers,
                                           build_rubric(rubric, q, r, trait, facets))
            reach.saw(failure)
            return key, text, failure

        workers = min(self.concurrency, len(pending))
        bar = tqdm(total=len(pending), desc=f"judge {rubric}", unit="q", disable=not progress)
        with client, ThreadPoolExecutor(max_workers=workers,
                                        thread_name_prefix="pkt-judge") as pool:
            futures = [pool.submit(one, key, idx[0]) for key, idx in pending.items()]
            for fut in as_completed(futures):
                key, text, failure = fut.result()
                if failure is None:
                    rating = parse_rating(text)
                    self.cache.put(key, text, rating, rubric, trait)
                    res = result(rating, text, None if rating is not None else NO_RATING)
                else:
                    failures.append(failure)
                    res = result(error=failure.reason)
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

    def _raise_if_down(self, failures: list[Failure], none_cached: bool = True) -> None:
        """Every request failed: a down endpoint or a client error is one clear error, and
        so is any other failure when no item got a rating from the cache either."""
        real = [f for f in failures if f.kind != "skipped"]
        if not real:
            return
        if all(f.unreachable for f in real):
            reason = Counter(f.reason for f in real).most_common(1)[0][0]
            if reason == "timed out":
                reason = f"timed out after {self.timeout:g} s"
            raise PktError(f"judge endpoint {self.base_url} is unreachable ({reason}) "
                           f"after {self.max_retries + 1} tries")
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
