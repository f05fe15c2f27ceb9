"""pkt.report on synthetic run directories (no model needed)."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pkt.errors import PktError
from pkt.report import CSV_COLUMNS, build_report

ROOT = Path(__file__).resolve().parent.parent

# (method, trait) -> (high score, low score)
SCORES = {
    ("base", "extraversion"): (3.0, 3.0), ("base", "agreeableness"): (3.5, 3.4),
    ("prompt_simple", "extraversion"): (4.0, 2.0), ("prompt_simple", "agreeableness"): (4.3, 2.2),
    ("neuron", "extraversion"): (4.2, 1.8), ("neuron", "agreeableness"): (4.1, 2.5),
}


def metrics(method, trait, aspect, score, strength=None, fluency=4.0):
    params = {"method": method.split("_")[0]}
    if strength is not None:
        params["strength"] = strength
    return {"method": method, "trait": trait, "aspect": aspect, "model": "smollm2_135m",
            "seed": 0, "n": 20, "params": params,
            "trait_score": {"mean": score, "sd": 0.5, "n": 20}, "trait_scorer": "offline-minilm",
            "fluency": {"mean": fluency, "sd": 0.3, "n": 20} if fluency is not None else None,
            "ppl": {"mean": 7.0, "sd": 1.0}, "distinct_2": 0.8, "repetition": 0.02,
            "capability": {"mc_ratio": 0.9, "ppl_ratio": 1.1}, "timings": {"total": 12.5}}


def write_run(d: Path, m) -> Path:
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(m if isinstance(m, str) else json.dumps(m))
    return d


def make_sweep(root: Path, strength_sweep: bool = True) -> Path:
    i = 0
    for (method, trait), (hi, lo) in SCORES.items():
        for aspect, score in (("high", hi), ("low", lo)):
            strength = 1.0 if method == "neuron" else None
            write_run(root / f"{i}_{method}_{trait}_{aspect}",
                      metrics(method, trait, aspect, score, strength,
                              fluency=None if method == "base" else 4.0))
            i += 1
    if strength_sweep:
        for s, hi, lo in ((0.6, 3.5, 2.6), (1.5, 4.6, 1.4)):
            for aspect, score in (("high", hi), ("low", lo)):
                write_run(root / f"{i}_neuron_extraversion_{aspect}_s{s}",
                          metrics("neuron", "extraversion", aspect, score, s, fluency=3.0))
                i += 1
    return root


def n_runs(strength_sweep=True):
    return 2 * len(SCORES) + (4 if strength_sweep else 0)


def test_report_files_and_tables(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    md = build_report([sweep])
    assert md == sweep / "report.md"
    text = md.read_text()
    for label in ("| base | high |", "| prompt_simple | low |", "| neuron | high |",
                  "| neuron | low |"):
        assert label in text
    header = next(line for line in text.splitlines() if line.startswith("| method | aspect |"))
    for col in ("openness", "conscientiousness", "extraversion", "agreeableness",
                "neuroticism", "fluency", "capability", "ppl ratio"):
        assert col in header
    # method order: base, prompt_simple, neuron; high before low
    assert text.index("| base | high |") < text.index("| base | low |") \
        < text.index("| prompt_simple | high |") < text.index("| neuron | high |")
    # the neuron extraversion cell uses the strength-1.0 run (4.2), marked and footnoted
    neuron_high = next(line for line in text.splitlines() if line.startswith("| neuron | high |"))
    assert "4.20 ± 0.50 †" in neuron_high
    assert "| – |" in neuron_high  # openness is missing
    assert "default strength 1.0" in text
    # base has no fluency -> dash; capability/ppl ratio are shown
    base_high = next(line for line in text.splitlines() if line.startswith("| base | high |"))
    assert base_high.endswith("| – | 0.90 | 1.10 |")

    sep = text.split("## Separation")[1].split("##")[0]
    neuron_sep = next(line for line in sep.splitlines() if line.startswith("| neuron |"))
    assert "+2.40" in neuron_sep  # 4.2 - 1.8 at the default strength
    assert "+1.60" in neuron_sep  # agreeableness 4.1 - 2.5

    assert "## Strength sweep" in text
    assert "| neuron | extraversion | high | 0.6 | 3.50 | 3.00 | 1 |" in text
    assert "| neuron | extraversion | low | 1.5 | 1.40 | 3.00 | 1 |" in text
    assert "offline-minilm" in text and "smollm2_135m" in text
    assert str(sweep / "0_base_extraversion_high") in text

    with open(sweep / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n_runs()
    assert list(rows[0].keys()) == CSV_COLUMNS
    r = next(r for r in rows if r["run_dir"].endswith("_s0.6") and r["aspect"] == "high")
    assert (r["method"], r["trait"], float(r["strength"]), float(r["trait_score_mean"])) == \
        ("neuron", "extraversion", 0.6, 3.5)
    assert float(r["total_seconds"]) == 12.5
    base = next(r for r in rows if r["method"] == "base")
    assert base["fluency_mean"] == "" and base["strength"] == ""

    for name in ("scores_by_method.png", "separation.png", "strength_curve.png"):
        p = sweep / name
        assert p.is_file() and p.stat().st_size > 1000
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_strength_table_without_sweep(tmp_path):
    sweep = make_sweep(tmp_path / "sweep", strength_sweep=False)
    out = tmp_path / "out"
    md = build_report([sweep], out=out, title="My study")
    text = md.read_text()
    assert md == out / "report.md" and text.startswith("# My study")
    assert "Strength sweep" not in text and "†" not in text
    assert not (out / "strength_curve.png").exists()
    assert (out / "scores_by_method.png").stat().st_size > 0
    with open(out / "report.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == n_runs(False)


def test_single_run_dir_and_optional_fields(tmp_path):
    run = write_run(tmp_path / "run", {"method": "neuron", "trait": "openness", "aspect": "low"})
    md = build_report([run])
    assert md == run / "report" / "report.md"
    text = md.read_text()
    assert "| neuron | low | – |" in text
    assert "No method has both a high and a low run" in text


def test_tracker_receives_images_and_rows(tmp_path):
    class Rec:
        def __init__(self):
            self.images, self.tables = [], {}

        def log_image(self, name, path):
            self.images.append((name, Path(path)))

        def log_table(self, name, rows):
            self.tables[name] = rows

    rec = Rec()
    build_report([make_sweep(tmp_path / "sweep")], tracker=rec)
    assert {p.name for _, p in rec.images} == {"scores_by_method.png", "separation.png",
                                               "strength_curve.png"}
    (rows,) = rec.tables.values()
    assert len(rows) == n_runs() and set(rows[0]) == set(CSV_COLUMNS)


def test_unreadable_metrics_is_skipped(tmp_path, capsys):
    sweep = make_sweep(tmp_path / "sweep", strength_sweep=False)
    bad = write_run(sweep / "99_broken", '{"method": "neuron", "trait"') / "metrics.json"
    build_report([sweep])
    err = capsys.readouterr().err
    assert "warning" in err and str(bad) in err
    with open(sweep / "report.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == n_runs(False)


def test_errors(tmp_path):
    with pytest.raises(PktError, match="no such file"):
        build_report([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(PktError, match="no metrics.json"):
        build_report([tmp_path / "empty"])


def cli(*args):
    return subprocess.run([sys.executable, "-m", "pkt.report", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    r = cli(sweep)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines() == [str(sweep / "report.md")]
    assert (sweep / "report.md").is_file()

    r = cli(tmp_path / "nope")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pkt: error:")
