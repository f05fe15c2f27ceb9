"""End to end through the commands a user types (subprocesses of python -m pkt.run)."""

import json
import os

import pytest

from tests.conftest import MODEL_CACHE, read_jsonl, run_dirs, run_pkt, stderr_lines

TINY = ["model=tiny_random", "gen.max_new_tokens=6", "search_gen.max_new_tokens=8",
        "data.n_search=6", "eval=none"]


def _wandb_runs(run_dir):
    return sorted((run_dir / "wandb").glob("offline-run-*"))


@pytest.mark.embedded
def test_prompt_run_on_embedded_model(tmp_path, embedded_npti, seed_scorers):
    """On the session NPTI run's cache (tests/conftest.py): its strength=auto probe measured
    the plain model on the same 4 MC items, the evaluation reuses it; the trait scorer is
    the session's (neither is what this test checks)."""
    cache = seed_scorers(embedded_npti["cache"], "extraversion")
    r = run_pkt(["method=prompt", "trait=extraversion", "data.n_test=2", "gen.max_new_tokens=24",
                 "eval.capability_n_mc=4"], tmp_path, cache)
    assert r.returncode == 0, r.stderr[-3000:]
    (d,) = run_dirs(tmp_path)
    gens = read_jsonl(d / "generations.jsonl")
    assert len(gens) == 2
    for g in gens:
        assert g["method"] == "prompt_simple" and g["trait"] == "extraversion" and g["aspect"] == "high"
        assert g["params"]["variant"] == "simple" and g["question"] and g["response"].strip()
    m = json.loads((d / "metrics.json").read_text())
    assert m["model"] == "smollm2_135m" and m["n"] == 2 and m["mean_response_tokens"] > 5
    assert m["gen_tokens_per_s"] > 0 and set(m["timings"]) >= {"load_model", "prepare", "respond", "total"}
    # evaluation: offline trait scorer, fluency figures, capability ratios
    assert m["trait_scorer"] == "offline-minilm" and 1 <= m["trait_score"]["mean"] <= 5
    assert m["ppl"]["mean"] > 1 and 0 < m["distinct_2"] <= 1 and m["fluency"] is None
    assert m["capability"]["n_mc"] == 4 and m["capability"]["mc_ratio"] is not None
    assert all(1 <= g["trait_score"] <= 5 and g["ppl"] > 1 for g in gens)
    info = json.loads((d / "run_info.json").read_text())
    assert len(info["data_hash"]) == 16 and info["versions"]["torch"]
    assert (d / ".hydra" / "config.yaml").exists()
    (w,) = _wandb_runs(d)
    assert list(w.glob("run-*.wandb"))


def test_multirun_gives_separate_dirs_and_wandb_runs(tmp_path):
    r = run_pkt(["-m", "method=base,prompt", "trait=openness", "data.n_test=2", *TINY], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    dirs = run_dirs(tmp_path)
    assert len(dirs) == 2 and dirs[0] != dirs[1]
    ids = set()
    for d in dirs:
        (w,) = _wandb_runs(d)
        ids.add(w.name.rsplit("-", 1)[-1])
        assert list(w.glob("run-*.wandb"))
    assert len(ids) == 2
    methods = {json.loads((d / "metrics.json").read_text())["method"] for d in dirs}
    assert methods == {"base", "prompt_simple"}
    # the comparison report over these two real runs
    from pkt.report import build_report

    sweep = dirs[0].parent
    md = build_report([sweep]).read_text()
    assert "| base | high |" in md and "| prompt_simple | high |" in md and "openness" in md
    assert (sweep / "report.csv").read_text().count("\n") == 3
    assert (sweep / "scores_by_method.png").stat().st_size > 1000


@pytest.mark.parametrize("args,msg", [
    (["trait=nonsense"], "pkt: error: unknown trait 'nonsense' (choose from: agreeableness, conscientiousness, extraversion, neuroticism, openness)"),
    (["data.path=/nonexistent"], "pkt: error: data folder not found: /nonexistent"),
    (["model=gpt9"], "pkt: error: unknown model 'gpt9'"),
    (["method=neuron", "method.strength=-1"], "pkt: error: method.strength must be a finite number >= 0 or null, got -1"),
    (["method=neuron", "method.strength=nan"], "pkt: error: method.strength must be a finite number >= 0 or null, got nan"),
    (["data.n_test=100000"], "pkt: error: data.n_test=100000 is larger than the"),
    (["method=prompt", "method.variant=fancy"], "pkt: error: unknown prompt variant 'fancy'"),
])
def test_bad_input_is_one_clear_line(tmp_path, args, msg):
    r = run_pkt([*TINY, "logger=none", *args], tmp_path)
    assert r.returncode != 0
    lines = stderr_lines(r)
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(msg)
    assert not run_dirs(tmp_path)  # nothing half-written


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    r = run_pkt([*TINY, "logger=none", f"paths.output_dir={blocker}/out"], tmp_path)
    assert r.returncode != 0
    lines = stderr_lines(r)
    assert len(lines) == 1 and lines[0].startswith("pkt: error: output folder is not writable"), r.stderr
    assert blocker.read_text() == "not a folder"


@pytest.mark.embedded
def test_neuron_changes_most_responses_and_reuses_artifacts(embedded_npti):
    """The session's NPTI run (python -m pkt.run, strength=auto, tests/conftest.py): the
    choice is recorded, the sets and plots are written, and the API and the server rebuild
    the same personality from its cache."""
    mn, neuron, dn = embedded_npti["metrics"], embedded_npti["generations"], embedded_npti["dir"]
    assert mn["method"] == "neuron" and mn["aspect"] == "high" and len(neuron) == 4
    assert mn["neuron_stats_cached"] is False
    # strength=auto (the default) probed the grid and recorded its choice
    chosen = mn["strength_auto"]
    assert chosen["chosen"] in (1.0, 2.0) and mn["params"]["strength"] == chosen["chosen"]
    assert [t["strength"] for t in chosen["trials"]][:1] == [1.0]
    assert mn["neurons_high"] >= 230 and mn["neurons_low"] >= 230  # k_min = 0.5% of 46,080
    assert sum(mn["neurons_high_per_layer"]) == mn["neurons_high"]
    assert (dn / "neurons_per_layer.png").stat().st_size > 1000
    assert (dn / "neurons" / "Extraversion_dict.json").exists()
    _same_personality_through_the_api_and_the_server(embedded_npti["cache"], mn, neuron)


def _same_personality_through_the_api_and_the_server(cache, mn: dict, neuron: list[dict]):
    """NPTI with strength=auto on the embedded model, as the runner just made it: the API
    and the server build the same personality from the same cached artifacts (nothing is
    computed again: compute=False / serve.identify=false) and give the same tokens. The API
    answers in the runner's batch (same padding, same float rounding); the server is
    compared with the API answering one question at a time (one request at a time). The
    other aspect's sets come from the same identification (compute=False again)."""
    import pkt
    from pkt.serve import Settings
    from tests.test_serve import Running

    os.environ.setdefault("PKT_MODEL_CACHE", str(MODEL_CACHE))
    lm = pkt.load_model("smollm2_135m")
    auto = {"strength_grid": [1.0, 2.0], "auto_n_mc": 4}
    search = {"n_search": 8, "search_gen": {"max_new_tokens": 32}}
    pers = pkt.personality(lm, "extraversion:high", "neuron", cache=cache, compute=False,
                           **search, **auto)
    assert pers.info["settings"] == mn["params"]
    qs = [g["question"] for g in neuron]
    assert pers.answer(qs, max_new_tokens=32) == [g["response"] for g in neuron]
    # NPTI moves most answers away from the plain model's
    plain = pkt.answer(lm, qs, max_new_tokens=32)
    assert sum(a != g["response"] for a, g in zip(plain, neuron)) >= 3
    low = pkt.personality(lm, "extraversion:low:1.0", "neuron", cache=cache, compute=False,
                          **search)
    assert low.info["settings"]["strength"] == 1.0
    low_answers = low.answer(qs[:2], max_new_tokens=32)
    assert all(a != b for a, b in zip(low_answers, plain[:2]))
    one_by_one = pers.answer(qs[:2], max_new_tokens=32, batch_size=1)
    settings = Settings(n_search=8, search_max_new_tokens=32, cache_dir=str(cache),
                        identify=False, params={"neuron": auto})
    with Running(lm, settings) as srv:
        for q, want in zip(qs[:2], one_by_one):
            assert srv.text(messages=[{"role": "user", "content": q}], max_tokens=32,
                            personality="extraversion:high@neuron") == want


def test_evaluation_takes_the_capability_figures_strength_auto_measured(tmp_path, seed_scorers):
    """strength=auto probed MC and perplexity at the strength it chose (a one-value grid: both
    parts are probed there, in or out of bounds): the evaluation's
    capability probe (the same measurement) is not repeated, and says so."""
    args = ["method=neuron", "method.strength=auto", "method.strength_grid=[1.0]",
            "method.auto_n_mc=6", "method.max_ppl_ratio=100",
            "trait=openness", "data.n_test=2", "data.n_search=4", "gen.max_new_tokens=4",
            "search_gen.max_new_tokens=6", "model=tiny_random", "logger=none"]
    cache = seed_scorers(tmp_path / "a" / "cache", "openness")  # not this test's subject
    r = run_pkt([*args, "eval.capability_n_mc=6"], tmp_path / "a", cache)
    assert r.returncode == 0, r.stderr[-3000:]
    (d,) = run_dirs(tmp_path / "a")
    m = json.loads((d / "metrics.json").read_text())
    cap, auto = m["capability"], m["strength_auto"]
    assert auto["chosen"] == 1.0 and cap["measured_by"] == "strength_auto" and cap["n_mc"] == 6
    (t,) = [t for t in auto["trials"] if t["strength"] == 1.0]
    assert cap["ppl_ratio"] == pytest.approx(t["ppl_ratio"]) and cap["mc_ratio"] == pytest.approx(t["mc_ratio"])
    # on other items than the probe's, the evaluation measures for itself (the same cache:
    # the identification, the probe and the scorer are reused, the measurement is not)
    r = run_pkt([*args, "eval.capability_n_mc=5"], tmp_path / "b", cache=tmp_path / "a" / "cache")
    assert r.returncode == 0, r.stderr[-3000:]
    (d,) = run_dirs(tmp_path / "b")
    m = json.loads((d / "metrics.json").read_text())
    assert m["strength_auto_cached"] is True and m["capability"]["measured_by"] == "evaluation"
    assert m["capability"]["n_mc"] == 5
