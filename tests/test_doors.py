"""One personality, three front doors: the runner (``python -m pkt.run``), the Python API
(``pkt.personality``) and the server (``pkt.serve``) build it through one registry, with
the same defaults and the same cached artifacts, and give the same greedy tokens."""

from __future__ import annotations

import json

import pkt
from pkt.serve import Settings
from tests.conftest import read_jsonl, run_dirs, run_pkt
from tests.test_serve import Running

METHODS = ["base", "prompt", "prompt_p2", "neuron", "actadd"]
TINY = ["model=tiny_random", "trait=openness", "aspect=high", "data.n_search=4",
        "data.n_test=3", "gen.max_new_tokens=8", "gen.batch_size=1",
        "search_gen.max_new_tokens=8", "logger=none", "eval=none"]
SEARCH = {"neuron": {"search_gen": {"max_new_tokens": 8}}}


def _runner(tmp_path, cache, args) -> dict[str, tuple[dict, list[dict]]]:
    r = run_pkt(args, tmp_path, cache)
    assert r.returncode == 0, r.stderr[-3000:]
    out = {}
    for d in run_dirs(tmp_path):
        m = json.loads((d / "metrics.json").read_text())
        out[m["method"] if "profile" not in m else "profile"] = (m, read_jsonl(d / "generations.jsonl"))
    return out


def _label(method: str) -> str:
    return {"prompt": "prompt_simple"}.get(method, method)


def test_three_doors_give_the_same_tokens_on_tiny(tmp_path, one_thread):
    cache = tmp_path / "cache"
    runs = _runner(tmp_path / "single", cache,
                   ["-m", *TINY, f"method={','.join(METHODS)}"])
    runs.update(_runner(tmp_path / "profile", cache,
                        [*TINY, "method=neuron", "profile=extraverted_calm"]))
    assert set(runs) == {*map(_label, METHODS), "profile"}
    lm = pkt.load_model("tiny_random")
    cases = [(m, "openness:high") for m in METHODS] + \
        [("profile", "extraversion:high+neuroticism:low")]
    settings = Settings(n_search=4, search_max_new_tokens=8, cache_dir=str(cache),
                        max_tokens=8)
    answers = {}
    with Running(lm, settings) as srv:
        for method, profile in cases:
            name = "neuron" if method == "profile" else method
            metrics, gens = runs[_label(method) if method != "profile" else "profile"]
            qs = [g["question"] for g in gens]
            api = pkt.personality(lm, profile, name, n_search=4, cache=cache,
                                  **SEARCH.get(name, {}))
            via_api = api.answer(qs, max_new_tokens=8, batch_size=1)
            via_server, used = [], None
            for q in qs:
                body = srv.chat(messages=[{"role": "user", "content": q}], max_tokens=8,
                                personality=None if name == "base" else f"{profile}@{name}")
                assert body.status_code == 200, body.text
                got = body.json()
                via_server.append(got["choices"][0]["message"]["content"])
                used = got["personality"]["settings"]
            via_runner = [g["response"] for g in gens]
            assert via_api == via_runner, (method, via_api, via_runner)
            assert via_server == via_runner, (method, via_server, via_runner)
            # the same settings, every default included, through every door (a profile
            # from the config carries its name; the shorthand has none)
            same = [{k: v if k != "profile" else {**v, "name": None} for k, v in d.items()}
                    for d in (api.info["settings"], metrics["params"], used)]
            assert same[0] == same[1] == same[2], method
            answers[method] = via_runner
    # the doors agree on something that moves: prompting changes the answers
    assert answers["prompt"] != answers["base"] and answers["prompt_p2"] != answers["base"]


# The embedded model's check (NPTI with strength=auto, through the API and the server from
# the runner's cached artifacts) rides on tests/test_cli.py's NPTI run, which makes them.


def test_the_config_states_the_classes_search_defaults():
    """conf/config.yaml's search_gen block is pkt.generation.SEARCH_GEN (null dtype: the
    model's own, else auto), so the runner and the API identify with the same budget."""
    from omegaconf import OmegaConf

    from pkt.generation import SEARCH_GEN
    from tests.conftest import compose_cfg

    block = OmegaConf.to_container(compose_cfg([]).search_gen, resolve=True)
    assert {**block, "dtype": block["dtype"] or "auto"} == SEARCH_GEN
