"""python -m pkt.annotate: blind packets, ratings validation, agreement figures (no model)."""

import csv
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from pkt.annotate import main, score_packet
from pkt.annotation import stats
from pkt.annotation.packet import make_packet
from pkt.annotation.ratings import check, read_ratings
from pkt.errors import PktError
from pkt.eval.judge import build_rubric

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("base", "prompt_simple", "neuron")
ASPECTS = ("high", "low")
TRAITS = ("openness", "neuroticism")
N_ANSWERS = 5
# the rating every answer of a (method, aspect) deserves, for either trait
TRUTH = {("base", "high"): 2, ("base", "low"): 2, ("prompt_simple", "high"): 3,
         ("prompt_simple", "low"): 2, ("neuron", "high"): 4, ("neuron", "low"): 1}


def fake_runs(root: Path, traits=TRAITS, n: int = N_ANSWERS) -> list[Path]:
    """One run dir per method x aspect x trait, as python -m pkt.run writes them."""
    dirs = []
    for trait in traits:
        for method in METHODS:
            for aspect in ASPECTS:
                d = root / f"{trait}-{method}-{aspect}"
                d.mkdir(parents=True)
                recs = [{"id": k + 1, "question": f"What do you make of topic {k}?",
                         "response": f"Reply {k} of run {len(dirs)}.", "n_tokens": 6,
                         "method": method, "trait": trait, "aspect": aspect, "model": "tiny",
                         "params": {"method": method},
                         # a monotone function of the truth: the scorer agrees perfectly
                         "trait_score": 1.0 + 0.5 * TRUTH[method, aspect]} for k in range(n)]
                (d / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
                (d / "metrics.json").write_text(json.dumps({
                    "method": method, "trait": trait, "aspect": aspect, "model": "tiny",
                    "n": n, "trait_scorer": "offline-minilm"}))
                dirs.append(d)
    return dirs


@pytest.fixture()
def runs(tmp_path):
    return fake_runs(tmp_path / "runs")


@pytest.fixture()
def packet(tmp_path, runs):
    out = tmp_path / "packet"
    make_packet(runs, out, per_condition=3, seed=7)
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def key_items(packet_dir: Path) -> dict:
    return json.loads((packet_dir / "key.json").read_text())["items"]


def write_ratings(path: Path, ratings: dict[str, int], fluency: int | None = 4) -> Path:
    lines = [json.dumps({"id": i, "trait": r, "fluency": fluency}) for i, r in ratings.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def truth(packet_dir: Path) -> dict[str, int]:
    return {i: TRUTH[k["method"], k["aspect"]] for i, k in key_items(packet_dir).items()}


# ---------------------------------------------------------------- make


def test_packet_is_blind_capped_and_keyed(packet, runs):
    rows = read_jsonl(packet / "packet.jsonl")
    assert len(rows) == len(runs) * 3  # 12 conditions, capped at 3 of 5 answers each
    for r in rows:
        assert list(r) == ["id", "trait", "question", "response"]
        assert re.fullmatch(r"a\d{4}", r["id"]) and r["trait"] in TRAITS
    text = (packet / "packet.jsonl").read_text() + (packet / "packet.csv").read_text()
    for word in (*METHODS, *ASPECTS, "runs", "method", "aspect", "trait_score", "generations"):
        assert word not in text
    with open(packet / "packet.csv", newline="") as f:
        assert list(csv.DictReader(f)) == [{k: str(v) for k, v in r.items()} for r in rows]
    key = key_items(packet)
    assert list(key) == [r["id"] for r in rows]
    counts = Counter((k["method"], k["trait"], k["aspect"]) for k in key.values())
    for k in key.values():
        src, line = k["source"].rsplit(":", 1)
        rec = read_jsonl(Path(src))[int(line) - 1]
        assert Path(src).parent == Path(k["run_dir"]) and rec["method"] == k["method"]
        assert k["trait_score"] == rec["trait_score"] and k["trait_scorer"] == "offline-minilm"
    assert set(counts.values()) == {3} and len(counts) == 12
    # shuffled: the conditions are interleaved, not in blocks
    conds = [(k["method"], k["trait"], k["aspect"]) for k in key.values()]
    assert sum(a != b for a, b in zip(conds, conds[1:])) > len(conds) // 2
    readme = (packet / "README.md").read_text()
    assert "key.json" in readme and "must not be given to annotators" in readme
    man = json.loads((packet / "manifest.json").read_text())
    assert man["seed"] == 7 and man["n_items"] == 36 and len(man["run_dirs"]) == 12
    assert man["created"] and sum(man["counts"].values()) == 36


def test_packet_is_deterministic_with_seed(tmp_path, runs):
    make_packet(runs, tmp_path / "a", per_condition=3, seed=1)
    make_packet(list(reversed(runs)), tmp_path / "b", per_condition=3, seed=1)
    make_packet(runs, tmp_path / "c", per_condition=3, seed=2)
    a, b, c = ((tmp_path / x / "packet.jsonl").read_text() for x in "abc")
    assert a == b and a != c
    assert key_items(tmp_path / "a") == key_items(tmp_path / "b")
    # a cap above the answers available takes them all
    make_packet(runs, tmp_path / "all", per_condition=50, seed=1)
    assert len(key_items(tmp_path / "all")) == len(runs) * N_ANSWERS


def test_rubric_reuses_the_judge_texts(packet):
    text = packet.joinpath("rubric.md").read_text()
    for trait in TRAITS:
        first = build_rubric("trait", "q", "r", trait=trait).splitlines()[0]
        assert first in text
    assert "anxiety, anger, depression" in text and "imagination" in text  # facets from conf/
    assert build_rubric("fluency", "q", "r").splitlines()[0] in text
    assert '{"id": "a0001", "trait": 4, "fluency": 5}' in text and "id,trait,fluency" in text
    assert "### Question" not in text


def test_make_errors(tmp_path, runs):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(PktError, match="no generations.jsonl"):
        make_packet([tmp_path / "nothing"], tmp_path / "o1")
    bad = runs[0] / "generations.jsonl"
    bad.write_text(bad.read_text().splitlines()[0] + "\n{not json\n")
    with pytest.raises(PktError, match=re.escape(f"{bad}:2")):
        make_packet(runs, tmp_path / "o2")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "generations.jsonl").write_text("\n")
    with pytest.raises(PktError, match="nothing to annotate"):
        make_packet([empty], tmp_path / "o3")
    make_packet(runs[1:], tmp_path / "o4")
    with pytest.raises(PktError, match="already holds a packet"):
        make_packet(runs[1:], tmp_path / "o4")
    (tmp_path / "o4" / "annotation.md").write_text("old results")
    make_packet(runs[1:2], tmp_path / "o4", force=True)
    assert not (tmp_path / "o4" / "annotation.md").exists()  # stale results are dropped
    assert len(key_items(tmp_path / "o4")) == N_ANSWERS
    assert not (tmp_path / "o2").exists()  # nothing written before an error
    # a folder of other files is never written into, --force or not
    other = tmp_path / "notes"
    other.mkdir()
    (other / "README.md").write_text("mine")
    for force in (False, True):
        with pytest.raises(PktError, match="is a folder that holds other files .README.md.; "
                                           "a packet needs a new or empty folder"):
            make_packet(runs, other, force=force)
    assert [p.name for p in other.iterdir()] == ["README.md"]
    assert (other / "README.md").read_text() == "mine"


def test_make_takes_a_sweep_folder(tmp_path, runs):
    """A sweep folder (or any folder above run directories) stands for all its runs."""
    one = make_packet([tmp_path / "runs"], tmp_path / "from_sweep", per_condition=3, seed=7)
    each = make_packet(runs, tmp_path / "from_runs", per_condition=3, seed=7)
    assert one["run_dirs"] == each["run_dirs"] and len(one["run_dirs"]) == len(runs)
    assert read_jsonl(tmp_path / "from_sweep" / "packet.jsonl") == \
        read_jsonl(tmp_path / "from_runs" / "packet.jsonl")


def test_runs_of_one_method_with_other_settings_are_other_conditions(tmp_path):
    """Two neuron budgets on one trait: two conditions, labelled by the setting that differs
    (a strength chosen by strength=auto is a result, not a setting, and is left out)."""
    dirs = []
    for k_min, chosen in ((0.005, {"high": 0.5, "low": 3.0}), (0.013, {"high": 2.0, "low": 1.0})):
        for aspect in ASPECTS:
            d = tmp_path / "runs" / f"neuron-{k_min}-{aspect}"
            d.mkdir(parents=True)
            recs = [{"id": k + 1, "question": f"Q{k}?", "response": f"{k_min} {aspect} {k}",
                     "trait": "openness", "aspect": aspect} for k in range(3)]
            (d / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
            params = {"method": "neuron", "k_min": k_min, "strength": chosen[aspect],
                      "strength_mode": "auto", "keep_prob": 0.9}
            (d / "metrics.json").write_text(json.dumps({
                "method": "neuron", "trait": "openness", "aspect": aspect, "params": params}))
            dirs.append(d)
    m = make_packet(dirs, tmp_path / "p", per_condition=3, seed=0)
    assert m["counts"] == {"neuron (k_min=0.005)/openness/high": 3,
                           "neuron (k_min=0.005)/openness/low": 3,
                           "neuron (k_min=0.013)/openness/high": 3,
                           "neuron (k_min=0.013)/openness/low": 3}
    for item in key_items(tmp_path / "p").values():
        assert item["method"].endswith(f"(k_min={Path(item['run_dir']).name.split('-')[1]})")
    # fixed strengths are settings: a strength sweep is one condition per strength
    for d, s in zip(dirs, (0.6, 0.6, 1.0, 1.0)):
        m = json.loads((d / "metrics.json").read_text())
        m["params"].update(strength=s, strength_mode="fixed", k_min=0.005)
        (d / "metrics.json").write_text(json.dumps(m))
    m = make_packet(dirs, tmp_path / "q", per_condition=3, seed=0)
    assert sorted(m["counts"]) == ["neuron (strength=0.6)/openness/high",
                                   "neuron (strength=0.6)/openness/low",
                                   "neuron (strength=1.0)/openness/high",
                                   "neuron (strength=1.0)/openness/low"]
    # one setting only (the usual case): the plain method name
    one = make_packet(dirs[:2], tmp_path / "r", per_condition=3, seed=0)
    assert sorted(one["counts"]) == ["neuron/openness/high", "neuron/openness/low"]


# ---------------------------------------------------------------- statistics


def test_ranks_and_spearman():
    assert stats.rankdata([10, 20, 20, 30]).tolist() == [1.0, 2.5, 2.5, 4.0]
    assert stats.rankdata([3, 1, 3, 3]).tolist() == [3.0, 1.0, 3.0, 3.0]
    assert stats.spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert stats.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert stats.spearman([1, 1, 1], [1, 2, 3]) is None and stats.spearman([1], [2]) is None
    # ties: ranks x = (1, 2.5, 2.5, 4), y = (1, 2, 3, 4); sum dx*dy = 4.5, sum dx^2 = 4.5,
    # sum dy^2 = 5, so rho = 4.5 / sqrt(4.5 * 5) = 0.948683
    assert stats.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, abs=1e-6)


def test_kappa_and_alpha_by_hand():
    a, b = [1, 2, 3, 3], [1, 3, 3, 2]
    # kappa: observed sum w*O = (1 + 1) / 4 = 0.5 with w = (i - j)^2. Marginals: both raters
    # have counts (1, 1, 2) on values (1, 2, 3); sum over i, j of c_i c_j (i - j)^2 = 22,
    # so sum w*E = 22 / 16 = 1.375 and kappa = 1 - 0.5 / 1.375 = 7/11.
    assert stats.weighted_kappa(a, b) == pytest.approx(7 / 11)
    # alpha: coincidences o11 = 2, o23 = o32 = 2, o33 = 2; n_1 = 2, n_2 = 2, n_3 = 4, n = 8.
    # interval: D_o = (2 + 2) * 1 / 8 = 0.5; D_e = (2*2*2*1 + 2*2*4*4 + 2*2*4*1) / (8*7)
    # = 88/56 = 11/7; alpha = 1 - 0.5 * 7/11 = 15/22.
    units = [[x, y] for x, y in zip(a, b)]
    assert stats.krippendorff_alpha(units, "interval") == pytest.approx(15 / 22)
    # ordinal: delta12 = (2 + 2 - 2)^2 = 4, delta23 = (2 + 4 - 3)^2 = 9, delta13 = (8 - 3)^2
    # = 25; D_o = 4 * 9 / 8 = 4.5; D_e = (2*2*2*4 + 2*2*4*25 + 2*2*4*9) / 56 = 576/56;
    # alpha = 1 - 4.5 * 56 / 576 = 9/16.
    assert stats.krippendorff_alpha(units, "ordinal") == pytest.approx(9 / 16)
    # a unit with a single rating is not pairable and changes nothing
    assert stats.krippendorff_alpha([*units, [5, None]], "interval") == pytest.approx(15 / 22)
    with pytest.raises(ValueError):
        stats.krippendorff_alpha(units, "nominal")


def test_alpha_matches_krippendorffs_published_example():
    # Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability": 4 coders, 12 units,
    # missing values; the paper gives alpha = 0.849 (interval) and 0.815 (ordinal)
    N = None
    coders = [[1, 2, 3, 3, 2, 1, 4, 1, 2, N, N, N], [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, N, 3],
              [N, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, N], [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, N]]
    units = [list(u) for u in zip(*coders)]
    assert stats.krippendorff_alpha(units, "interval") == pytest.approx(0.849, abs=5e-4)
    assert stats.krippendorff_alpha(units, "ordinal") == pytest.approx(0.815, abs=5e-4)


def test_identical_raters_agree_perfectly():
    a = [1, 2, 2, 3, 5, 4, 4]
    assert stats.weighted_kappa(a, a) == pytest.approx(1.0)
    assert stats.spearman(a, a) == pytest.approx(1.0)
    for metric in ("interval", "ordinal"):
        assert stats.krippendorff_alpha([[x, x, x] for x in a], metric) == pytest.approx(1.0)
    assert stats.weighted_kappa([3, 3], [3, 3]) is None  # no variation: undefined
    assert stats.mean_sd([2, None, 4]) == {"mean": 3.0, "sd": pytest.approx(2 ** 0.5), "n": 2}


# ---------------------------------------------------------------- score


def test_score_with_known_answers(tmp_path, packet):
    true = truth(packet)
    ids = list(true)
    a = write_ratings(tmp_path / "A.jsonl", true)
    b = write_ratings(tmp_path / "B.jsonl", {i: r + 1 for i, r in true.items()})
    c = write_ratings(tmp_path / "C.jsonl", dict(true))
    fig = score_packet(packet, [a, b, c], names=["A", "B", "C"], warn=lambda _: None)
    rows = {(r["method"], r["trait"], r["aspect"]): r for r in fig["conditions"]["trait"]}
    for (method, _, aspect), r in rows.items():
        t = TRUTH[method, aspect]
        assert r["annotators"]["A"]["mean"] == t and r["annotators"]["B"]["mean"] == t + 1
        assert r["pooled"] == {"mean": pytest.approx(t + 1 / 3), "sd": 0.0, "n": 3}
    for s in fig["separation"]:
        expect = TRUTH[s["method"], "high"] - TRUTH[s["method"], "low"]  # 0, 1 and 3
        assert s["pooled"] == pytest.approx(expect)
        assert s["annotators"] == {"A": expect, "B": expect, "C": expect}
        assert s["offline"] == pytest.approx(0.5 * expect)
    assert len(fig["separation"]) == len(METHODS) * len(TRAITS)
    pairs = {(p["a"], p["b"]): p for p in fig["agreement"]["trait"]["pairs"]}
    ac = pairs["A", "C"]
    for k in ("kappa_quadratic", "spearman_items", "spearman_conditions"):
        assert ac[k] == pytest.approx(1.0)
    ab = pairs["A", "B"]  # a constant shift: same order, imperfect agreement on the scale
    assert ab["spearman_items"] == pytest.approx(1.0) and ab["spearman_conditions"] == pytest.approx(1.0)
    assert ab["kappa_quadratic"] < 0.9 and ab["n_items"] == len(ids)
    assert fig["agreement"]["trait"]["alpha"]["interval"] < 1
    assert fig["agreement"]["trait"]["alpha_metric"] == "interval"
    fl = fig["conditions"]["fluency"][0]
    assert fl["pooled"]["mean"] == 4.0 and fl["annotators"]["B"]["mean"] == 4.0
    off = fig["trait_score_vs_annotators"]["by_trait"]
    assert set(off) == {*TRAITS, "all"}
    assert off["all"]["answers"] == {"spearman": pytest.approx(1.0), "n": len(ids)}
    assert off["openness"]["cells"] == {"spearman": pytest.approx(1.0), "n": 6}
    for name in ("annotation.md", "annotation.json", "annotation.png"):
        assert (packet / name).stat().st_size > 0
    assert json.loads((packet / "annotation.json").read_text())["separation"] == fig["separation"]
    md = (packet / "annotation.md").read_text()
    assert "| neuron | openness | +3.00 |" in md and "A × B" in md

    # identical annotators: every agreement figure is exactly 1
    fig = score_packet(packet, [a, c], warn=lambda _: None)
    ag = fig["agreement"]["trait"]
    assert [a["name"] for a in fig["annotators"]] == ["A", "C"]
    assert ag["pairs"][0]["kappa_quadratic"] == pytest.approx(1.0)
    assert ag["alpha"] == {"interval": pytest.approx(1.0), "ordinal": pytest.approx(1.0)}


def test_separation_by_hand_with_a_perturbed_annotator(tmp_path, packet):
    true = truth(packet)
    key = key_items(packet)
    nh = sorted(i for i, k in key.items() if (k["method"], k["trait"], k["aspect"])
                == ("neuron", "openness", "high"))
    perturbed = dict(true)
    perturbed[nh[0]] = 2  # one of three neuron/high answers rated 2 instead of 4
    missing = [i for i, k in key.items() if k["method"] == "base"][:4]
    for i in missing:
        del perturbed[i]  # C leaves out four other items
    warnings = []
    fig = score_packet(packet, [write_ratings(tmp_path / "A.jsonl", true),
                                write_ratings(tmp_path / "C.jsonl", perturbed)],
                       names=["A", "C"], warn=warnings.append)
    s = next(s for s in fig["separation"] if (s["method"], s["trait"]) == ("neuron", "openness"))
    # C: high = (2 + 4 + 4) / 3, low = 1 -> 7/3. Pooled items: (4 + 2) / 2 = 3, 4, 4 -> high
    # 11/3, low 1 -> 8/3. A: 4 - 1 = 3.
    assert s["annotators"]["C"] == pytest.approx(7 / 3) and s["annotators"]["A"] == 3
    assert s["pooled"] == pytest.approx(8 / 3)
    assert any("4 of 36 packet items not rated" in w for w in warnings)
    assert fig["annotators"][1]["n_missing"] == 4 and fig["agreement"]["trait"]["pairs"][0]["n_items"] == 32


def test_ratings_validator_names_file_and_line(tmp_path, packet):
    ids = list(key_items(packet))
    f = tmp_path / "bad.jsonl"
    f.write_text("\n".join([
        json.dumps({"id": ids[0], "trait": 3, "fluency": 4}),          # 1 ok
        "{oops",                                                        # 2 not JSON
        json.dumps({"id": "zz99", "trait": 3}),                         # 3 unknown id
        json.dumps({"id": ids[1], "trait": 6}),                         # 4 out of range
        json.dumps({"id": ids[0], "trait": 2}),                         # 5 duplicate
        json.dumps({"id": ids[2], "trait": 3.5}),                       # 6 non-integer
        json.dumps({"id": ids[3], "trait": "x"}),                       # 7 non-integer
        json.dumps({"id": ids[4]}),                                     # 8 missing rating
        json.dumps({"id": ids[5], "trait": True}),                      # 9 not a number
        json.dumps({"id": ids[6], "trait": "4", "fluency": 0}),         # 10 fluency range
        json.dumps({"id": ids[7], "trait": "4", "fluency": None}),      # 11 ok, no fluency
    ]) + "\n")
    r = read_ratings(f, ids)
    got = dict(p.split(": ", 1) for p in r.problems)
    assert list(got) == [f"{f}:{n}" for n in (2, 3, 4, 5, 6, 7, 8, 9, 10)]
    assert "not valid JSON" in got[f"{f}:2"] and "unknown id 'zz99'" in got[f"{f}:3"]
    assert "out of range" in got[f"{f}:4"] and "duplicate id" in got[f"{f}:5"]
    assert "first at line 1" in got[f"{f}:5"]
    assert "not a whole number" in got[f"{f}:6"] and "not a whole number" in got[f"{f}:7"]
    assert "missing trait rating" in got[f"{f}:8"] and "not a whole number" in got[f"{f}:9"]
    assert "fluency rating 0 is out of range" in got[f"{f}:10"]
    assert r.trait == {ids[0]: 3, ids[7]: 4} and r.fluency == {ids[0]: 4}
    assert len(r.missing) == len(ids) - 2
    with pytest.raises(PktError, match=re.escape(f"{f}:2")) as e:
        check(r)
    assert "9 invalid line(s)" in str(e.value) and "\n" not in str(e.value)
    warnings = check(r, skip_invalid=True)
    assert len(warnings) == 10 and "34 of 36 packet items not rated" in warnings[-1]


def test_csv_ratings_and_unusable_files(tmp_path, packet):
    ids = list(key_items(packet))
    f = tmp_path / "ann.csv"
    f.write_text("\ufeffID,Trait,Fluency,comment\n" + f"{ids[0]}, 3 ,5,fine\n{ids[1]},4,,\n\n"
                 + f"{ids[2]},9,1,\n")
    r = read_ratings(f, ids)
    assert r.trait == {ids[0]: 3, ids[1]: 4} and r.fluency == {ids[0]: 5}
    assert r.problems == [f"{f}:5: id '{ids[2]}': trait rating 9 is out of range (1..5)"]
    semi = tmp_path / "semi.txt"  # a spreadsheet's semicolon CSV, sniffed by content
    semi.write_text(f"id;trait;fluency\n{ids[0]};2;3\n")
    assert read_ratings(semi, ids).trait == {ids[0]: 2}
    sniffed = tmp_path / "ratings.out"
    sniffed.write_text(json.dumps({"id": ids[0], "trait": 1}) + "\n")
    assert read_ratings(sniffed, ids).trait == {ids[0]: 1}
    for name, content, msg in [
        ("empty.csv", "\n", "empty ratings file"),
        ("nohead.csv", "a0001,3,4\n", "needs a header"),
        ("allbad.jsonl", '{"id": "nope", "trait": 3}\n[1]\n', "no valid rating in the file"),
    ]:
        p = tmp_path / name
        p.write_text(content)
        with pytest.raises(PktError, match=msg) as e:
            read_ratings(p, ids)
        assert "\n" not in str(e.value)
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(PktError, match="not a UTF-8 text file"):
        read_ratings(tmp_path / "bin.csv", ids)


def test_score_errors(tmp_path, packet):
    a = write_ratings(tmp_path / "A.jsonl", truth(packet))
    with pytest.raises(PktError, match="no key.json"):
        score_packet(tmp_path, [a])
    with pytest.raises(PktError, match="--names gives 1 name"):
        score_packet(packet, [a, a], names=["x"])
    fig = score_packet(packet, [a, a], warn=lambda _: None)  # same stem twice: made distinct
    assert [x["name"] for x in fig["annotators"]] == ["A", "A-2"]
    assert fig["agreement"]["trait"]["pairs"][0]["kappa_quadratic"] == pytest.approx(1.0)


# ---------------------------------------------------------------- command line


def annotate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pkt.annotate", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli_round_trip_and_error_format(tmp_path):
    runs = fake_runs(tmp_path / "runs", traits=("openness",), n=4)
    out = tmp_path / "pk"
    r = annotate("make", *runs, "--out", out, "--per-condition", "2", "--seed", "3")
    assert r.returncode == 0, r.stderr
    assert "12 items from 6 conditions" in r.stdout
    ratings = truth(out)
    a = write_ratings(tmp_path / "ann1.jsonl", ratings)
    b = tmp_path / "ann2.csv"
    b.write_text("id,trait,fluency\n" + "".join(f"{i},{v},3\n" for i, v in ratings.items()))
    r = annotate("score", out, a, b, "--names", "first", "second")
    assert r.returncode == 0, r.stderr
    for name in ("annotation.md", "annotation.json", "annotation.png"):
        assert (out / name).is_file()
    fig = json.loads((out / "annotation.json").read_text())
    assert [x["name"] for x in fig["annotators"]] == ["first", "second"]
    assert fig["agreement"]["trait"]["alpha"]["interval"] == pytest.approx(1.0)

    # user errors: one line on stderr, exit status 2
    b.write_text("id,trait,fluency\n" + f"{next(iter(ratings))},7,3\n")
    bad_ratings = annotate("score", out, a, b)
    bad_make = annotate("make", tmp_path / "nowhere", "--out", tmp_path / "o")
    again = annotate("make", *runs, "--out", out)
    for r, text in [(bad_ratings, f"{b}:2: id"), (bad_make, "not a run directory"),
                    (again, "already holds a packet")]:
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert r.returncode == 2 and len(lines) == 1, r.stderr
        assert lines[0].startswith("pkt: error: ") and text in lines[0]


def test_main_returns_2_on_error(tmp_path, capsys):
    assert main(["score", str(tmp_path), str(tmp_path / "x.jsonl")]) == 2
    assert capsys.readouterr().err.startswith("pkt: error: ")
