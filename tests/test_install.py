"""pkt as a library: built into a wheel, installed into a fresh virtual environment, run from
an empty folder (the configs and data come from the installed package; outputs go to the
current directory, caches to the user's cache directory, nothing next to the package)."""

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ["model=tiny_random", "method=base", "trait=openness", "data.n_test=2",
       "gen.max_new_tokens=4", "eval=none", "logger=none"]
# the console-script run identifies neurons (a few seconds on tiny_random), so that pkt
# writes to its cache
NEURON = ["method=neuron", "data.n_search=4", "search_gen.max_new_tokens=4"]


def _sh(cmd, cwd, env, timeout=300) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"{cmd}: exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


def _listing(folder: Path) -> dict:
    """Every file under folder (bytecode caches aside): size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if "__pycache__" not in p.parts}


def _build_wheel(tmp_path: Path, env: dict) -> Path:
    """The wheel of a copy of the checkout (the build leaves build/ and *.egg-info beside
    the sources: not in the checkout)."""
    pytest.importorskip("setuptools", minversion="77")  # the build backend, no isolation
    src = tmp_path / "src"
    src.mkdir()
    junk = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("pkt", "conf"):
        shutil.copytree(ROOT / name, src / name, ignore=junk)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    _sh([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", tmp_path / "dist", src], tmp_path, env)
    (wheel,) = (tmp_path / "dist").glob("pkt-*.whl")
    return wheel


def test_wheel_installs_and_runs_from_an_empty_folder(tmp_path):
    home, xdg, work = tmp_path / "home", tmp_path / "xdg_cache", tmp_path / "work"
    for d in (home, xdg, work):
        d.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PKT_", "PYTHON", "PIP_", "VIRTUAL_ENV"))}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(xdg), PYTHONNOUSERSITE="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_CACHE_DIR="1", PIP_NO_INPUT="1")

    # --- the wheel holds every module, config and data file
    wheel = _build_wheel(tmp_path, env)
    names = set(zipfile.ZipFile(wheel).namelist())
    confs = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "conf").rglob("*.yaml"))
    assert "conf/hydra/launcher/slurm_gpu.yaml" in confs
    missing = [c for c in confs if f"pkt/{c}" not in names]
    assert not missing, f"configs missing from the wheel: {missing}"
    assert not [n for n in names if n.startswith("conf/")]  # only as pkt/conf
    sources = [p.relative_to(ROOT).as_posix() for p in (ROOT / "pkt").rglob("*.py")
               if "__pycache__" not in p.parts]
    missing = [s for s in sources if s not in names]
    assert not missing, f"modules missing from the wheel (pyproject.toml packages): {missing}"
    for data in ("pkt/dataset/data/description.json", "pkt/dataset/data/test/Openness.json",
                 "pkt/eval/data/capability_mc.jsonl", "pkt/eval/data/trait_corpus/openness.jsonl"):
        assert data in names
    entry_points = zipfile.ZipFile(wheel).read("pkt-0.1.0.dist-info/entry_points.txt").decode()
    assert "pkt = pkt.console:main" in entry_points

    # --- a fresh venv that borrows the project's dependencies (not its editable pkt: a path
    # in a .pth file is not a site dir, so the editable install's own .pth is not read)
    venv = tmp_path / "venv"
    _sh([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path, env)
    py = venv / "bin" / "python"
    purelib = Path(_sh([py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                       tmp_path, env).stdout.strip())
    (purelib / "_pkt_test_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _sh([py, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q",
         wheel], tmp_path, env)
    installed = purelib / "pkt"
    assert (installed / "conf" / "hydra" / "launcher" / "slurm_gpu.yaml").is_file()

    # import pkt: the installed copy, its packaged configs, nothing heavy
    r = _sh([py, "-c", "import json, sys, pkt; assert 'omegaconf' not in sys.modules, 'omegaconf'; "
             "assert 'torch' not in sys.modules, 'torch'; "
             "print(json.dumps([pkt.__file__, str(pkt.CONF_DIR)]))"], work, env)
    file, conf = json.loads(r.stdout)
    assert Path(file) == installed / "__init__.py"
    assert Path(conf) == installed / "conf"

    before = _listing(installed)
    # --- python -m pkt.run, then the console script, from the empty folder
    _sh([py, "-m", "pkt.run", *RUN], work, env)
    pkt_cmd = venv / "bin" / "pkt"
    assert pkt_cmd.read_text().startswith(f"#!{py}")
    _sh([pkt_cmd, "run", *RUN, *NEURON], work, env)
    r = subprocess.run([pkt_cmd, "nonsense"], cwd=work, env=env, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.splitlines() == [
        "pkt: error: unknown command 'nonsense' (choose from: run, serve, annotate, report, "
        "rescore)"]
    r = _sh([pkt_cmd, "--help"], work, env)
    assert all(f"  {c} " in r.stdout for c in ("run", "serve", "annotate", "report", "rescore"))

    # outputs under the working folder, caches under $XDG_CACHE_HOME/pkt, nothing beside the
    # installed package
    metrics = sorted((work / "outputs").rglob("metrics.json"))
    assert len(metrics) == 2, metrics
    assert {json.loads(m.read_text())["method"] for m in metrics} == {"base", "neuron"}
    assert sorted(p.name for p in work.iterdir()) == ["outputs"]
    assert _listing(installed) == before
    cached = [p for p in (xdg / "pkt").rglob("*") if p.is_file()]
    assert any("neuron_sets" in p.parts for p in cached), cached
    assert not (home / ".cache").exists()
