"""A request waiting for identification gets progress instead of silence: a streaming one
SSE comments (``: identifying openness (high: 0/24, low: 0/24 answers), 1 s``) before its
first chunk, one that needs another trait queued behind it too; ``/health`` shows ``identifying`` while it runs;
the log has a progress line every ``serve.progress_interval``. A real identification on the
tiny random model (24 search questions, 48-token answers, through the forked workers when
there are two cores), its build held open at the end until the clients saw progress, so the
test does not depend on the machine's speed."""

from __future__ import annotations

import json
import logging
import re
import threading
import time

import pytest
import torch

from pkt.models import TinyRandomModel
from pkt.serve import Settings
from pkt.serve.progress import Identifying
from tests.test_serve import Q, Running

ANSWERS = r"((high|low): \d+/24(, )?)+ answers"


@pytest.fixture(scope="module")
def lm():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield TinyRandomModel().load()
    torch.set_num_threads(n)


def hold_builds(service) -> threading.Event:
    """Personality builds finish (identify) and then wait for the returned gate (30 s at
    most), as a slower identification would."""
    gate = threading.Event()
    real = service.personas._build

    def held(spec, progress):
        out = real(spec, progress)
        if spec.profile:
            gate.wait(30)
        return out

    service.personas._build = held
    return gate


def read_stream(srv, body: dict, lines: list, on_line=None):
    with srv.http.stream("POST", "/v1/chat/completions",
                         json={"messages": [{"role": "user", "content": Q}], "max_tokens": 8,
                               "stream": True, **body}) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line:
                continue
            lines.append(line)
            if on_line:
                on_line(line)
        return r.headers


def test_stream_waiting_for_identification_gets_progress(lm, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="pkt.serve")
    settings = Settings(cache_dir=str(tmp_path), n_search=24, search_max_new_tokens=48,
                        progress_interval=0.2, params={"neuron": {"strength": 1.0}})
    with Running(lm, settings) as s:
        gate = hold_builds(s.service)
        seen, done = [], threading.Event()

        def poll():
            while not done.is_set():
                ident = s.healthy()["identifying"]
                if ident:
                    seen.append(ident)
                time.sleep(0.05)

        poller = threading.Thread(target=poll)
        poller.start()
        queued: list[str] = []
        # a request for another trait waits for the build (the plain model would not)
        behind = threading.Thread(target=read_stream, args=(s, {"model": "tiny_random+extraversion:high"}, queued,
                                                            lambda line: gate.set()
                                                            if line.startswith(": waiting")
                                                            else None))
        lines: list[str] = []

        def on_line(line):  # progress with a count: a second client queues behind it
            if re.search(ANSWERS, line) and not behind.is_alive() and not queued:
                behind.start()

        t0 = time.time()
        headers = read_stream(s, {"model": "tiny_random+openness:high"}, lines, on_line)
        if behind.ident:
            behind.join(30)
        done.set()
        poller.join(10)
        after = s.healthy()

    # the stream: comments, then the chunks; the identified trait in the first chunk
    first = next(i for i, x in enumerate(lines) if x.startswith("data: "))
    comments = [x for x in lines[:first] if x.startswith(":")]
    assert not any(x.startswith(":") for x in lines[first:])
    assert comments and all(re.fullmatch(r": identifying openness( \(.+\))?, \d+ s", c)
                            for c in comments), comments
    assert any(re.search(ANSWERS, c) for c in comments), comments
    assert headers["x-pkt-identifying"] == "openness" and "x-pkt-identified" not in headers
    chunks = [json.loads(x[6:]) for x in lines[first:] if x.startswith("data: {")]
    assert chunks[0]["personality"]["identified"] == ["openness"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and lines[-1] == "data: [DONE]"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    # the queued request: told what it waits for, then its own answer
    q_first = next(i for i, x in enumerate(queued) if x.startswith("data: "))
    assert queued[0].startswith(": waiting for the model: identifying openness")
    assert q_first > 0 and queued[-1] == "data: [DONE]"
    # /health while it ran, and after
    assert all(x["trait"] in ("openness", "extraversion") for x in seen)
    seen = [x for x in seen if x["trait"] == "openness"]  # then the queued one's build
    assert seen and all(x["method"] == "neuron" and
                        x["personality"] == "openness:high@neuron" for x in seen)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", seen[0]["started"])
    assert any(x["progress"] and re.fullmatch(ANSWERS, x["progress"]) for x in seen), seen
    assert seen[-1]["elapsed"] <= time.time() - t0
    assert after["identifying"] is None and after["identified"] == [
        {"trait": "openness", "method": "neuron"}, {"trait": "extraversion", "method": "neuron"}]
    # the log: a progress line every progress_interval
    logged = [r.getMessage() for r in caplog.records if r.name == "pkt.serve" and
              r.getMessage().startswith("identifying openness")]
    assert len(logged) >= 2 and any(re.search(ANSWERS, m) for m in logged), logged
    # the same answer once cached, without progress
    with Running(lm, settings) as s:
        lines = []
        headers = read_stream(s, {"model": "tiny_random+openness:high"}, lines)
        assert not any(x.startswith(":") for x in lines) and "x-pkt-identifying" not in headers
        assert text == "".join(json.loads(x[6:])["choices"][0]["delta"].get("content", "")
                               for x in lines if x.startswith("data: {"))


def test_identifying_words():
    st = Identifying("openness:high+neuroticism:low@neuron", ["openness", "neuroticism"],
                     "neuron")
    assert st.text() == "openness, neuroticism" and st.step() is None
    st.update("a", "Neuroticism", "persona answers (high)", 96, 227)
    assert st.text() == "neuroticism (high: 96/227 answers)"
    st.update("b", "Neuroticism", "persona answers (low)", 0, 227)
    assert st.text() == "neuroticism (high: 96/227, low: 0/227 answers)"
    st.note = "strength=auto: 2.50 -> MC ratio 0.984"
    assert st.snapshot()["progress"] == "strength=auto: 2.50 -> MC ratio 0.984"
    st.update("c", "Openness", "activations (high)", 3, 12)
    assert st.text() == "openness (activations high: 3/12)" and st.visible
