import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import pkt
import pkt.hydra_setup  # noqa: F401 (pkt's config resolvers, for compose())
from pkt.dataset import Bench
from pkt.generation import GenConfig
from pkt.methods import Outputs, Setting
from pkt.models import TinyRandomModel

ROOT = Path(pkt.__file__).resolve().parent.parent
CONF = ROOT / "conf"
# the dequantised embedded model is shared by every test (converted once per clone)
MODEL_CACHE = Path(os.environ.get("PKT_MODEL_CACHE",
                                  Path(os.environ.get("PKT_CACHE", ROOT / ".cache")) / "models"))


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


@pytest.fixture(scope="session")
def tiny():
    return TinyRandomModel().load()


@pytest.fixture(scope="module")
def one_thread():
    """The tiny model's matrices are too small to gain from threads (and lose a lot when the
    cores are shared)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture()
def spread_tiny():
    """A tiny model whose gate activations spread over the whole histogram range."""
    lm = TinyRandomModel(init_seed=3).load()
    with torch.no_grad():
        for layer in lm.model.model.layers:
            layer.mlp.gate_proj.weight.mul_(40.0)
    return lm


def openness_context(lm, questions: list[str], personas: dict, run_dir: Path, gen: GenConfig,
                     aspect: str = "high", cache_dir: Path | None = None) -> Setting:
    """A method's Setting over a hand-written Openness bench (search split only)."""
    bench = Bench(trait="Openness",
                  search=[{"question": q, "_line": i + 1} for i, q in enumerate(questions)],
                  test=[], personas=personas, data_hash="x")
    trait = OmegaConf.create({"name": "openness", "adjectives": {"high": "open", "low": "closed"}})
    run_dir.mkdir(parents=True, exist_ok=True)
    return Setting(lm=lm, bench=bench, trait=trait, aspect=aspect, seed=0, gen=gen,
                   cache_dir=cache_dir or run_dir / "cache", progress=False)


def outputs(run_dir: Path, tracker=None) -> Outputs:
    """Where a run wants a method's plots and logs (``method.prepare(outputs(...))``)."""
    return Outputs(run_dir, tracker)


def run_pkt(args: list[str], tmp_path: Path, cache: Path | None = None, timeout: int = 900,
            env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m pkt.run`` as a user would, with outputs and caches under tmp_path."""
    env = dict(os.environ)
    env["PKT_CACHE"] = str(cache or (tmp_path / "cache"))
    env["PKT_MODEL_CACHE"] = str(MODEL_CACHE)
    env.update(env_extra or {})
    flags = [a for a in args if a.startswith("-")]
    rest = [a for a in args if not a.startswith("-")]
    cmd = [sys.executable, "-m", "pkt.run", *flags, f"paths.output_dir={tmp_path / 'out'}", *rest]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def run_dirs(tmp_path: Path) -> list[Path]:
    return sorted(p.parent for p in (tmp_path / "out").rglob("metrics.json"))


# One NPTI run of the runner on the embedded model per session, strength=auto over a
# two-value grid (python -m pkt.run, as a user types it). Its cache (persona answers,
# statistics, neuron sets, the strength probe) is shared by the embedded tests that need an
# identification but check something else: the API and the server from the same artifacts,
# the README's API example (the same n_search and search budget), LoRA trained on the same
# persona answers. Small budgets: these tests check plumbing, not results.
EMBEDDED_NPTI = ["method=neuron", "trait=extraversion", "data.n_search=8",
                 "search_gen.max_new_tokens=32", "data.n_test=4", "gen.max_new_tokens=32",
                 "method.strength_grid=[1.0,2.0]", "method.auto_n_mc=4", "logger=none",
                 "eval=none"]


@pytest.fixture(scope="session")
def embedded_npti(tmp_path_factory):
    """The session's embedded NPTI run: its cache, run folder, metrics and generations.
    Tests that use the cache may add artifacts to it, never change the ones there."""
    tmp = tmp_path_factory.mktemp("embedded_npti")
    r = run_pkt(EMBEDDED_NPTI, tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    (d,) = run_dirs(tmp)
    return {"cache": tmp / "cache", "dir": d, "args": EMBEDDED_NPTI,
            "metrics": json.loads((d / "metrics.json").read_text()),
            "info": json.loads((d / "run_info.json").read_text()),
            "generations": read_jsonl(d / "generations.jsonl")}


@pytest.fixture(scope="session")
def corpus_embeddings():
    """``corpus_embeddings(trait)``: the trait's scorer corpus ``(texts, labels, MiniLM
    embeddings)``, embedded once per session (about 2.5 s a trait on two cores)."""
    from pkt.eval.scorer import embed, load_corpus

    done: dict[str, tuple] = {}

    def get(trait: str) -> tuple:
        trait = trait.lower()
        if trait not in done:
            texts, y, _ = load_corpus(trait)
            done[trait] = (texts, y, embed(texts))
        return done[trait]

    return get


@pytest.fixture(scope="session")
def seed_scorers(tmp_path_factory, corpus_embeddings):
    """``seed_scorers(cache, *traits)``: put the offline trait scorers of these traits into a
    run's fresh cache, each fitted once per session (the same code and key as a run's: the
    fit is deterministic). For runs that check something else than the scorer's fit, so
    that every one of them does not fit it again (a few seconds per trait); the fit inside
    a run stays tested by the runs that are not seeded (gpu_check's smoke runs, scored
    in a fresh cache; test_eval fits and caches a scorer directly)."""
    from pkt.eval import scorer as scorer_module
    from pkt.eval.scorer import TraitScorer

    pool = tmp_path_factory.mktemp("scorers")
    made = pool / "artifacts" / "scorer"
    fitted: dict[str, Path] = {}  # trait -> its artifact folder in the pool

    def seed(cache: Path, *traits: str) -> Path:
        for t in traits:
            if t not in fitted:
                before = set(made.iterdir()) if made.is_dir() else set()
                real = scorer_module.embed  # the fit embeds its corpus: the session's copy
                corpus = corpus_embeddings(t)

                def embed(xs, *a, _corpus=corpus, _real=real, **k):
                    return _corpus[2] if xs == _corpus[0] else _real(xs, *a, **k)

                scorer_module.embed = embed
                try:
                    TraitScorer(t, pool)
                finally:
                    scorer_module.embed = real
                (fitted[t],) = set(made.iterdir()) - before
            dest = Path(cache) / "artifacts" / "scorer" / fitted[t].name
            if not dest.exists():  # a shared cache may have it already
                shutil.copytree(fitted[t], dest)
        return Path(cache)

    return seed


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def stderr_lines(r: subprocess.CompletedProcess) -> list[str]:
    return [x for x in r.stderr.splitlines() if x.strip()]


class LocalServer:
    """An HTTP server on 127.0.0.1 (a free port) in a thread; a context manager that stops it.

    Subclasses build their request handler class and call ``self.serve(handler)``.
    """

    def serve(self, handler) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,),
                                       daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
