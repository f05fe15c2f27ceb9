"""Limits checked before work: a question too long for the model's context is one line
naming its file and line, and an impossible max_new_tokens is refused before any work."""

from __future__ import annotations

import json
import shutil

from pkt.resources import DATA_DIR
from tests.conftest import run_dirs, run_pkt, stderr_lines

BASE = ["model=tiny_random", "trait=openness", "eval=none", "logger=none",
        "gen.max_new_tokens=4"]


def test_too_long_question_names_file_and_line(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(DATA_DIR, data, ignore=shutil.ignore_patterns("_parts"))
    f = data / "test" / "Openness.json"
    lines = f.read_text(encoding="utf-8").splitlines()
    row = json.loads(lines[2])
    row["question"] = "Why? " * 3000  # 15,000 bytes: beyond the tiny model's 2,048 tokens
    lines[2] = json.dumps(row)
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    r = run_pkt([*BASE, "method=base", f"data.path={data}", "data.n_test=null"], tmp_path)
    (line,) = stderr_lines(r)
    assert r.returncode == 2 and line.startswith(f"pkt: error: {f}:3: this question makes a "
                                                 f"prompt of "), r.stderr
    assert "exceeds the model's context of 2048 tokens" in line
    assert not run_dirs(tmp_path)


def test_max_new_tokens_beyond_the_context_is_refused_before_work(tmp_path):
    r = run_pkt([*BASE, "method=neuron", "gen.max_new_tokens=4096"], tmp_path)
    assert r.returncode == 2 and stderr_lines(r) == [
        "pkt: error: gen.max_new_tokens=4096 does not fit this model's context of 2048 tokens "
        "(at most 2047, less the prompt)"], r.stderr
    assert "persona answers" not in r.stderr  # identification never started
    r = run_pkt([*BASE, "method=neuron", "search_gen.max_new_tokens=3000"], tmp_path)
    assert r.returncode == 2 and "search_gen.max_new_tokens=3000 does not fit" in r.stderr
