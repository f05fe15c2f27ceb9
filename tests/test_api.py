"""The public API as a user calls it (tiny random model; the README example on the embedded one)."""

import re

import pytest

import pkt
from tests.conftest import ROOT


def test_identify_induce_save_load_on_tiny(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("PKT_CACHE", str(tmp_path / "cache"))
    lm = pkt.load_model("tiny_random")
    sets = pkt.identify(lm, "openness", n_search=3, max_new_tokens=4, k_min=5, progress=False)
    assert len(sets["high"]) >= 5 and len(sets["low"]) >= 5 and sets.info["cached"] is False
    assert pkt.identify(lm, "openness", n_search=3, max_new_tokens=4, k_min=5,
                        progress=False).info["cached"] is True
    q = ["What would you do on a free day?"]
    plain = pkt.answer(lm, q, max_new_tokens=6)
    with pkt.induce(lm, sets, aspect="high", strength=50.0, keep_prob=1.0):
        edited = pkt.answer(lm, q, max_new_tokens=6)
    assert pkt.answer(lm, q, max_new_tokens=6) == plain  # hooks removed on exit
    assert edited != plain
    sets.save(tmp_path / "sets")
    back = pkt.NeuronSets.load(tmp_path / "sets", lm=lm)
    assert back.trait == "Openness"
    for a in ("high", "low"):
        # the same neurons (ties in diff may come back in another order)
        assert sorted(zip(back[a].layer.tolist(), back[a].index.tolist())) == \
            sorted(zip(sets[a].layer.tolist(), sets[a].index.tolist()))
    other = pkt.load_model("tiny_random", init_seed=5)
    with pytest.raises(pkt.PktError, match="another model"):
        pkt.NeuronSets.load(tmp_path / "sets", lm=other)
    with pytest.raises(pkt.PktError, match="another model"):
        pkt.induce(other, sets)
    with pytest.raises(pkt.PktError, match="unknown aspect"):
        pkt.induce(lm, sets, aspect="middle")
    with pytest.raises(pkt.PktError, match="unknown model 'nope'"):
        pkt.load_model("nope")


def test_steer_on_tiny(one_thread):
    lm = pkt.load_model("tiny_random")
    q = ["Tell me about your weekend."]
    plain = pkt.answer(lm, q, max_new_tokens=6)
    with pkt.steer(lm, "extraversion", "high", layers=[1], coefficient=200.0, n_search=2):
        steered = pkt.answer(lm, q, max_new_tokens=6)
    assert steered != plain and pkt.answer(lm, q, max_new_tokens=6) == plain


@pytest.mark.embedded
def test_readme_api_example_runs(tmp_path, monkeypatch, embedded_npti):
    """The README's API example, executed as written, induces a trait on the embedded model.
    Its identification (n_search=8, 32 tokens) is the session's runner NPTI run's: the
    statistics come from that cache (the runner and the API share their artifacts)."""
    from tests.conftest import MODEL_CACHE

    text = (ROOT / "README.md").read_text()
    code = re.search(r"<!-- api-example -->\n```python\n(.*?)```", text, re.S).group(1)
    assert len([x for x in code.splitlines() if x.strip()]) < 15
    monkeypatch.setenv("PKT_CACHE", str(embedded_npti["cache"]))
    monkeypatch.setenv("PKT_MODEL_CACHE", str(MODEL_CACHE))
    monkeypatch.chdir(tmp_path)  # the example saves its sets under outputs/
    env: dict = {}
    exec(compile(code, "README.md", "exec"), env)
    assert env["high"] != env["plain"] and env["low"] != env["plain"]
    assert (tmp_path / "outputs" / "extraversion_sets" / "Extraversion_dict.json").is_file()
    # nothing identified again: the runner's statistics were the example's
    stats = [p for p in (embedded_npti["cache"] / "artifacts" / "statistics").iterdir()
             if not p.name.startswith(".")]
    assert [p.name for p in stats] == [embedded_npti["info"]["artifacts"]["statistics"]]
