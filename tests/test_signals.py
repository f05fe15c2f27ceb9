"""Processes that die together: SIGTERM stops a run like Ctrl-C (one line saying what was
kept, exit status 143), and identification's two worker processes never outlive their
parent, even after ``kill -9``; the next run resumes from what was kept."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.conftest import run_dirs
from tests.test_hardening import SLOW_SEARCH, _start

TWO_WORKERS = [a for a in SLOW_SEARCH if not a.startswith("search_gen.workers")] + \
    ["search_gen.workers=2"]


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(d.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_for_workers(p, chunks, n: int = 2, timeout: float = 60) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and p.poll() is None:
        kids = _children(p.pid)
        if len(kids) >= n and b"persona answers" in b"".join(chunks):
            return kids
        time.sleep(0.05)
    raise AssertionError(b"".join(chunks).decode()[-2000:])


def _gone(pids: list[int], timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(_alive(x) for x in pids):
            return True
        time.sleep(0.1)
    return False


def test_sigterm_is_one_line_exit_143_and_the_workers_stop(tmp_path):
    p, chunks = _start(tmp_path, TWO_WORKERS)
    workers = _wait_for_workers(p, chunks)
    time.sleep(1.0)
    p.send_signal(signal.SIGTERM)
    rc = p.wait(timeout=60)
    time.sleep(0.2)
    err = b"".join(chunks).decode()
    lines = [x for x in err.splitlines() if x.strip()]
    assert rc == 143, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    hits = [x for x in lines if "pkt: error:" in x]
    assert len(hits) == 1 and hits[0] == lines[-1], err[-3000:]
    assert hits[0].startswith("pkt: error: interrupted"), hits[0]
    assert _gone(workers), "identification workers outlived the run"
    assert not run_dirs(tmp_path)
    (run,) = [d for d in (tmp_path / "out").rglob("error.txt")]
    assert run.read_text().startswith("interrupted")
    # the same command again finishes
    p, chunks = _start(tmp_path, TWO_WORKERS)
    assert p.wait(timeout=180) == 0, b"".join(chunks).decode()[-3000:]
    assert len(run_dirs(tmp_path)) == 1


def test_kill_9_of_the_runner_takes_its_workers_along(tmp_path):
    p, chunks = _start(tmp_path, TWO_WORKERS)
    workers = _wait_for_workers(p, chunks)
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    assert _gone(workers), "identification workers outlived a killed runner"
