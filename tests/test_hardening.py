"""Bad config values, neuron files and judge endpoints: each one clear ``pkt: error:`` line
before any work (or a run that goes on with a warning), nothing on disk that looks like a
result. Most checks run in-process on the composed config (pkt.validation); one run of the
CLI per kind of failure shows the line a user gets."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import pkt.run as runner
from pkt.cli import config_groups
from pkt.dataset import load_bench
from pkt.errors import PktError
from pkt.eval import Evaluation, check_judged
from pkt.eval.judge import OpenAIJudge
from pkt.generation import GenConfig
from pkt.methods import registry
from pkt.neurons.release import import_release
from pkt.validation import validate
from tests.conftest import (
    MODEL_CACHE,
    ROOT,
    LocalServer,
    compose_cfg,
    openness_context,
    read_jsonl,
    run_dirs,
    run_pkt,
    stderr_lines,
)

TINY = ["model=tiny_random", "gen.max_new_tokens=6", "search_gen.max_new_tokens=8",
        "data.n_search=6", "data.n_test=3", "eval=none", "logger=none", "trait=openness"]
METHODS = config_groups()["method"]
MODELS = config_groups()["model"]


def check(overrides: list[str]) -> None:
    validate(compose_cfg(["model=tiny_random", *overrides]))


def results_left(tmp_path: Path) -> list[Path]:
    """Files of a run other than Hydra's own (.hydra/, run.log) and a failed run's
    error.txt (its one error line)."""
    out = tmp_path / "out"
    return [p for p in out.rglob("*") if p.is_file()
            and ".hydra" not in p.relative_to(out).parts
            and p.name not in ("run.log", "error.txt")]


def one_error(r) -> str:
    lines = stderr_lines(r)
    assert r.returncode != 0 and len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith("pkt: error: ")
    return lines[0]


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connections are refused
    return port


# ---------------------------------------------------------------------------------------
# every shipped config passes as it is


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("method", METHODS)
def test_every_method_and_model_config_validates(method, model):
    validate(compose_cfg([f"model={model}", f"method={method}"]))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("experiment", config_groups()["experiment"])
def test_every_experiment_validates(experiment, method):
    validate(compose_cfg([f"experiment={experiment}", f"method={method}"]))


@pytest.mark.parametrize("judge", ["openai", "local"])
def test_judge_configs_validate(judge):
    extra = (["eval.judge.preflight=false"] if judge == "openai"
             else ["eval.judge.path=/some/judge"])
    validate(compose_cfg(["model=tiny_random", f"eval/judge={judge}", *extra]))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_config_instantiates_on_tiny(method, tiny, tmp_path):
    cfg = compose_cfg(["model=tiny_random", f"method={method}"])
    validate(cfg)
    ctx = openness_context(tiny, ["Q?"], {"high": ["h"], "low": ["l"]}, tmp_path / "run",
                           GenConfig.from_cfg(cfg.gen))
    node = OmegaConf.to_container(cfg.method, resolve=True)
    m = registry.method_class(node.pop("name"))(ctx, **node)
    assert m.name == cfg.method.name


def test_valid_values_of_every_shape_pass(tmp_path):
    check(["method.k_min=600", "method.k_min=0.02", f"method.neurons_from={tmp_path}",
           "method.strength=2", "method.strength=auto", "method.keep_prob=1"])
    check(["method=actadd", "method.layers=[1,0]", "method.layers=1", "method.coefficient=-3"])
    check(["method=lora", "method.precision=16", "method.grad_clip=null", "method.max_steps=-1",
           "method.alpha=8", "method.precision=bf16-mixed", "method.devices=2",
           "method.strategy=ddp", "method.dropout=0"])
    check(["data.n_search=null", "data.n_test=null", "gen.repetition_penalty=1",
           "search_gen.batch_size=1"])


# ---------------------------------------------------------------------------------------
# bad values: in-process


@pytest.mark.parametrize("overrides,msg", [
    (["method.strength=abc"], "method.strength must be a finite number >= 0 or 'auto' or null, got 'abc'"),
    (["method.strength=true"], "method.strength must be a finite number >= 0 or 'auto' or null, got true"),
    (["method.strength=inf"], "method.strength must be a finite number >= 0 or null, got inf"),
    (["method.strength=nan"], "method.strength must be a finite number >= 0 or null, got nan"),
    (["method.strength=-1"], "method.strength must be a finite number >= 0 or null, got -1"),
    (["method.keep_prob=0"], "method.keep_prob must be a finite number in (0, 1], got 0"),
    (["method.keep_prob=1.5"], "method.keep_prob must be a finite number in (0, 1], got 1.5"),
    (["method.k_min=0"], "method.k_min must be a finite number > 0 or null, got 0"),
    (["method.diff_threshold=nan"], "method.diff_threshold must be a finite number, got nan"),
    (["method.selection=best"], "unknown method.selection 'best' (choose from: npti, effect_size)"),
    (["method.strength_grid=[1,-1]"], "method.strength_grid[1] must be a finite number >= 0, "
                                      "got -1"),
    (["method.neurons_from=/no/such/folder"], "method.neurons_from: folder not found: /no/such"),
    (["method=actadd", "method.coefficient=nan"], "method.coefficient must be a finite number"),
    (["method=actadd", "method.position=first"],
     "unknown method.position 'first' (choose from: mean, last)"),
    (["method=actadd", "method.layers=[]"], "method.layers must be a non-empty list, got []"),
    (["method=lora", "method.lr=0"], "method.lr must be a finite number > 0, got 0"),
    (["method=lora", "method.dropout=1"], "method.dropout must be a finite number in [0, 1), got 1"),
    (["method=lora", "method.max_steps=0"], "method.max_steps must be an integer >= 1 or -1, got 0"),
    (["method=lora", "method.precision=fp8"], "unknown method.precision 'fp8' (choose from: "),
    (["method=lora", "method.devices=[a]"], "method.devices must be auto, a device count in [1, 1024]"),
    (["method=lora", "method.strategy=horovod"], "unknown method.strategy 'horovod' (choose from"),
    (["eval.capability_n_mc=0"], "eval.capability_n_mc must be an integer >= 1 or null, got 0"),
    (["search_gen.workers=3"], "search_gen.workers must be 1, 2 or auto, got 3"),
    (["search_gen.workers=many"], "search_gen.workers must be 1, 2 or auto, got 'many'"),
    (["+gen.workers=2"], "unknown key gen.workers (valid: max_new_tokens, batch_size, "
                          "repetition_penalty, dtype)"),
    (["eval.capability_n_mc=-5"], "eval.capability_n_mc must be an integer >= 1 or null, got -5"),
    (["eval.trait_scorer=judge"], "eval.trait_scorer=judge needs a judge"),
    (["eval/judge=openai", "eval.judge.timeout=0"],
     "eval.judge.timeout must be a finite number in (0, 86400], got 0"),
    (["eval/judge=openai", "eval.judge.timeout=1e30"],
     "eval.judge.timeout must be a finite number in (0, 86400], got 1e+30"),
    (["eval/judge=openai", "eval.judge.concurrency=0"],
     "eval.judge.concurrency must be an integer >= 1, got 0"),
    (["eval/judge=openai", "eval.judge.preflight=false", "eval.judge.base_url=localhost:8000"],
     "eval.judge.base_url must be an http(s) URL, got 'localhost:8000'"),
    (["eval/judge=local", "eval.judge.path=/j", "eval.judge.device=gpu0"],
     "eval.judge.device must be auto or a torch device"),
    (["method.k_min=lots"], "method.k_min must be a finite number > 0 or null, got 'lots'"),
    (["method.deactivate=yes"], "method.deactivate must be true or false, got 'yes'"),
    (["method.neurons_from=3"], "method.neurons_from must be a string or null, got 3"),
    (["method=actadd", "method.layers=[a]"], "method.layers[0] must be an integer, got 'a'"),
    (["method=actadd", "method.coefficient=big"], "method.coefficient must be a finite number"),
    (["method=actadd", "method.batch_size=0"], "method.batch_size must be an integer >= 1 or null, got 0"),
    (["method=lora", "method.batch_size=-2"], "method.batch_size must be an integer >= 1, got -2"),
    (["method=lora", "method.rank=8.5"], "method.rank must be an integer in [1, 65536], got 8.5"),
    (["method=lora", "method.rank=1000000000000"], "method.rank must be an integer in [1, 65536]"),
    (["method=lora", "method.target_modules=[1]"], "method.target_modules[0] must be a non-empty string, got 1"),
    (["method=prompt", "method.variant=1"], "unknown prompt variant 1 (choose from: simple, p2)"),
    (["gen.batch_size=0"], "gen.batch_size must be an integer in [1, 4096], got 0"),
    (["gen.batch_size=-4"], "gen.batch_size must be an integer in [1, 4096], got -4"),
    (["gen.batch_size=2.5"], "gen.batch_size must be an integer in [1, 4096], got 2.5"),
    (["gen.batch_size=many"], "gen.batch_size must be an integer in [1, 4096], got 'many'"),
    (["search_gen.batch_size=0"], "search_gen.batch_size must be an integer in [1, 4096], got 0"),
    (["gen.max_new_tokens=1000000000000"],
     "gen.max_new_tokens must be an integer in [1, 32768], got 1000000000000"),
    (["gen.max_new_tokens=0"], "gen.max_new_tokens must be an integer in [1, 32768], got 0"),
    (["search_gen.max_new_tokens=-1"], "search_gen.max_new_tokens must be an integer in [1, 32768], got -1"),
    (["gen.repetition_penalty=0"], "gen.repetition_penalty must be a finite number > 0, got 0"),
    (["gen.repetition_penalty=nan"], "gen.repetition_penalty must be a finite number > 0, got nan"),
    (["+gen.temperature=0.7"], "unknown key gen.temperature (valid: max_new_tokens, batch_size, "
                               "repetition_penalty, dtype)"),
    (["data.n_test=0"], "data.n_test must be an integer >= 1 or null, got 0"),
    (["data.n_search=-3"], "data.n_search must be an integer >= 1 or null, got -3"),
    (["data.n_search=1.5"], "data.n_search must be an integer >= 1 or null, got 1.5"),
    (["seed=abc"], "seed must be an integer, got 'abc'"),
    (["eval.batch_size=0"], "eval.batch_size must be an integer >= 1, got 0"),
    (["+eval.colour=red"], "unknown key eval.colour (valid: trait_scorer, judge"),
    (["+model.layers=3"], "unknown key model.layers (valid: num_layers, hidden_size"),
    (["+data.split=x"], "unknown key data.split (valid: path, n_search, n_test, seed)"),
    (["eval/judge=local"], "eval.judge.path must be set"),
    (["eval/judge=local", "eval.judge.path=/j", "eval.judge.batch_size=0"],
     "eval.judge.batch_size must be an integer >= 1, got 0"),
    (["eval/judge=openai", "eval.judge.timeout=soon"],
     "eval.judge.timeout must be a finite number in (0, 86400], got 'soon'"),
    (["eval/judge=openai", "eval.judge.preflight=maybe"],
     "eval.judge.preflight must be true or false, got 'maybe'"),
])
def test_bad_value_is_named(overrides, msg):
    with pytest.raises(PktError) as ei:
        check(overrides)
    assert str(ei.value).startswith(msg), str(ei.value)
    assert "\n" not in str(ei.value)


@pytest.mark.parametrize("cuda,devices,ok", [
    (0, "2", True), (0, "auto", True), (0, "[0]", False), (0, "-1", False), (0, "'0,1'", False),
    (2, "[0,1]", True), (2, "'0,1'", True), (2, "-1", True), (2, "2", True), (2, "[2]", False),
    (2, "3", False), (2, "[a]", False), (2, "0", False), (2, "[]", False),
])
def test_lora_devices_against_this_machine(monkeypatch, cuda, devices, ok):
    """Lightning checks devices only when training starts (after identification)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
    args = ["method=lora", f"method.devices={devices}"]
    if ok:
        check(args)
    else:
        with pytest.raises(PktError, match=r"^method\.devices"):
            check(args)


@pytest.mark.parametrize("method,typo,valid", [
    ("neuron", "strenght", "strength, k_min, diff_threshold, keep_prob, deactivate, "
                           "include_prompt, recompute, neurons_from, search_gen"),
    ("actadd", "layer", "layers, coefficient, position, include_prompt, recompute, batch_size"),
    ("lora", "learning_rate", "rank, alpha, dropout, target_modules, lr, weight_decay"),
    ("prompt", "varient", "variant"),
])
def test_unknown_method_key_lists_the_valid_ones(method, typo, valid):
    with pytest.raises(PktError) as ei:
        check([f"method={method}", f"+method.{typo}=1"])
    msg = str(ei.value)
    assert msg.startswith(f"unknown key method.{typo} for method {method} (valid: {valid}")
    assert "ctx" not in msg


def test_gen_error_names_the_key_the_user_set():
    # method.batch_size and search_gen.batch_size interpolate gen.batch_size
    with pytest.raises(PktError, match=r"^gen\.batch_size must be"):
        check(["method=actadd", "gen.batch_size=0"])


def test_data_path_that_is_a_file(tmp_path):
    f = tmp_path / "Openness.json"
    f.write_text("{}\n")
    for call in (lambda: load_bench(str(f), "openness"),
                 lambda: check([f"data.path={f}"])):
        with pytest.raises(PktError) as ei:
            call()
        assert str(ei.value).startswith(f"data folder {f} is a file, not a folder")
    with pytest.raises(PktError, match="data folder not found"):
        check([f"data.path={tmp_path / 'nope'}"])


# ---------------------------------------------------------------------------------------
# release-format neuron files


def _release(folder: Path, high_rows: dict) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "Openness_dict.json").write_text(json.dumps(high_rows))
    (folder / "Openness_reversed_dict.json").write_text(json.dumps({"1": [[1, 3, 0.2, 0.4, 1.0]]}))
    return folder / "Openness_dict.json"


@pytest.mark.parametrize("rows,msg", [
    ({"0": [[0, 5, 0.3, 0.5, 1.0], [0, "abc", 0.2, 0.4, 1.0]]},
     "layer '0', row 2: index 'abc' is not a whole number"),
    ({"0": [["zero", 5, 0.3, 0.5, 1.0]]}, "layer '0', row 1: layer 'zero' is not a whole number"),
    ({"0": [[0, 2.5, 0.3, 0.5, 1.0]]}, "layer '0', row 1: index 2.5 is not a whole number"),
    ({"0": [[0, True, 0.3, 0.5, 1.0]]}, "layer '0', row 1: index True is not a whole number"),
    ({"0": [[0, 5, "high", 0.5, 1.0]]}, "layer '0', row 1: diff 'high' is not a finite number"),
    ({"0": [[0, 5, 0.3, None, 1.0]]}, "layer '0', row 1: prob None is not a finite number"),
    ({"abc": [[0, 5, 0.3, 0.5, 1.0]]}, "layer key 'abc' is not a layer number"),
    ({"1": [[0, 5, 0.3, 0.5, 1.0]]}, "layer '1', row 1: row [0, 5, 0.3, 0.5, 1.0] is filed under"),
])
def test_release_rows_are_checked(tmp_path, rows, msg):
    f = _release(tmp_path / "rel", rows)
    with pytest.raises(PktError) as ei:
        import_release(tmp_path / "rel", "Openness", 2, 128)
    assert str(ei.value).startswith(f"{f}: {msg}"), str(ei.value)


def test_release_numeric_strings_still_read(tmp_path):
    _release(tmp_path / "rel", {"0": [["0", "5", "0.3", 0.5, 1]]})
    sets = import_release(tmp_path / "rel", "Openness", 2, 128)
    assert sets["high"].index.tolist() == [5] and sets["high"].layer.tolist() == [0]


# ---------------------------------------------------------------------------------------
# judge endpoints: real local HTTP servers


class Endpoint(LocalServer):
    """A local server: ``chat(n)`` gives (status, content type, body) of the n-th chat request
    (0-based), ``models`` that of GET .../models."""

    HTML = (200, "text/html", b"<html><body>Welcome to nginx!</body></html>")

    def __init__(self, chat=None, models=None):
        self.chat = chat or (lambda n: self.HTML)
        self.models = models or (lambda: self.HTML)
        self.posts = 0
        self.gets: list[str] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, status, ctype, body):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                with outer.lock:
                    outer.gets.append(self.path)
                self.reply(*outer.models())

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer.lock:
                    n = outer.posts
                    outer.posts += 1
                self.reply(*outer.chat(n))

        self.serve(Handler)



def rating(n: int):
    body = {"choices": [{"message": {"role": "assistant", "content": "Clear. Rating: [[3]]"}}]}
    return 200, "application/json", json.dumps(body).encode()


def models_ok():
    return 200, "application/json", b'{"object": "list", "data": [{"id": "judge"}]}'


def _judge(url: str, **kw) -> OpenAIJudge:
    return OpenAIJudge(model="judge", base_url=url, max_retries=1, timeout=5.0,
                       api_key_env="PKT_TEST_NO_SUCH_KEY", **kw)


ITEMS = [{"question": f"Q{i}?", "response": f"answer {i}"} for i in range(4)]


def test_check_endpoint_down_is_an_error():
    port = free_port()
    with pytest.raises(PktError) as ei:
        _judge(f"http://127.0.0.1:{port}/v1").check_endpoint()
    msg = str(ei.value)
    assert msg.startswith(f"judge endpoint http://127.0.0.1:{port}/v1 is unreachable "
                          f"(connection refused)")
    assert "eval.judge.preflight=false" in msg


def test_check_endpoint_up(caplog):
    with Endpoint(models=models_ok) as ep, caplog.at_level(logging.WARNING):
        _judge(ep.base_url).check_endpoint()
    assert ep.gets == ["/v1/models"] and ep.posts == 0 and not caplog.records


@pytest.mark.parametrize("status", [404, 500])
def test_check_endpoint_listening_but_odd_is_a_warning(caplog, status):
    with Endpoint(models=lambda: (status, "text/plain", b"no")) as ep, \
            caplog.at_level(logging.WARNING):
        _judge(ep.base_url).check_endpoint()
    assert f"answered HTTP {status} to GET /models" in caplog.text


def test_check_endpoint_html_is_a_warning(caplog):
    with Endpoint() as ep, caplog.at_level(logging.WARNING):
        _judge(ep.base_url).check_endpoint()
    assert "not JSON" in caplog.text


def test_check_endpoint_key_refused_is_an_error():
    with Endpoint(models=lambda: (401, "application/json", b'{"error": "bad key"}')) as ep:
        with pytest.raises(PktError, match=r"HTTP 401 to GET /models \(check the API key in "
                                           r"\$PKT_TEST_NO_SUCH_KEY"):
            _judge(ep.base_url).check_endpoint()


def test_validate_checks_the_endpoint_unless_told_not_to():
    port = free_port()
    base = ["eval/judge=openai", f"eval.judge.base_url=http://127.0.0.1:{port}/v1"]
    with pytest.raises(PktError, match="is unreachable"):
        check(base)
    check([*base, "eval.judge.preflight=false"])


def test_html_for_every_request_is_one_error():
    with Endpoint() as ep:
        with pytest.raises(PktError) as ei:
            _judge(ep.base_url).rate(ITEMS, "fluency")
    assert str(ei.value).startswith(f"judge endpoint {ep.base_url} failed on every request "
                                    f"(4 of 4: malformed response)")
    assert ep.posts == 4


def test_no_rating_for_any_answer_fails_and_some_missing_warns(caplog):
    ok = {"rating": 3.0, "raw": "Rating: [[3]]", "error": None, "cached": False}
    bad = {"rating": None, "raw": "fine", "error": "no rating in judge output", "cached": False}
    with pytest.raises(PktError, match=r"no trait rating for any of the 2 answers \(no rating"):
        check_judged([bad, bad], "trait")
    with caplog.at_level(logging.WARNING):
        check_judged([ok, bad, ok], "fluency")
    assert "1 of 3 answers got no fluency rating" in caplog.text
    check_judged([ok], "trait")
    assert Evaluation(judge=object()).trait_scorer == "judge"


# ---------------------------------------------------------------------------------------
# the CLI: one line, before any work, nothing that looks like a result


def test_cli_bad_strength_is_one_line_before_the_model(tmp_path):
    r = run_pkt(["method=neuron", *TINY, "method.strength=abc"], tmp_path)
    assert one_error(r) == ("pkt: error: method.strength must be a finite number >= 0 or "
                            "'auto' or null, got 'abc'")
    assert "test questions" not in r.stdout  # logged once data and model are loaded
    assert not results_left(tmp_path)
    (err,) = (tmp_path / "out").rglob("error.txt")  # the failed run says why, in one line
    assert "pkt: error: " + err.read_text().strip() == one_error(r)


@pytest.mark.parametrize("bad", ["gen.batch_size=0", "search_gen.max_new_tokens=-1"])
def test_cli_bad_budget_leaves_no_neurons(tmp_path, bad):
    r = run_pkt(["method=neuron", *TINY, bad], tmp_path)
    assert one_error(r).startswith(f"pkt: error: {bad.split('=')[0]} must be an integer in [1, ")
    assert not results_left(tmp_path) and not list((tmp_path / "out").rglob("neurons"))


def test_cli_unknown_method_key(tmp_path):
    r = run_pkt(["method=neuron", *TINY, "+method.strenght=1"], tmp_path)
    assert one_error(r).startswith("pkt: error: unknown key method.strenght for method neuron "
                                   "(valid: strength, k_min, ")
    assert not results_left(tmp_path)


def test_cli_release_with_bad_index(tmp_path):
    f = _release(tmp_path / "published", {"0": [[0, "abc", 0.3, 0.5, 1.0]]})
    r = run_pkt(["method=neuron", *TINY, f"method.neurons_from={f.parent}"], tmp_path)
    assert one_error(r).startswith(f"pkt: error: {f}: layer '0', row 1: index 'abc' is not a "
                                   f"whole number")
    assert not run_dirs(tmp_path)


JUDGED = [a for a in TINY if a != "eval=none"] + ["method=base", "eval/judge=openai",
                                                   "eval.judge.max_retries=1",
                                                   "eval.capability=false"]


def test_cli_dead_judge_is_found_before_any_work(tmp_path):
    port = free_port()
    r = run_pkt([*JUDGED, f"eval.judge.base_url=http://127.0.0.1:{port}/v1"], tmp_path)
    line = one_error(r)
    assert line.startswith(f"pkt: error: judge endpoint http://127.0.0.1:{port}/v1 is "
                           f"unreachable (connection refused); checked before loading")
    assert not results_left(tmp_path)


def test_cli_dead_judge_without_preflight_still_keeps_generations(tmp_path):
    port = free_port()
    r = run_pkt([*JUDGED, f"eval.judge.base_url=http://127.0.0.1:{port}/v1",
                 "eval.judge.preflight=false"], tmp_path)
    errors = [x for x in stderr_lines(r) if "error" in x.lower() or "Traceback" in x]
    assert r.returncode != 0 and len(errors) == 1 and "unreachable" in errors[0], r.stderr
    (d,) = run_dirs(tmp_path)
    assert len(read_jsonl(d / "generations.jsonl")) == 3
    assert "unreachable" in json.loads((d / "metrics.json").read_text())["evaluation_error"]


def test_cli_judge_answering_html_fails_loudly(tmp_path):
    with Endpoint() as ep:
        r = run_pkt([*JUDGED, f"eval.judge.base_url={ep.base_url}"], tmp_path)
    errors = [x for x in stderr_lines(r) if "error" in x.lower() or "Traceback" in x]
    assert r.returncode != 0 and len(errors) == 1, r.stderr[-3000:]
    assert errors[0] == stderr_lines(r)[-1]
    assert errors[0].startswith(f"pkt: error: judge endpoint {ep.base_url} failed on every "
                                f"request (")
    assert "malformed response" in errors[0]
    assert "not JSON" in r.stdout  # the preflight saw HTML on GET /models: a warning only
    (d,) = run_dirs(tmp_path)
    assert len(read_jsonl(d / "generations.jsonl")) == 3
    m = json.loads((d / "metrics.json").read_text())
    assert "failed on every request" in m["evaluation_error"] and m["n"] == 3


def test_cli_judge_failing_on_some_answers_warns_with_counts(tmp_path):
    with Endpoint(chat=lambda n: Endpoint.HTML if n == 0 else rating(n), models=models_ok) as ep:
        r = run_pkt([*JUDGED, f"eval.judge.base_url={ep.base_url}",
                     "eval.judge.concurrency=1"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    (d,) = run_dirs(tmp_path)
    m = json.loads((d / "metrics.json").read_text())
    log_text = (d / "run.log").read_text()
    found = re.search(r"judge: (\d) of 3 answers got no trait rating \(malformed response\)",
                      log_text)
    assert found, log_text
    failed = int(found.group(1))
    assert 1 <= failed < 3 and m["judge_errors"] == failed
    assert m["trait_score"]["n"] == 3 - failed and m["trait_score"]["mean"] == 3.0


# ---------------------------------------------------------------------------------------
# Ctrl-C: one line, exit status 130, checkpoints kept, the tracker finished

SLOW_SEARCH = ["model=tiny_random", "method=neuron", "method.strength=1", "trait=openness",
               "logger=none", "eval=none",
               "data.n_search=24", "data.n_test=2", "gen.max_new_tokens=4",
               "search_gen.max_new_tokens=48", "search_gen.batch_size=4", "search_gen.workers=1"]


def _start(tmp_path: Path, args: list[str]) -> tuple[subprocess.Popen, list[bytes]]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PKT_CACHE=str(tmp_path / "cache"),
               PKT_MODEL_CACHE=str(MODEL_CACHE))
    p = subprocess.Popen([sys.executable, "-m", "pkt.run", f"paths.output_dir={tmp_path / 'out'}",
                          *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE,
                         # a user's Ctrl-C reaches pkt even when the tests run as a
                         # background job, which inherits SIGINT ignored
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    chunks: list[bytes] = []

    def read():
        while data := os.read(p.stderr.fileno(), 4096):
            chunks.append(data)

    threading.Thread(target=read, daemon=True).start()
    return p, chunks


def test_ctrl_c_during_identification_is_one_line_and_the_next_run_resumes(tmp_path):
    p, chunks = _start(tmp_path, SLOW_SEARCH)
    deadline = time.monotonic() + 60
    # the first chunk (2 batches of 4) of persona answers is checkpointed: then Ctrl-C
    while b"8/24" not in b"".join(chunks) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert p.poll() is None, b"".join(chunks).decode()[-3000:]
    p.send_signal(signal.SIGINT)
    rc = p.wait(timeout=60)
    time.sleep(0.2)  # the reader thread drains the pipe
    err = b"".join(chunks).decode()
    lines = [x for x in err.splitlines() if x.strip()]  # tqdm's \r splits too
    assert rc == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    hits = [x for x in lines if "pkt: error:" in x]
    assert len(hits) == 1 and hits[0] == lines[-1], err[-3000:]
    assert hits[0].startswith("pkt: error: interrupted: kept ")
    assert "persona answers (high)" in err and "run the same command again to resume" in hits[0]
    assert not run_dirs(tmp_path)  # no metrics.json: nothing that looks like a result
    # the same command again: resumes after the kept chunks and finishes
    p, chunks = _start(tmp_path, SLOW_SEARCH)
    assert p.wait(timeout=120) == 0, b"".join(chunks).decode()[-3000:]
    (d,) = run_dirs(tmp_path)
    log_text = (d / "run.log").read_text()
    assert re.search(r"resuming identification \(high\): \d+ of 24 persona answers kept",
                     log_text), log_text
    m = json.loads((d / "metrics.json").read_text())
    assert m["neuron_stats_cached"] is False and m["search_tokens_high"] > 0
    assert not list((tmp_path / "cache" / "artifacts" / "partial").glob("*"))


class _Tracker:
    def __init__(self):
        self.finished = []

    def __getattr__(self, name):
        return lambda *a, **k: None

    def finish(self, exit_code=0):
        self.finished.append(exit_code)


def _hydra_cfg(tmp_path: Path, overrides: list[str]):
    from hydra.core.hydra_config import HydraConfig

    cfg = compose_cfg(overrides)
    cfg.hydra.runtime.output_dir = str(tmp_path / "run")
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.mark.parametrize("where,kept", [
    ("prepare", "interrupted (nothing of this run was kept as a result)"),
    ("evaluate", "interrupted while scoring; the generations are kept in"),
])
def test_ctrl_c_in_the_runner_finishes_the_tracker(tmp_path, monkeypatch, capsys, one_thread,
                                                   where, kept):
    from pkt.eval import NoEvaluation
    from pkt.methods.base import BaseMethod

    tracker = _Tracker()
    monkeypatch.setattr(runner, "build_tracker", lambda *a, **k: tracker)

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(BaseMethod if where == "prepare" else NoEvaluation, where, stop)
    cfg = _hydra_cfg(tmp_path, ["model=tiny_random", "method=base", "logger=none", "eval=none",
                                "data.n_test=2", "gen.max_new_tokens=2"])
    with pytest.raises(SystemExit) as ei:
        runner.main.__wrapped__(cfg)
    assert ei.value.code == 130 and tracker.finished == [130]
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    errors = [x for x in lines if "error" in x]  # after the progress bars of generation
    assert errors == lines[-1:] and errors[0].startswith(f"pkt: error: {kept}"), lines
    d = tmp_path / "run"
    if where == "evaluate":
        assert json.loads((d / "metrics.json").read_text())["evaluation_error"] == "interrupted"
        assert len(read_jsonl(d / "generations.jsonl")) == 2
    else:
        assert not (d / "generations.jsonl").exists()


def test_tracker_that_fails_to_finish_after_ctrl_c_is_a_warning(tmp_path, monkeypatch, capsys,
                                                                 one_thread):
    from pkt.methods.base import BaseMethod

    class Broken(_Tracker):
        def finish(self, exit_code=0):
            raise RuntimeError("service gone")

    monkeypatch.setattr(runner, "build_tracker", lambda *a, **k: Broken())
    monkeypatch.setattr(BaseMethod, "prepare", lambda self, out=None: (_ for _ in ()).throw(KeyboardInterrupt))
    cfg = _hydra_cfg(tmp_path, ["model=tiny_random", "method=base", "logger=none", "eval=none"])
    with pytest.raises(SystemExit) as ei:
        runner.main.__wrapped__(cfg)
    assert ei.value.code == 130
    err = capsys.readouterr().err
    assert err.strip() == "pkt: error: interrupted (nothing of this run was kept as a result)"
