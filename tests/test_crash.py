"""Crash-consistent artifacts: a process killed between two writes of identification (a
fault injected at the write boundary, as ``kill -9`` would), a checkpoint whose parts do not
belong together, and damaged cached statistics are never used: the next run recomputes
what it must and caches exactly the statistics of a run that was never interrupted."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import save_file

from tests.conftest import run_dirs, run_pkt

TINY = ["model=tiny_random", "method=neuron", "trait=openness", "data.n_search=8",
        "data.n_test=1", "search_gen.batch_size=2", "search_gen.max_new_tokens=6",
        "search_gen.workers=1", "gen.max_new_tokens=4", "eval=none", "logger=none"]


def _stats_file(cache: Path) -> Path:
    (f,) = (cache / "artifacts" / "statistics").glob("*/statistics.safetensors")
    return f


def _digest(cache: Path) -> str:
    return hashlib.sha256(_stats_file(cache).read_bytes()).hexdigest()


def _run(tmp: Path, cache: Path, fault: str | None = None):
    return run_pkt(TINY, tmp, cache, env_extra={"PKT_FAULT": fault} if fault else {})


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory) -> tuple[Path, dict]:
    """A run never interrupted: its cache (read only: a test copies it to change it) and
    metrics, the reference of both tests below."""
    tmp = tmp_path_factory.mktemp("clean_run")
    r = _run(tmp, tmp / "cache")
    assert r.returncode == 0, r.stderr[-2000:]
    return tmp / "cache", json.loads((run_dirs(tmp)[0] / "metrics.json").read_text())


def test_a_kill_at_a_write_boundary_or_a_mixed_checkpoint_is_never_used(tmp_path, clean_run):
    clean = shutil.copytree(clean_run[0], tmp_path / "clean")
    want, metrics = _digest(clean), clean_run[1]

    # killed after the second chunk's checkpoint was written, before it was published
    cache = tmp_path / "killed"
    r = _run(tmp_path / "b", cache, fault="checkpoint.written@2")
    assert r.returncode != 0 and not (cache / "artifacts" / "statistics").exists()
    (partial,) = (cache / "artifacts" / "partial").iterdir()
    assert (partial / "high.ckpt.safetensors").is_file()  # the first chunk's
    mixed = shutil.copytree(cache, tmp_path / "mixed")  # the same kill, for the next case
    r = _run(tmp_path / "c", cache)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming identification (high): 4 of 8" in r.stdout + r.stderr
    assert _digest(cache) == want  # the same statistics as the run never killed

    # a checkpoint whose answers are not the ones its histogram counted: not used
    cache = mixed
    (f,) = (cache / "artifacts" / "partial").glob("*/high.ckpt.safetensors")
    with safe_open(str(f), framework="pt") as h:
        meta = json.loads(h.metadata()["pkt"])
        tensors = {k: h.get_tensor(k) for k in h.keys()}
    meta["done"] = meta["done"][:-1]  # one answer less than the histogram counted
    save_file(tensors, str(f), metadata={"pkt": json.dumps(meta)})
    r = _run(tmp_path / "e", cache)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "not resuming from the high checkpoint" in r.stdout + r.stderr
    assert _digest(cache) == want

    # damaged cached statistics: a warning, computed again, never used
    f = _stats_file(clean)
    f.write_bytes(f.read_bytes()[:200])
    r = _run(tmp_path / "f", clean)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "computing it again" in r.stdout + r.stderr
    assert _digest(clean) == want
    again = json.loads((run_dirs(tmp_path / "f")[0] / "metrics.json").read_text())
    assert again["neurons_high"] == metrics["neurons_high"] and again["neuron_stats_cached"] is False


def test_a_kill_while_publishing_any_artifact_leaves_none_and_the_rerun_is_exact(tmp_path,
                                                                                  clean_run):
    """Killed with the statistics written but not yet renamed into place (and, in a second
    run, the neuron sets'): no artifact appears, and the next run makes the same ones."""
    want = _digest(clean_run[0])
    for point in ("dir.publish@1", "dir.publish@2"):
        cache = tmp_path / point.replace("@", "-")
        r = _run(tmp_path / f"k-{point}", cache, fault=point)
        assert r.returncode != 0
        kinds = cache / "artifacts"
        published = [p.parent.name for p in kinds.glob("*/*/meta.json")
                     if not p.parent.name.startswith(".")]
        assert len(published) == int(point[-1]) - 1, published  # only what was finished
        r = _run(tmp_path / f"r-{point}", cache)
        assert r.returncode == 0, r.stderr[-2000:]
        assert _digest(cache) == want
        # the dead writer's temporary folder was cleared by the next writer of its key
        assert not list((kinds / "statistics").glob(".*"))


def test_two_runs_on_one_cache_identify_once(tmp_path):
    """The second run waits for the first one's identification and reuses it."""
    import subprocess
    import sys

    from tests.conftest import MODEL_CACHE, ROOT

    cache = tmp_path / "cache"
    args = [a for a in TINY if not a.startswith(("data.n_search", "search_gen.max_new"))] + \
        ["data.n_search=16", "search_gen.max_new_tokens=24"]
    env = dict(__import__("os").environ, PKT_CACHE=str(cache), OMP_NUM_THREADS="1",
               PKT_MODEL_CACHE=str(MODEL_CACHE))
    procs = [subprocess.Popen([sys.executable, "-m", "pkt.run", *args,
                               f"paths.output_dir={tmp_path / f'out{i}'}"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    cached = []
    for i in range(2):
        (d,) = sorted(m.parent for m in (tmp_path / f"out{i}").rglob("metrics.json"))
        cached.append(json.loads((d / "metrics.json").read_text())["neuron_stats_cached"])
    assert sorted(cached) == [False, True], (cached, outs)
    waited = [o for o, c in zip(outs, cached) if c]
    assert "another pkt process is computing this statistics" in waited[0], waited[0][-3000:]
    assert len(list((cache / "artifacts" / "statistics").iterdir())) == 1
