"""The server's decoding batch over HTTP (tiny model): the queue bound (429), a client that
leaves mid-batch, identification beside the batch, and the figures (/health, /metrics)."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from pkt.models import TinyRandomModel
from pkt.serve.personas import PersonalityCache
from pkt.serve.settings import Settings
from tests.test_serve import TINY, Q, Running


@pytest.fixture(scope="module")
def lm():
    return TinyRandomModel().load()


def body(**kw) -> dict:
    return {"model": "tiny_random", "messages": [{"role": "user", "content": Q}], **kw}


def wait_for(cond, what: str, limit: float = 30):
    t0 = time.time()
    while not cond():
        assert time.time() - t0 < limit, what
        time.sleep(0.02)


def test_queue_bound_gives_429_with_retry_after(lm, tmp_path):
    s = Settings(cache_dir=str(tmp_path), max_batch=1, max_waiting=1, **TINY)
    with Running(lm, s) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        with c.stream("POST", "/v1/chat/completions",
                      json=body(max_tokens=1500, ignore_eos=True, stream=True)) as r:
            lines = r.iter_lines()
            while not next(lines).startswith("data: "):
                pass  # the long request holds the batch's one row
            with ThreadPoolExecutor(1) as ex:
                waiting = ex.submit(srv.chat, max_tokens=4)
                wait_for(lambda: srv.healthy()["waiting"] == 1, "a request waiting")
                refused = srv.chat(max_tokens=4)
                assert refused.status_code == 429
                assert int(refused.headers["retry-after"]) >= 1
                err = refused.json()["error"]
                assert err["code"] == "queue_full" and err["type"] == "rate_limit_error"
                assert "serve.max_waiting=1" in err["message"]
                r.close()  # the long request goes away: the waiting one gets its row
                assert waiting.result(60).status_code == 200
        h = srv.healthy()
        assert h["rejected"] == 1 and h["waiting"] == 0 and h["cancelled"] == 1


def test_a_client_leaving_mid_batch_changes_no_other_answer(lm, tmp_path):
    s = Settings(cache_dir=str(tmp_path), **TINY)
    with Running(lm, s) as srv:
        others = [dict(max_tokens=40, ignore_eos=True),
                  dict(model="tiny_random+extraversion:high:1.5", max_tokens=30),
                  dict(model="tiny_random+openness:low@actadd", max_tokens=35, ignore_eos=True)]
        alone = [srv.text(**o) for o in others]  # one at a time (identifies first)
        started = srv.healthy()["batch"]["decode_steps"]

        def leave():
            with httpx.Client(base_url=srv.url, timeout=60) as c:
                with c.stream("POST", "/v1/chat/completions",
                              json=body(max_tokens=1500, ignore_eos=True, stream=True)) as r:
                    got = 0
                    for line in r.iter_lines():
                        got += line.startswith("data: ")
                        if got >= 8:
                            return

        with ThreadPoolExecutor(4) as ex:
            gone = ex.submit(leave)
            together = list(ex.map(lambda o: srv.text(**o), others))
            gone.result(60)
        assert together == alone
        wait_for(lambda: srv.healthy()["batch"]["rows"] == 0, "the batch empties")
        h = srv.healthy()
        assert h["cancelled"] == 1 and h["errors"] == 0
        # the four shared forward passes: fewer steps than their answers' lengths together
        assert h["batch"]["decode_steps"] - started < 40 + 30 + 35 + 1500


def test_identification_runs_beside_the_batch(lm, tmp_path, monkeypatch):
    """While a trait is being identified for one request, the others decode to the end."""
    gate, building = threading.Event(), threading.Event()
    real = PersonalityCache._build

    def slow(self, spec, progress):
        if spec.profile:  # an identification that takes until the test says so
            building.set()
            assert gate.wait(60)
        return real(self, spec, progress)

    monkeypatch.setattr(PersonalityCache, "_build", slow)
    with Running(lm, Settings(cache_dir=str(tmp_path), **TINY)) as srv:
        with ThreadPoolExecutor(1) as ex:
            new_trait = ex.submit(srv.chat, model="tiny_random+openness:high", max_tokens=5)
            assert building.wait(30)
            r = srv.chat(max_tokens=40, ignore_eos=True)  # decodes while the build waits
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 40
            assert not new_trait.done() and srv.healthy()["waiting"] == 1
            gate.set()
            done = new_trait.result(60)
        assert done.status_code == 200 and done.headers["x-pkt-identified"] == "openness"
        # built on the server's copy of the model: the serving model carries no hook
        assert srv.service.builder().model is not lm.model
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in lm.model.modules())


def test_health_and_prometheus_figures(lm, tmp_path):
    with Running(lm, Settings(cache_dir=str(tmp_path), **TINY)) as srv:
        for _ in range(3):
            assert srv.chat(max_tokens=6, ignore_eos=True).status_code == 200
        b = srv.healthy()["batch"]
        assert b["rows"] == 0 and b["max_rows"] == 16 and b["recent_requests"] == 3
        assert 0 < b["ttft_s"]["p50"] <= b["latency_s"]["p50"] <= b["latency_s"]["p95"]
        assert b["tokens_per_s"] > 0 and b["decode_steps"] == 15
        m = srv.http.get("/metrics")
        assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
        lines = m.text.splitlines()
        assert "# TYPE pkt_batch_rows gauge" in lines and "pkt_batch_rows 0" in lines
        assert "pkt_completed_total 3" in lines and "pkt_completion_tokens_total 18" in lines
        assert any(x.startswith('pkt_request_latency_seconds{quantile="0.95"} ') for x in lines)
        for x in lines:  # every sample line is "name[labels] number"
            if not x.startswith("#"):
                float(x.rsplit(" ", 1)[1])
