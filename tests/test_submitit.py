"""Sweeps on an existing engine: hydra-submitit-launcher's local executor (the code path of
SLURM), the SLURM launcher refused in one line where there is no SLURM, a failed job that
does not stop its sweep, and the sweep's summary."""

from __future__ import annotations

import json
import shlex
import struct
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, run_pkt, stderr_lines

TINY = ["model=tiny_random", "method=base", "trait=openness", "eval=none",
        "gen.max_new_tokens=4"]
TOO_MANY = "data.n_test=100000"  # passes the pre-flight, fails in the job (72 test questions)


def _errors(r) -> list[str]:
    return [x for x in stderr_lines(r) if "pkt: error:" in x]


def _sweep(tmp_path: Path) -> Path:
    (sweep,) = (tmp_path / "out" / "multiruns").glob("*/*")
    return sweep


def wandb_runs(folder: Path) -> list[dict]:
    """The run records of the offline W&B runs under ``folder/wandb`` (group, job type,
    name), read from their ``.wandb`` files (W&B's LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    out = []
    for f in sorted((folder / "wandb").glob("offline-run-*/run-*.wandb")):
        data, pos, buf = f.read_bytes(), 7, b""
        assert data[:4] == b":W&B"
        while pos + 7 <= len(data):
            left = 32768 - pos % 32768
            if left < 7:
                pos += left
                continue
            _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
            if n == 0 and kind == 0:
                pos += left
                continue
            buf += data[pos + 7:pos + 7 + n]
            pos += 7 + n
            if kind in (1, 4):  # a whole record, or the last piece of one
                rec = pb.Record()
                rec.ParseFromString(buf)
                buf = b""
                if rec.WhichOneof("record_type") == "run":
                    out.append({"id": rec.run.run_id, "group": rec.run.run_group,
                                "job_type": rec.run.job_type, "name": rec.run.display_name})
                    break
    return out


def test_submitit_local_sweep_runs_jobs_reports_a_failed_one_and_summarises(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher",
                        reason="hydra-submitit-launcher (pip install -e '.[slurm]')")
    r = run_pkt(["-m", "hydra/launcher=local", *TINY, "logger=wandb",
                 f"data.n_test=1,{TOO_MANY.split('=')[1]}"], tmp_path, timeout=300)
    # the failed job is one line at the end, not submitit's traceback; the sweep exits 2
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "JobError" not in r.stderr, r.stderr[-3000:]
    (line,) = _errors(r)
    assert line.startswith("pkt: error: sweep job #1 (") and \
        line.endswith("data.n_test=100000 is larger than the 72 records in "
                      f"{ROOT / 'pkt/dataset/data/test/Openness.json'}"), line
    sweep = _sweep(tmp_path)
    assert list((sweep / ".submitit").glob("*/*_log.out")), "the jobs ran through submitit"
    ok, failed = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit())
    assert ok.name == "0_base_openness_high" and failed.name == "1_base_openness_high"
    assert (ok / "metrics.json").is_file() and not (ok / "error.txt").exists()
    assert (failed / "error.txt").read_text().startswith("data.n_test=100000 is larger")
    assert not (failed / "metrics.json").exists()
    # run_info.json: the command that repeats the job (its own overrides, not .submitit/%j)
    info = json.loads((ok / "run_info.json").read_text())
    words = shlex.split(info["command"])
    assert words[:3] == ["python", "-m", "pkt.run"] and ".submitit" not in info["command"]
    assert words[3:] == info["overrides"] == yaml.safe_load(
        (ok / ".hydra" / "overrides.yaml").read_text())
    assert "data.n_test=1" in words and "-m" not in words[3:]
    # one offline W&B run per job, all in the sweep's group, and the summary's run beside them
    runs = [wandb_runs(d) for d in (ok, failed)]
    assert [len(x) for x in runs] == [1, 1] and runs[0][0]["id"] != runs[1][0]["id"]
    (summary_run,) = wandb_runs(sweep)
    assert {x[0]["group"] for x in runs} == {summary_run["group"]} == {sweep.name}
    assert summary_run["job_type"] == "summary"
    assert [x[0]["name"] for x in runs] == ["0-base-openness-high-tiny_random",
                                            "1-base-openness-high-tiny_random"]
    # the summary: one row per job, ok / failed with the error line
    md = (sweep / "summary.md").read_text()
    assert "2 job(s), 1 ok, 1 failed. W&B group" in md
    assert "| 0 | ok | base | openness | high |" in md
    assert "| 1 | failed | base | openness | high |" in md and "larger than the 72" in md
    assert f"summary: {sweep / 'summary.md'} (1 ok, 1 failed)" in r.stdout
    import csv

    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [(x["job"], x["status"]) for x in rows] == [("0", "ok"), ("1", "failed")]
    assert rows[0]["n"] == "1" and rows[0]["error"] == "" and rows[0]["method"] == "base"
    assert rows[1]["error"].startswith("data.n_test=100000 is larger")
    assert TOO_MANY in rows[1]["overrides"].split()


def test_slurm_launcher_without_slurm_is_one_line_before_any_job(tmp_path, monkeypatch):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher",
                        reason="hydra-submitit-launcher (pip install -e '.[slurm]')")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # no sbatch, whatever this machine has
    r = run_pkt(["-m", "hydra/launcher=slurm_gpu", *TINY, "logger=none", "aspect=high,low"],
                tmp_path, timeout=120)
    assert r.returncode == 2
    assert stderr_lines(r) == ["pkt: error: hydra/launcher=slurm_gpu submits the sweep's jobs "
                               "to SLURM, but there is no SLURM on this machine (no sbatch on "
                               "PATH): start the sweep on a SLURM login node, or run its jobs "
                               "here with hydra/launcher=local"], r.stderr
    assert not (tmp_path / "out").exists()  # nothing started
    # a preset that is a sweep by itself (hydra.mode: MULTIRUN) is checked the same way
    r = run_pkt(["experiment=compare", "hydra/launcher=slurm_gpu", "model=tiny_random"],
                tmp_path, timeout=120)
    assert r.returncode == 2 and "no SLURM on this machine" in r.stderr
    assert len(stderr_lines(r)) == 1 and not (tmp_path / "out").exists()


def test_a_submitit_launcher_without_its_plugin_is_one_line(monkeypatch):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from pkt import sweep
    from pkt.errors import PktError

    monkeypatch.setattr(sweep, "have_submitit", lambda: False)
    with pytest.raises(PktError, match=r"^hydra/launcher=local needs the "
                       r"hydra-submitit-launcher plugin: pip install -e '\.\[slurm\]'"):
        sweep.check_launcher(["-m", "hydra/launcher=local", "aspect=high,low"])
    assert sweep.check_launcher(["method=base"]) is False  # a single run: nothing composed


def test_a_failed_job_does_not_stop_a_sweep_on_the_basic_launcher(tmp_path):
    r = run_pkt(["-m", *TINY, "logger=none", f"{TOO_MANY},1"], tmp_path, timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    (line,) = _errors(r)
    assert line.startswith("pkt: error: sweep job #0 (") and "larger than the 72" in line
    assert "Traceback" not in r.stderr
    sweep = _sweep(tmp_path)
    assert (sweep / "1_base_openness_high" / "metrics.json").is_file()  # job #1 still ran
    info = json.loads((sweep / "1_base_openness_high" / "run_info.json").read_text())
    assert "data.n_test=1" in shlex.split(info["command"])  # this job's value, not the sweep's
    assert "100000,1" not in info["command"]
    md = (sweep / "summary.md").read_text()
    assert "| 0 | failed |" in md and "| 1 | ok |" in md and "W&B group" not in md
    assert "python -m pkt.run" in md.split("## Failed jobs")[1]  # how to repeat the failed job


def test_summary_rows_from_a_sweep_folder(tmp_path):
    """pkt.sweep.job_rows on hand-made job dirs: a finished run, a failed one, one killed
    before it wrote anything, a profile run; job order from hydra.yaml."""
    from pkt.sweep import render_markdown, write_summary

    def job(name, num, overrides, cfg, metrics=None, error=None):
        d = tmp_path / name
        (d / ".hydra").mkdir(parents=True)
        (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        (d / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"num": num}}}))
        (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
        if metrics is not None:
            (d / "metrics.json").write_text(json.dumps(metrics))
        if error is not None:
            (d / "error.txt").write_text(error + "\n")

    single = {"method": {"name": "prompt", "variant": "simple"}, "trait": {"name": "openness"},
              "aspect": "low", "model": {"name": "${oc.env:X}"},
              "profile": {"name": None, "traits": {}}}
    job("10_neuron_openness_high", 10, ["method=neuron", "method.strength=1.5"], single,
        metrics={"method": "neuron", "trait": "openness", "aspect": "high", "model": "m",
                 "params": {"strength": 1.5}, "trait_score": {"mean": 3.5, "sd": 0.5, "n": 4},
                 "ppl": {"mean": 12.0}, "capability": {"mc_ratio": 0.9, "ppl_ratio": 1.1},
                 "timings": {"total": 61.0}, "n": 4})
    job("2_prompt_openness_low", 2, ["method=prompt", "aspect=low"], single,
        error="unknown prompt variant 'x' | see docs")
    job("3_neuron_calm", 3, ["profile=calm"],
        {**single, "method": {"name": "neuron"}, "profile": {"name": "calm",
                                                             "traits": {"neuroticism": "low"}}})
    (tmp_path / ".submitit" / "1" / ".hydra").mkdir(parents=True)  # not a job
    md, rows = write_summary(tmp_path, {"_target_": "pkt.tracking.NullTracker"})
    assert [r["job"] for r in rows] == [2, 3, 10]
    failed, killed, ok = rows
    assert failed["status"] == "failed" and failed["method"] == "prompt_simple"
    assert (failed["trait"], failed["aspect"], failed["model"]) == ("openness", "low", None)
    assert killed["status"] == "failed" and killed["trait"] == "calm" and killed["aspect"] is None
    assert "did not finish" in killed["error"]
    assert ok["status"] == "ok" and ok["trait_score_mean"] == 3.5 and ok["strength"] == 1.5
    text = md.read_text()
    assert text == render_markdown(tmp_path, rows, None)
    assert "| 10 | ok | neuron | openness | high | 1.5 | 3.50 | – | 12.00 | 0.90 | 1.10 | 61 |" \
        in text
    assert "unknown prompt variant 'x' \\| see docs" in text  # a | in an error keeps the table
    assert "`python -m pkt.run method=prompt aspect=low`" in text
    assert (tmp_path / "summary.csv").read_text().count("\n") == 4
