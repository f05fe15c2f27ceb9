"""The LLM judge: rating parser, rubric text, the HTTP judge against a real local server,
and the local-model judge's expected rating against a hand computation."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler
from types import SimpleNamespace

import pytest
import torch

from pkt.errors import PktError
from pkt.eval.judge import (
    RUBRICS,
    LocalJudge,
    OpenAIJudge,
    build_rubric,
    parse_rating,
)
from tests.conftest import LocalServer

FACETS = ["imagination", "artistic interests", "emotionality", "adventurousness", "intellect",
          "liberalism"]

# ---------------------------------------------------------------------------------------
# parse_rating


@pytest.mark.parametrize("text,expected", [
    ("Warm and open. Rating: [[4]]", 4.0),
    ("[[4]]", 4.0),
    ("Rating: 4", 4.0),
    ("[[4.5]]", 4.5),
    ("Rating: [[ 3 ]]", 3.0),
    ("rating: [[2]]", 2.0),
    ("RATING: 5", 5.0),
    ("**Rating:** 1", 1.0),
    ("Rating: [[1]]\n", 1.0),
    ("Rating: 4.", 4.0),
    ("Rating: [[5.0]]", 5.0),
])
def test_parse_rating_valid(text, expected):
    assert parse_rating(text) == expected


@pytest.mark.parametrize("text", [
    "Rating: [[0]]", "Rating: [[6]]", "[[7.5]]", "Rating: 10", "Rating: 0.5", "[[-1]]",
    "Rating: 45",
])
def test_parse_rating_out_of_range_is_none(text):
    assert parse_rating(text) is None


@pytest.mark.parametrize("text", [
    "", "no rating here", "Rating: [[four]]", "Rating: [[]]", "[[abc]]", "Rating: 4.5.6",
    "[4]", "Rating -", None, 4, "{\"rating\": 3}",
])
def test_parse_rating_missing_or_garbage_is_none(text):
    assert parse_rating(text) is None


def test_parse_rating_last_marker_wins():
    assert parse_rating("At first [[2]], on reflection Rating: [[4]]") == 4.0
    assert parse_rating("Rating: [[5]] ... actually Rating: 3") == 3.0
    # the last marker decides even when it is out of range: no fallback, no clipping
    assert parse_rating("Rating: [[4]] ... Rating: [[9]]") is None


# ---------------------------------------------------------------------------------------
# rubric text


def test_build_rubric():
    assert RUBRICS == ("trait", "fluency")
    t = build_rubric("trait", "What do you do on weekends?", "I paint.", "openness", FACETS)
    assert "Openness" in t and all(f in t for f in FACETS)
    assert "What do you do on weekends?" in t and "I paint." in t
    assert "Rating: [[r]]" in t and "30 words" in t
    f = build_rubric("fluency", "Q?", "A.", None, None)
    assert "Q?" in f and "A." in f and "Rating: [[r]]" in f and "informal" in f.lower()
    with pytest.raises(PktError, match="trait"):
        build_rubric("trait", "Q", "A", None, None)
    with pytest.raises(PktError, match="unknown judge rubric"):
        build_rubric("style", "Q", "A", "openness", FACETS)


# ---------------------------------------------------------------------------------------
# a real chat-completions server


class FakeEndpoint(LocalServer):
    """A local OpenAI-compatible server; ``mode`` picks how the first try of an item fails.

    The item's rating is read from the response text (``answer-<k>`` -> ``Rating: [[k]]``),
    so results can be checked against the order of the items.
    """

    def __init__(self, mode: str = "ok", delay: float = 1.0, retry_after: str = "0.05"):
        self.mode, self.delay, self.retry_after = mode, delay, retry_after
        self.requests: list[dict] = []
        self.seen: dict[str, int] = {}
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.loads(raw)
                content = body["messages"][0]["content"]
                with outer.lock:
                    # header names are case-insensitive: kept lower-cased
                    outer.requests.append({"path": self.path, "body": body,
                                           "headers": {k.lower(): v for k, v in
                                                       self.headers.items()},
                                           "t": time.perf_counter()})
                    n = outer.seen.get(content, 0)
                    outer.seen[content] = n + 1
                try:
                    outer.respond(self, content, n)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout)

        self.serve(Handler)

    def send(self, h, status: int, payload: bytes, headers: dict | None = None):
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)

    def ok(self, h, content: str):
        m = re.search(r"answer-(\d)", content)
        text = f"Shows the trait clearly. Rating: [[{m.group(1) if m else 3}]]"
        self.send(h, 200, json.dumps({"id": "x", "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text},
             "finish_reason": "stop"}]}).encode())

    def respond(self, h, content: str, n: int):
        if self.mode == "500" and n == 0:
            return self.send(h, 500, b'{"error": "boom"}')
        if self.mode == "429" and n == 0:
            return self.send(h, 429, b'{"error": "slow down"}', {"Retry-After": self.retry_after})
        if self.mode == "slow" and n == 0:
            time.sleep(self.delay)
        if self.mode == "garbage" and "answer-2" in content:
            return self.send(h, 200, b"<html>this is not json</html>")
        if self.mode == "nochoices" and "answer-2" in content:
            return self.send(h, 200, b'{"choices": []}')
        if self.mode == "401":
            return self.send(h, 401, b'{"error": "bad key"}')
        return self.ok(h, content)



ITEMS = [{"question": f"Question {k}?", "response": f"answer-{k} from the model"}
         for k in (4, 1, 5, 2, 3)]
EXPECTED = [4.0, 1.0, 5.0, 2.0, 3.0]


def judge(ep: FakeEndpoint, **kw) -> OpenAIJudge:
    args = dict(model="judge-model", base_url=ep.base_url, max_retries=3,
                timeout=5.0, concurrency=3, api_key_env="PKT_TEST_NO_SUCH_KEY")
    args.update(kw)
    return OpenAIJudge(**args)


def test_http_success_and_wire_format(tmp_path):
    with FakeEndpoint("ok") as ep:
        res = judge(ep, cache_dir=str(tmp_path), temperature=0.0, max_tokens=64).rate(
            ITEMS, "trait", trait="openness", facets=FACETS)
    assert [r["rating"] for r in res] == EXPECTED
    assert all(r["error"] is None and r["cached"] is False for r in res)
    assert all(r["raw"].endswith(f"[[{int(e)}]]") for r, e in zip(res, EXPECTED))
    assert len(ep.requests) == len(ITEMS)
    req = ep.requests[0]
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["content-type"] == "application/json"
    # no key in the environment: no Authorization header at all (not even a placeholder)
    assert all("authorization" not in r["headers"] for r in ep.requests)
    body = req["body"]
    assert set(body) == {"model", "messages", "temperature", "max_tokens"}
    assert body["model"] == "judge-model" and body["temperature"] == 0.0
    assert body["max_tokens"] == 64
    assert [m["role"] for m in body["messages"]] == ["user"]
    assert "Openness" in body["messages"][0]["content"]


def test_http_500_then_success_is_retried():
    with FakeEndpoint("500") as ep:
        res = judge(ep).rate(ITEMS, "fluency")
    assert [r["rating"] for r in res] == EXPECTED
    assert all(r["error"] is None for r in res)
    assert len(ep.requests) == 2 * len(ITEMS)
    assert all(n == 2 for n in ep.seen.values())


def test_http_timeout_then_success_is_retried():
    items = ITEMS[:2]
    with FakeEndpoint("slow", delay=1.0) as ep:
        t0 = time.perf_counter()
        res = judge(ep, timeout=0.5, concurrency=2).rate(items, "fluency")
        dt = time.perf_counter() - t0
    assert [r["rating"] for r in res] == EXPECTED[:2]
    assert all(r["error"] is None for r in res)
    assert all(n == 2 for n in ep.seen.values()) and len(ep.requests) == 4
    assert dt < 3.0


def _retry_gaps(ep: FakeEndpoint) -> list[float]:
    """Seconds between the first and the second request of each item."""
    times: dict[str, list[float]] = {}
    for r in ep.requests:
        times.setdefault(r["body"]["messages"][0]["content"], []).append(r["t"])
    assert all(len(t) == 2 for t in times.values())
    return [t[1] - t[0] for t in times.values()]


@pytest.mark.parametrize("retry_after,lo,hi", [("0.05", 0.0, 0.3), ("1.2", 1.1, 3.0)])
def test_http_429_then_success_honours_retry_after(retry_after, lo, hi):
    # the client's own first wait is 0.375-0.5 s: a shorter and a longer one come only
    # from the server's Retry-After
    with FakeEndpoint("429", retry_after=retry_after) as ep:
        res = judge(ep).rate(ITEMS[:3], "fluency")
    assert [r["rating"] for r in res] == EXPECTED[:3]
    assert len(ep.requests) == 6
    assert all(lo <= g <= hi for g in _retry_gaps(ep)), _retry_gaps(ep)


def test_cache_hits_make_no_request(tmp_path):
    cache = tmp_path / "cache"
    with FakeEndpoint("ok") as ep:
        j = judge(ep, model="gpt-4o/mini:2024", cache_dir=str(cache))
        first = j.rate(ITEMS, "trait", trait="openness", facets=FACETS)
        n = len(ep.requests)
        again = judge(ep, model="gpt-4o/mini:2024", cache_dir=str(cache)).rate(
            ITEMS, "trait", trait="openness", facets=FACETS)
        assert len(ep.requests) == n == len(ITEMS)
        assert [r["rating"] for r in again] == [r["rating"] for r in first] == EXPECTED
        assert all(r["cached"] for r in again) and not any(r["cached"] for r in first)
        assert [r["raw"] for r in again] == [r["raw"] for r in first]
        # a different rubric, trait or response is a different key
        j.rate(ITEMS[:1], "fluency")
        j.rate(ITEMS[:1], "trait", trait="extraversion", facets=FACETS)
        j.rate([{"question": "Question 4?", "response": "answer-4 changed"}], "trait",
               trait="openness", facets=FACETS)
        assert len(ep.requests) == n + 3
    files = sorted((cache / "judge").rglob("*.json"))
    assert len(files) == len(ITEMS) + 3
    for f in files:
        model_dir, shard, name = f.parts[-3:]
        assert model_dir == "gpt-4o_mini_2024"
        assert re.fullmatch(r"[0-9a-f]{64}\.json", name) and shard == name[:2]
        entry = json.loads(f.read_text())
        assert parse_rating(entry["raw"]) == entry["rating"]
    assert not [p for p in cache.rglob(".*")]  # no temp files left behind


def test_duplicate_items_share_one_request():
    with FakeEndpoint("ok") as ep:
        res = judge(ep).rate([ITEMS[0], ITEMS[1], ITEMS[0]], "fluency")
    assert [r["rating"] for r in res] == [4.0, 1.0, 4.0]
    assert len(ep.requests) == 2


def test_api_key_sent_but_never_stored(tmp_path, monkeypatch, caplog):
    secret = "sk-test-9f8e7d6c5b4a-SECRET"
    monkeypatch.setenv("PKT_TEST_JUDGE_KEY", secret)
    cache = tmp_path / "cache"
    with FakeEndpoint("garbage") as ep:
        j = judge(ep, api_key_env="PKT_TEST_JUDGE_KEY", cache_dir=str(cache))
        res = j.rate(ITEMS, "trait", trait="openness", facets=FACETS)
        (tmp_path / "results.json").write_text(json.dumps(res))
    assert {r["headers"]["authorization"] for r in ep.requests} == {f"Bearer {secret}"}
    assert secret not in repr(j) and secret not in json.dumps(j.describe())
    assert j.describe() == {"backend": "openai", "model": "judge-model",
                            "base_url": ep.base_url}
    assert secret not in caplog.text
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) > 1
    for p in files:
        assert secret.encode() not in p.read_bytes(), p


@pytest.mark.parametrize("mode", ["garbage", "nochoices"])
def test_malformed_response_marks_only_that_item(tmp_path, mode):
    cache = tmp_path / "cache"
    with FakeEndpoint(mode) as ep:
        res = judge(ep, cache_dir=str(cache)).rate(ITEMS, "fluency")
        bad = [i for i, it in enumerate(ITEMS) if "answer-2" in it["response"]]
        for i, r in enumerate(res):
            if i in bad:
                assert r["rating"] is None and r["error"] == "malformed response"
                assert r["raw"] is None
            else:
                assert r["rating"] == EXPECTED[i] and r["error"] is None
        assert len(ep.requests) == len(ITEMS)  # malformed 200s are not retried
        # failed items are not cached: a re-run asks again only for them
        again = judge(ep, cache_dir=str(cache)).rate(ITEMS, "fluency")
        assert len(ep.requests) == len(ITEMS) + len(bad)
        assert [r["cached"] for r in again] == [i not in bad for i in range(len(ITEMS))]


def test_unparsable_rating_is_none_not_a_number():
    class NoRating(FakeEndpoint):
        def ok(self, h, content):
            self.send(h, 200, json.dumps({"choices": [{"message": {
                "content": "I would say it is quite strong. Rating: [[9]]"}}]}).encode())

    with NoRating("ok") as ep:
        res = judge(ep).rate(ITEMS[:2], "fluency")
    assert all(r["rating"] is None and r["raw"].endswith("[[9]]") for r in res)
    assert all(r["error"] for r in res)


def test_unreachable_endpoint_is_one_clear_error():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    j = OpenAIJudge(model="m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=2,
                    concurrency=2)
    t0 = time.perf_counter()
    with pytest.raises(PktError) as ei:
        j.rate(ITEMS, "fluency")
    msg = str(ei.value)
    assert "\n" not in msg
    assert "unreachable" in msg and f"127.0.0.1:{port}" in msg
    assert "connection refused" in msg and "3 tries" in msg
    assert time.perf_counter() - t0 < 5.0


def test_every_request_rejected_is_one_clear_error():
    with FakeEndpoint("401") as ep:
        with pytest.raises(PktError, match="HTTP 401.*PKT_TEST_NO_SUCH_KEY"):
            judge(ep).rate(ITEMS[:2], "fluency")
    assert len(ep.requests) == 2  # client errors are not retried


class NotHTTP:
    """A TCP server on 127.0.0.1 that answers every request with a line that is not HTTP."""

    def __enter__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.accepted = 0
        self.base_url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"

        def serve():
            while True:
                try:
                    conn, _ = self.sock.accept()
                except OSError:  # closed
                    return
                self.accepted += 1
                with conn:
                    conn.recv(65536)
                    conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")

        threading.Thread(target=serve, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.sock.close()


def test_an_answer_that_is_not_http_is_one_clear_error():
    with NotHTTP() as srv:
        with pytest.raises(PktError) as pre:
            OpenAIJudge(model="m", base_url=srv.base_url, max_retries=3).check_endpoint()
        assert srv.accepted == 1  # the preflight makes one request, never retried
        with pytest.raises(PktError) as ei:
            OpenAIJudge(model="m", base_url=srv.base_url, max_retries=0,
                        concurrency=2).rate(ITEMS, "fluency")
    for msg in (str(pre.value), str(ei.value)):
        assert "\n" not in msg and srv.base_url in msg and "illegal status line" in msg
    assert "did not answer in HTTP" in str(pre.value)
    assert "failed on every request (5 of 5: bad HTTP response" in str(ei.value)


def test_a_proxy_in_the_environment_is_not_used_for_a_local_server(monkeypatch):
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    proxy = f"http://127.0.0.1:{dead.getsockname()[1]}"
    dead.close()
    for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(var, proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with FakeEndpoint("ok") as ep:
        res = judge(ep, max_retries=0).rate(ITEMS[:2], "fluency")
    assert [r["rating"] for r in res] == EXPECTED[:2] and len(ep.requests) == 2


def test_bad_config_and_items():
    with pytest.raises(PktError, match="base_url"):
        OpenAIJudge(model="m", base_url="not a url")
    with pytest.raises(PktError, match="unknown judge rubric"):
        OpenAIJudge(model="m", base_url="http://127.0.0.1:1/v1").rate(ITEMS, "nope")
    with pytest.raises(PktError, match="question"):
        OpenAIJudge(model="m", base_url="http://127.0.0.1:1/v1").rate([{"q": 1}], "fluency")
    assert OpenAIJudge(model="m", base_url="http://127.0.0.1:1/v1").rate([], "fluency") == []


# ---------------------------------------------------------------------------------------
# local judge


def _expected_by_hand(lm, prompt: str) -> float:
    tok = lm.tokenizer
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = lm.model(input_ids=ids).logits[0, -1].double()
    digit_ids = [tok.encode(str(d), add_special_tokens=False)[0] for d in range(1, 6)]
    p = torch.softmax(logits[digit_ids], dim=-1)
    return float(sum((d + 1) * p[d] for d in range(5)))


def test_local_judge_expected_rating(tiny):
    j = LocalJudge(lm=tiny, batch_size=4)
    items = [
        {"question": "How do you spend a free afternoon?", "response": "Painting, mostly."},
        {"question": "Q?", "response": "A much longer answer " * 8},
        {"question": "What is your view of novelty?", "response": "I love new ideas."},
    ]
    res = j.rate(items, "trait", trait="openness", facets=FACETS)
    again = j.rate(items, "trait", trait="openness", facets=FACETS)
    assert [r["rating"] for r in res] == [r["rating"] for r in again]
    for r in res:
        assert 1.0 <= r["rating"] <= 5.0 and r["error"] is None and r["cached"] is False
        probs = json.loads(r["raw"])
        assert set(probs) == {"1", "2", "3", "4", "5"}
        assert abs(sum(probs.values()) - 1.0) < 1e-4
    prompts = j.prompts(items, "trait", trait="openness", facets=FACETS)
    assert all(p.endswith("<|im_start|>assistant\nRating: [[") for p in prompts)
    # the shortest item is left-padded in its batch; it must score as if alone
    for k in (0, 1):
        assert res[k]["rating"] == pytest.approx(_expected_by_hand(tiny, prompts[k]), abs=1e-5)
    assert j.describe()["backend"] == "local"
    fl = j.rate(items[:1], "fluency")
    assert 1.0 <= fl[0]["rating"] <= 5.0


def test_local_judge_rejects_split_digits_and_missing_model():
    class SplitTok:
        def encode(self, text, add_special_tokens=False):
            return [7, 8]

    j = LocalJudge(lm=SimpleNamespace(tokenizer=SplitTok(), name="x"))
    with pytest.raises(PktError, match="not a single token"):
        j.digit_ids()
    with pytest.raises(PktError, match="judge.path"):
        LocalJudge()
