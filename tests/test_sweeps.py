"""A sweep checks every job before the first one runs, and says when a later override
replaces one of its axes."""

from __future__ import annotations

from tests.conftest import run_pkt, stderr_lines

TINY = ["model=tiny_random", "method=base", "trait=openness", "eval=none", "logger=none",
        "data.n_test=1"]


def test_a_bad_value_in_any_job_stops_the_sweep_before_the_first_job(tmp_path):
    r = run_pkt(["-m", *TINY, "gen.max_new_tokens=4,0"], tmp_path)
    (line,) = stderr_lines(r)
    assert r.returncode == 2 and line.startswith("pkt: error: sweep job #1 ("), r.stderr
    assert line.endswith("gen.max_new_tokens must be an integer in [1, 32768], got 0")
    assert not (tmp_path / "out").exists()  # no job ran, no sweep folder


def test_an_override_that_replaces_a_sweep_axis_is_a_warning(tmp_path):
    r = run_pkt(["-m", *TINY, "gen.max_new_tokens=4,6", "gen.max_new_tokens=4"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert ("pkt: warning: gen.max_new_tokens=4 replaces the sweep axis "
            "gen.max_new_tokens=4,6 given before it") in r.stderr


def test_an_unknown_key_is_one_line_not_hydras_page(tmp_path):
    r = run_pkt([*TINY, "method.nosuch=1"], tmp_path)
    assert r.returncode == 2 and stderr_lines(r) == [
        "pkt: error: Could not override 'method.nosuch' (no such key); to append to your "
        "config use +method.nosuch=1"], r.stderr


def test_a_finished_run_says_what_it_did_and_where_the_results_are(tmp_path):
    r = run_pkt(TINY, tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [x for x in r.stdout.splitlines() if not x.startswith("[")]
    assert lines[0] == "pkt: done: base, openness (high), on tiny_random (1 answers)", lines
    (results,) = [x for x in lines if x.strip().startswith("results: ")]
    run_dir = results.split("results: ", 1)[1].split(" (", 1)[0]
    assert (tmp_path / "out").as_posix() in run_dir and \
        (__import__("pathlib").Path(run_dir) / "metrics.json").is_file()
    assert any(x.strip().startswith("next: python -m pkt.run") for x in lines)
