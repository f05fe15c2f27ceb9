"""pkt.serve over real HTTP on 127.0.0.1 (uvicorn in a thread, a free port): the OpenAI
chat API (JSON and SSE), personalities per request, the decoding batch, bad requests,
client disconnects, the CLI, the chat page. Mostly on the tiny random model; one test on
the embedded SmolLM2 through the official ``openai`` client."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

import pkt
from pkt import prompts
from pkt.generation import GenConfig, chat_prompt, generate
from pkt.models import TinyRandomModel
from pkt.serve import Settings, create_app
from pkt.serve.__main__ import make_server, preflight, settings_from_cfg
from pkt.serve.engine import held_back, stop_cut
from tests.conftest import MODEL_CACHE, ROOT

Q = "What do you do on a free evening?"
TINY = {"n_search": 4, "search_max_new_tokens": 8}


class Running:
    """``create_app(lm, settings)`` served by uvicorn in a thread; stopped on exit."""

    def __init__(self, lm, settings: Settings):
        self.app = create_app(lm, settings)
        self.service = self.app.state.service
        self.server = make_server(self.app, "127.0.0.1", 0, "warning")
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        t0 = time.time()
        while not self.server.started:
            if not self.thread.is_alive() or time.time() - t0 > 30:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.http = httpx.Client(base_url=self.url, timeout=60)
        return self

    def __exit__(self, *exc):
        self.http.close()
        self.server.should_exit = True
        self.thread.join(15)

    def chat(self, **body) -> httpx.Response:
        body.setdefault("model", self.service.lm.name)
        body.setdefault("messages", [{"role": "user", "content": Q}])
        body.setdefault("max_tokens", 16)
        return self.http.post("/v1/chat/completions", json=body)

    def text(self, **body) -> str:
        r = self.chat(**body)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]

    def stream(self, **body) -> tuple[list[dict], httpx.Response]:
        body.setdefault("model", self.service.lm.name)
        body.setdefault("messages", [{"role": "user", "content": Q}])
        body.setdefault("max_tokens", 16)
        events = []
        with self.http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
            assert r.status_code == 200, r.read()
            assert r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
        assert events[-1] == "[DONE]"
        return [json.loads(e) for e in events[:-1]], r

    def healthy(self) -> dict:
        r = self.http.get("/health")
        assert r.status_code == 200 and r.json()["status"] == "ok"
        return r.json()


@pytest.fixture(scope="module")
def lm():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield TinyRandomModel().load()
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def srv(lm, tmp_path_factory):
    cache = tmp_path_factory.mktemp("serve-cache")
    with Running(lm, Settings(cache_dir=str(cache), **TINY)) as s:
        yield s


def joined(chunks: list[dict]) -> str:
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])


# -- the API ---------------------------------------------------------------------------------

def test_health_models_and_page(srv):
    h = srv.healthy()
    assert h["model"] == "tiny_random" and h["method"] == "neuron" and not h["busy"]
    ids = [m["id"] for m in srv.http.get("/v1/models").json()["data"]]
    assert ids[0] == "tiny_random" and "tiny_random+extraversion:high:1.2" in ids
    assert srv.http.get("/v1/models/tiny_random+openness:low@actadd").json()["id"] == \
        "tiny_random+openness:low@actadd"
    assert srv.http.get("/v1/models/gpt-9").status_code == 404
    page = srv.http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for trait in pkt.profiles.TRAIT_NAMES:
        assert f"slider-{trait}" in page.text or "slider-${name}" in page.text
    assert "getReader" in page.text and 'id="compare"' in page.text and 'id="method"' in page.text
    assert "<script src" not in page.text and "<link" not in page.text  # nothing from a CDN


def test_greedy_equals_pkt_generate(srv, lm):
    """Plain and NPTI answers are exactly pkt's batched engine's for the same prompt."""
    r = srv.chat(max_tokens=24)
    body = r.json()
    with srv.service.batcher.model_lock:
        ref = generate(lm.model, lm.tokenizer, [chat_prompt(lm.tokenizer, prompts.neutral(Q))],
                       GenConfig(24, 1, 1.15), progress=False)[0]
    assert body["choices"][0]["message"]["content"].strip() == ref.text
    assert body["usage"] == {"prompt_tokens": len(ref.prompt_ids),
                             "completion_tokens": len(ref.response_ids),
                             "total_tokens": len(ref.prompt_ids) + len(ref.response_ids)}
    induced = srv.text(model="tiny_random+extraversion:high:2", max_tokens=24)
    with srv.service.batcher.model_lock:
        p = pkt.personality(lm, "extraversion:high:2", cache=srv.service.settings.cache_dir,
                            n_search=4, search_gen={"max_new_tokens": 8})
        with p.apply():
            ref2 = generate(lm.model, lm.tokenizer, [chat_prompt(lm.tokenizer, p.rewrite(Q))],
                            GenConfig(24, 1, 1.15), progress=False)[0]
    assert induced.strip() == ref2.text and ref2.text != ref.text


def test_stream_equals_json_and_chunk_format(srv):
    plain = srv.chat(max_tokens=20).json()
    chunks, r = srv.stream(max_tokens=20, stream_options={"include_usage": True})
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"]
               for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]
    assert joined(chunks) == plain["choices"][0]["message"]["content"]
    chunks, _ = srv.stream(max_tokens=5)
    assert "usage" not in chunks[-1] and chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_sampling_seed_top_p_and_max_tokens(srv):
    a = srv.text(temperature=1.0, seed=5, max_tokens=20)
    assert a == srv.text(temperature=1.0, seed=5, max_tokens=20)
    assert a != srv.text(temperature=1.0, seed=6, max_tokens=20)
    # the nucleus of a tiny top_p is the most likely token alone: greedy
    assert srv.text(temperature=1.0, top_p=1e-9, seed=1, max_tokens=20) == srv.text(max_tokens=20)
    r = srv.chat(max_tokens=7).json()
    assert r["usage"]["completion_tokens"] == 7 and r["choices"][0]["finish_reason"] == "length"


def test_stop_strings(srv):
    full = srv.text(max_tokens=30)
    good = [i for i in range(4, len(full) - 2) if "\ufffd" not in full[i:i + 2]]
    stop = full[good[0]:good[0] + 2]
    cut = full[:full.find(stop)]
    r = srv.chat(max_tokens=30, stop=[stop, "never-there"]).json()
    assert r["choices"][0]["message"]["content"] == cut
    assert r["choices"][0]["finish_reason"] == "stop"
    chunks, _ = srv.stream(max_tokens=30, stop=stop)
    assert joined(chunks) == cut and chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert stop_cut("abcSTOPx", ("STOP", "cS")) == 2
    assert held_back("hello ST", ("STOP",)) == 2 and held_back("hello", ("STOP",)) == 0


def test_personality_field_shorthand_and_identified_header(srv):
    r1 = srv.chat(model="tiny_random+openness:low:1.5")
    assert r1.status_code == 200 and r1.headers["x-pkt-identified"] == "openness"
    assert r1.headers["x-pkt-personality"] == "openness:low:1.5@neuron"
    r2 = srv.chat(personality={"traits": {"openness": {"aspect": "low", "strength": 1.5}}})
    assert "x-pkt-identified" not in r2.headers
    assert r2.json()["choices"] == r1.json()["choices"]
    assert srv.text(personality="openness:low:1.5") == srv.text(model="tiny_random+openness:low:1.5")
    act = srv.chat(model="tiny_random+openness:low:1.5@actadd")
    assert act.headers["x-pkt-personality"] == "openness:low:1.5@actadd"
    assert act.json()["choices"] == srv.chat(personality={
        "traits": {"openness": {"aspect": "low", "strength": 1.5}}, "method": "actadd"}).json()["choices"]
    # prompting rewrites the question: more prompt tokens than the neutral prompt
    base = srv.chat().json()["usage"]["prompt_tokens"]
    assert srv.chat(model="tiny_random+openness:low@prompt_p2").json()["usage"]["prompt_tokens"] > base
    assert srv.chat(model="tiny_random@prompt").json()["usage"]["prompt_tokens"] == base
    assert srv.chat(model="tiny_random+openness:low", personality="openness:high").status_code == 400


def test_concurrent_requests_equal_sequential(srv):
    """Mixed personalities from 8 threads at once give exactly the one-at-a-time outputs."""
    bodies = [{}, {"model": "tiny_random+extraversion:high:1.2"},
              {"personality": {"traits": {"neuroticism": {"aspect": "low"}}}},
              {"model": "tiny_random+agreeableness:high@actadd"},
              {"model": "tiny_random+conscientiousness:low@prompt"},
              {"model": "tiny_random+extraversion:low:0.8+neuroticism:high@neuron"},
              {"stream": True, "model": "tiny_random+extraversion:high:1.2"},
              {"temperature": 0.9, "seed": 3, "model": "tiny_random+openness:high@prompt_p2"}]
    for b in bodies:
        b.setdefault("max_tokens", 20)

    def run(b):
        if b.get("stream"):
            return joined(srv.stream(**{k: v for k, v in b.items() if k != "stream"})[0])
        return srv.text(**b)

    one_by_one = [run(b) for b in bodies]  # identifies what is new first
    with ThreadPoolExecutor(len(bodies)) as ex:
        together = list(ex.map(run, bodies))
    assert together == one_by_one
    assert one_by_one[0] != one_by_one[1] and one_by_one[1] == one_by_one[6]
    assert srv.healthy()["waiting"] == 0


# -- bad requests: an OpenAI-style error, and the server stays healthy -----------------------

def check_error(srv, r: httpx.Response, status: int, param=None, code=None, text=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param
    if code is not None:
        assert err["code"] == code
    if text is not None:
        assert text in err["message"], err["message"]
    srv.healthy()
    assert srv.text(max_tokens=2) is not None  # and still answers


def test_bad_unknown_trait(srv):
    check_error(srv, srv.chat(personality={"traits": {"humour": {"aspect": "high"}}}), 400,
                "personality", "invalid_personality", "unknown trait 'humour'")


def test_bad_unknown_aspect(srv):
    check_error(srv, srv.chat(model="tiny_random+extraversion:medium"), 400, "model",
                "invalid_personality", "unknown aspect 'medium'")


def test_bad_strength_nan(srv):
    body = json.dumps({"model": "tiny_random", "messages": [{"role": "user", "content": Q}],
                       "personality": {"traits": {"extraversion": {"aspect": "high",
                                                                   "strength": math.nan}}}})
    assert "NaN" in body
    r = srv.http.post("/v1/chat/completions", content=body,
                      headers={"content-type": "application/json"})
    check_error(srv, r, 400, "personality", "invalid_personality", "finite number >= 0")
    check_error(srv, srv.chat(personality="extraversion:high:nan"), 400, "personality")


def test_bad_strength_negative(srv):
    check_error(srv, srv.chat(personality={"traits": {"neuroticism": {"aspect": "low",
                                                                      "strength": -1}}}),
                400, "personality", "invalid_personality", "got -1")


def test_bad_malformed_json(srv):
    r = srv.http.post("/v1/chat/completions", content=b'{"model": "tiny_random", "messages": [',
                      headers={"content-type": "application/json"})
    check_error(srv, r, 400, None, "invalid_json", "not valid JSON")


def test_bad_missing_messages(srv):
    r = srv.http.post("/v1/chat/completions", json={"model": "tiny_random"})
    check_error(srv, r, 400, "messages", "missing_required_parameter")


def test_bad_unknown_model(srv):
    check_error(srv, srv.chat(model="gpt-4o"), 404, "model", "model_not_found", "gpt-4o")


def test_bad_prompt_too_long(srv):
    long = "x" * (srv.service.context_length + 10)  # one token per byte
    check_error(srv, srv.chat(messages=[{"role": "user", "content": long}]), 400, "messages",
                "context_length_exceeded", "maximum context length is 2048")


def test_bad_values(srv):
    check_error(srv, srv.chat(temperature=3), 400, "temperature", "invalid_value")
    check_error(srv, srv.chat(max_tokens=0), 400, "max_tokens")
    check_error(srv, srv.chat(n=2), 400, "n", "invalid_value", "only n=1")
    check_error(srv, srv.chat(messages=[{"role": "tool", "content": "x"}]), 400,
                "messages[0].role")
    check_error(srv, srv.chat(personality={"traits": {}, "method": "lora"}), 400,
                "personality.method")
    check_error(srv, srv.http.get("/v1/nothing"), 404, None, "not_found")


def test_max_tokens_limit_before_work_and_cap_to_context(srv):
    """Above serve.max_tokens_limit: 400 before any work (issue 26); at the limit: served,
    capped to what the context leaves."""
    before = srv.healthy()["requests"]
    check_error(srv, srv.chat(max_tokens=10**9), 400, "max_tokens", "invalid_value",
                "'max_tokens' must be <= 2048 (this server's serve.max_tokens_limit)")
    check_error(srv, srv.chat(max_tokens=None, max_completion_tokens=2049), 400,
                "max_completion_tokens", "invalid_value", "got 2049")
    assert srv.healthy()["requests"] == before + 2  # check_error's own requests only
    ctx = srv.service.context_length
    overhead = srv.chat(max_tokens=1).json()["usage"]["prompt_tokens"] - len(Q)
    long = "x" * (ctx - overhead - 10)  # one token per byte: 10 tokens left
    r = srv.chat(messages=[{"role": "user", "content": long}], max_tokens=2048,
                 ignore_eos=True).json()
    assert r["usage"]["completion_tokens"] == 10 and r["usage"]["total_tokens"] == ctx
    assert r["choices"][0]["finish_reason"] == "length"
    assert srv.healthy()["last"]["max_tokens"] == 10


def test_client_disconnects_mid_stream(srv):
    """Decoding stops early when the client goes away, and the row leaves the batch."""
    before = srv.healthy()["cancelled"]
    body = {"model": "tiny_random", "messages": [{"role": "user", "content": Q}],
            "max_tokens": 1500, "ignore_eos": True, "stream": True}
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        with c.stream("POST", "/v1/chat/completions", json=body) as r:
            got = 0
            for line in r.iter_lines():
                got += line.startswith("data: ")
                if got >= 5:
                    break
    t0 = time.time()
    while True:
        h = srv.healthy()
        if h["cancelled"] > before and not h["busy"]:
            break
        assert time.time() - t0 < 20, h
        time.sleep(0.05)
    last = h["last"]
    assert last["finish_reason"] == "cancelled" and last["decode_steps"] < 1499, last
    assert h["batch"]["rows"] == 0
    assert srv.chat(max_tokens=3).status_code == 200


def test_identify_off_refuses_with_409(lm, tmp_path):
    settings = Settings(cache_dir=str(tmp_path), identify=False,
                        preload=("agreeableness:high",), **TINY)
    settings_on = Settings(cache_dir=str(tmp_path), **TINY)
    with Running(lm, settings_on) as on:  # identify one trait into the shared cache
        on.service.preload(["agreeableness:high"])
    with Running(lm, settings) as s:
        check_error(s, s.chat(model="tiny_random+extraversion:high"), 409, "personality",
                    "trait_not_identified", "serve.identify=false")
        check_error(s, s.chat(model="tiny_random+extraversion:high@actadd"), 409,
                    "personality", "trait_not_identified")
        r = s.http.post("/v1/chat/completions", json={  # a stream too: a status, not a stream
            "model": "tiny_random+extraversion:high", "stream": True,
            "messages": [{"role": "user", "content": Q}]})
        check_error(s, r, 409, "personality", "trait_not_identified")
        r = s.chat(model="tiny_random+agreeableness:low:0.5")  # cached: served
        assert r.status_code == 200 and "x-pkt-identified" not in r.headers


# -- the command line ------------------------------------------------------------------------

def test_cli_config_errors():
    from hydra import compose, initialize_config_dir

    for argv, msg in [(["model=gpt9"], "unknown model 'gpt9'"),
                      (["serve.bogus=1"], "unknown key serve.bogus"),
                      (["trait=openness"], "unknown key 'trait'"),
                      (["--port", "8080"], "unknown option '--port': python -m pkt.serve takes "
                                           "Hydra overrides written key=value, e.g. serve.port")]:
        with pytest.raises(pkt.PktError, match=msg):
            preflight(argv)
    preflight(["model=tiny_random", "serve.port=0", "seed=3"])
    bad = [("serve.port=99999", "serve.port must be an integer 0..65535, got 99999"),
           ("serve.method=lora", "unknown serve.method 'lora'"),
           ("serve.identify=maybe", "serve.identify must be true or false"),
           ("serve.n_search=0", "serve.n_search must be an integer >= 1 or null"),
           ("serve.temperature=-1", "serve.temperature must be a number >= 0"),
           ("serve.preload=[extraversion:loud]", "serve.preload: personality term"),
           ("serve.max_tokens=abc", "serve.max_tokens must be an integer >= 1"),
           ("serve.max_tokens_limit=0", "serve.max_tokens_limit must be an integer >= 1, got 0"),
           ("serve.max_tokens=4096", "serve.max_tokens must be <= serve.max_tokens_limit "
                                     "(2048), got 4096"),
           ("serve.progress_interval=0", "serve.progress_interval must be a number > 0"),
           ("+serve.params.neuron.strength=-1", "serve.params.neuron: method.strength"),
           ("serve.log_level=loud", "unknown serve.log_level 'loud' (choose from: critical")]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="serve", overrides=["model=tiny_random"])
        s, host, port, _ = settings_from_cfg(cfg)
        assert (host, port, s.n_search, s.method, s.identify) == ("127.0.0.1", 8000, None,
                                                                  "neuron", True)
        assert (s.max_tokens, s.max_tokens_limit, s.cache_dir) == (128, 2048,
                                                                   str(cfg.paths.cache_dir))
        for override, msg in bad:
            cfg = compose(config_name="serve", overrides=["model=tiny_random", override])
            with pytest.raises(pkt.PktError, match=re.escape(msg)):
                settings_from_cfg(cfg)
    with pytest.raises(pkt.PktError, match="serve.port must be an integer 0..65535, got -1"):
        Settings(port=-1)  # the same line from Python


def test_cli_serves_and_reports_bad_config_in_one_line(tmp_path):
    env = {**os.environ, "PKT_CACHE": str(tmp_path), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pkt.serve", "model=tiny_random",
           f"paths.output_dir={tmp_path / 'out'}"]
    r = subprocess.run(cmd + ["serve.port=99999"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2 and lines == [
        "pkt: error: serve.port must be an integer 0..65535, got 99999"], r.stderr
    p = subprocess.Popen(cmd + ["serve.port=0", "serve.log_level=warning"], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert line.startswith("pkt: serving tiny_random on http://127.0.0.1:"), \
            line + p.stderr.read()
        url = line.split()[4]
        h = httpx.get(url + "/health", timeout=10).json()
        assert h["status"] == "ok" and h["model"] == "tiny_random"
        p.send_signal(signal.SIGINT)
        assert p.wait(30) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


# -- the embedded model, through the official openai client ----------------------------------

@pytest.mark.embedded
def test_embedded_openai_client_completion_stream_and_personality(tmp_path, monkeypatch):
    openai = pytest.importorskip("openai")
    monkeypatch.setenv("PKT_CACHE", str(tmp_path))
    monkeypatch.setenv("PKT_MODEL_CACHE", str(MODEL_CACHE))
    real = pkt.load_model("smollm2_135m")
    settings = Settings(cache_dir=str(tmp_path), n_search=6, search_max_new_tokens=24,
                        method="actadd")
    with Running(real, settings) as s:
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", timeout=300)
        assert "smollm2_135m" in [m.id for m in client.models.list().data]
        msgs = [{"role": "user", "content": "A friend invites you to a party where you know "
                                            "nobody. What do you do?"}]
        plain = client.chat.completions.create(model="smollm2_135m", messages=msgs,
                                               max_tokens=40)
        text = plain.choices[0].message.content
        assert len(text.split()) > 5 and plain.usage.completion_tokens <= 40
        stream = client.chat.completions.create(model="smollm2_135m", messages=msgs,
                                                max_tokens=40, stream=True)
        parts = [c.choices[0].delta.content or "" for c in stream if c.choices]
        assert len(parts) > 5 and "".join(parts) == text
        high = client.chat.completions.create(
            model="smollm2_135m", messages=msgs, max_tokens=40,
            extra_body={"personality": {"traits": {"extraversion": {"aspect": "high",
                                                                    "strength": 2.0}},
                                        "method": "actadd"}})
        low = client.chat.completions.create(model="smollm2_135m+extraversion:low:2@actadd",
                                             messages=msgs, max_tokens=40)
        t_high, t_low = high.choices[0].message.content, low.choices[0].message.content
        assert len({text, t_high, t_low}) == 3, (text, t_high, t_low)
        print("\nplain:", text, "\nhigh:", t_high, "\nlow:", t_low)


def test_fifo_lock_serves_in_arrival_order():
    from pkt.serve.lock import FifoLock

    lock, order = FifoLock(), []
    lock.acquire()
    gone = threading.Event()
    gone.set()
    assert lock.acquire(cancel=gone) is False and lock.acquire(timeout=0.05) is False

    def worker(i):
        with lock:
            order.append(i)

    threads = []
    for i in range(6):
        threads.append(threading.Thread(target=worker, args=(i,)))
        threads[-1].start()
        while lock.waiting < i + 1:
            time.sleep(0.005)
    lock.release()
    for t in threads:
        t.join(5)
    assert order == list(range(6)) and lock.waiting == 0 and not lock.locked()
