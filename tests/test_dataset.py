import json
import re
import shutil

import pytest

from pkt.dataset import PERSONA_KEYS, TRAITS, load_bench, read_jsonl
from pkt.errors import PktError
from pkt.resources import DATA_DIR

FACETS = {
    "Openness": ["imagination", "artistic interests", "emotionality", "adventurousness", "intellect", "liberalism"],
    "Conscientiousness": ["self-efficacy", "orderliness", "dutifulness", "achievement-striving", "self-discipline", "cautiousness"],
    "Extraversion": ["friendliness", "gregariousness", "assertiveness", "activity level", "excitement-seeking", "cheerfulness"],
    "Agreeableness": ["trust", "morality", "altruism", "cooperation", "modesty", "sympathy"],
    "Neuroticism": ["anxiety", "anger", "depression", "self-consciousness", "immoderation", "vulnerability"],
}


def words(s):
    return set(re.findall(r"[a-z']+", s.lower()))


def jaccard(a, b):
    return len(a & b) / max(len(a | b), 1)


@pytest.fixture()
def data_copy(tmp_path):
    d = tmp_path / "bench"
    shutil.copytree(DATA_DIR, d, ignore=shutil.ignore_patterns("_parts"))
    return d


@pytest.mark.parametrize("trait", TRAITS)
def test_shipped_set_sizes_and_tags(trait):
    search = read_jsonl(DATA_DIR / "search" / f"{trait}.json", ("question", "BFI", "tag", "topic"))
    test = read_jsonl(DATA_DIR / "test" / f"{trait}.json", ("question",))
    assert len(search) >= 200 and len(test) >= 60
    assert {r["BFI"] for r in search} == {trait}
    assert set(FACETS[trait]) <= {r["tag"] for r in search}
    assert len({r["topic"] for r in search}) >= 20
    desc = read_jsonl(DATA_DIR / "description.json", PERSONA_KEYS)
    assert len(desc) >= 20
    assert len({d[trait] for d in desc}) == len(desc)
    assert len({d[f"{trait}_reversed"] for d in desc}) == len(desc)


@pytest.mark.parametrize("trait", TRAITS)
def test_search_and_test_disjoint_without_near_duplicates(trait):
    qs = [r["question"] for r in read_jsonl(DATA_DIR / "search" / f"{trait}.json", ("question",))]
    ts = [r["question"] for r in read_jsonl(DATA_DIR / "test" / f"{trait}.json", ("question",))]
    allq = qs + ts
    assert len(set(allq)) == len(allq)
    ws = [words(q) for q in allq]
    worst = max(jaccard(ws[i], ws[j]) for i in range(len(ws)) for j in range(i + 1, len(ws)))
    assert worst <= 0.6


def test_sampling_is_seeded(data_copy):
    a = load_bench(str(data_copy), "openness", n_search=10, n_test=5, seed=1)
    b = load_bench(str(data_copy), "openness", n_search=10, n_test=5, seed=1)
    c = load_bench(str(data_copy), "openness", n_search=10, n_test=5, seed=2)
    assert [r["question"] for r in a.search] == [r["question"] for r in b.search]
    assert [r["question"] for r in a.search] != [r["question"] for r in c.search]
    assert a.data_hash == b.data_hash and len(a.test) == 5
    assert a.persona_for("high", 3, 0) == b.persona_for("high", 3, 0)


def test_data_hash_follows_content(data_copy):
    h0 = load_bench(str(data_copy), "openness").data_hash
    f = data_copy / "test" / "Openness.json"
    f.write_text(f.read_text() + json.dumps({"question": "One more situation?"}) + "\n")
    assert load_bench(str(data_copy), "openness").data_hash != h0


def _corrupt(path, line_no, text):
    lines = path.read_text().splitlines()
    lines[line_no - 1] = text
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("text,msg", [
    ('{"question": "unterminated', r"Openness.json:7: invalid JSON"),
    ('{"BFI": "Openness"}', r"Openness.json:7: missing key 'question'"),
    ('{"question": "   "}', r"Openness.json:7: empty or non-text value for 'question'"),
    ('["a list"]', r"Openness.json:7: expected a JSON object"),
])
def test_bad_search_line_names_file_and_line(data_copy, text, msg):
    _corrupt(data_copy / "search" / "Openness.json", 7, text)
    with pytest.raises(PktError, match=msg):
        load_bench(str(data_copy), "openness")


def test_persona_missing_key(data_copy):
    p = data_copy / "description.json"
    rows = [json.loads(x) for x in p.read_text().splitlines()]
    del rows[2]["Openness_reversed"]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(PktError, match=r"description.json:3: missing key 'Openness_reversed'"):
        load_bench(str(data_copy), "openness")


def test_missing_folder_file_and_oversized_split(data_copy, tmp_path):
    with pytest.raises(PktError, match="data folder not found"):
        load_bench(str(tmp_path / "nope"), "openness")
    (data_copy / "test" / "Neuroticism.json").unlink()
    with pytest.raises(PktError, match=r"data file not found: .*Neuroticism.json"):
        load_bench(str(data_copy), "neuroticism")
    with pytest.raises(PktError, match=r"data.n_test=100000 is larger than"):
        load_bench(str(data_copy), "openness", n_test=100000)
    with pytest.raises(PktError, match="unknown trait 'charm'"):
        load_bench(str(data_copy), "charm")
