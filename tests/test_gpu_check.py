"""The GPU acceptance check (experiments/bench/gpu_check.py) cannot run here; ``--smoke``
runs the same code on the CPU with the tiny random model: every part, every figure."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import MODEL_CACHE, ROOT

SCRIPT = ROOT / "experiments" / "bench" / "gpu_check.py"


def _run(args: list[str], tmp_path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PKT_MODEL_CACHE=str(MODEL_CACHE))
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_smoke_runs_every_part_on_the_cpu(tmp_path):
    out = tmp_path / "smoke.json"
    r = _run(["--smoke", "--work", str(tmp_path / "work"), "--out", str(out)], tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    res = json.loads(out.read_text())
    assert res["mode"] == "smoke" and res["ok"] and all(res["checks"].values())
    assert res["card"]["device"] == "cpu" and res["card"]["torch"] == torch.__version__
    assert "name" not in res["card"]  # a CUDA card's fields come from torch.cuda only
    # 1. python -m pkt.run: identification + strength=auto, ActAdd, LoRA one epoch; evaluated
    runs = res["runs"]
    assert set(runs) == {"neuron", "actadd", "lora"}
    for name, run in runs.items():
        assert run["returncode"] == 0 and run["n"] == 2, (name, run)
        assert 1 <= run["trait_score"] <= 5 and run["capability"]["mc_ratio"] is not None
        assert run["timings"]["total"] > 0 and run["command"].startswith("python -m pkt.run")
    assert runs["neuron"]["strength_auto"]["chosen"] in (1.0, 2.0)
    assert runs["lora"]["params"]["max_epochs"] == 1 and runs["lora"]["extra"]["lora_steps"] >= 1
    # 2. python -m pkt.serve: plain and personality requests, one streamed
    serve = res["serve"]
    assert len(serve["requests"]) == 6 and all(q["status"] == 200 for q in serve["requests"])
    assert {q["personality"] for q in serve["requests"] if q["side"] == "personality"} == \
        {"agreeableness:high:1@neuron"}
    assert serve["stream"]["tokens"] == 4 and serve["health"]["errors"] == 0
    # 3. the 8B-shaped model's figures (here the tiny shape): overhead, statistics, memory
    shape = res["shape"]
    assert shape["shape"] == "tiny" and shape["layers"] == 2 and shape["width"] == 256
    assert set(shape["generation"]) == {"1", "8"}
    for g in shape["generation"].values():
        assert g["plain_ms_per_step"] > 0 and g["hooked_ms_per_step"] > 0
        assert g["decode_steps"]["plain"] >= 1 and g["edit_ms_per_step"] > 0
    assert shape["statistics"]["ratio"] > 0
    assert [m["mult"] for m in shape["memory"]["statistics_pass"]] == [1, 4, 16]
    assert res["wall_s"] > 0 and "under_8_minutes" not in res["checks"]  # a GPU criterion


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_the_gpu_check_says_so(tmp_path):
    r = _run(["--work", str(tmp_path / "work"), "--out", str(tmp_path / "x.json")], tmp_path)
    assert r.returncode == 2 and not (tmp_path / "x.json").exists()
    assert r.stderr.strip().splitlines() == [
        "gpu_check: error: no CUDA device here (torch.cuda.is_available() is False); --smoke "
        "runs the same code on the CPU"]
