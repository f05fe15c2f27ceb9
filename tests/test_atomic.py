"""The atomic writers of pkt.artifacts: files and folders get the mode the umask gives a
plain open() / mkdir() (not mkstemp's 0600), and a failure while writing leaves the old
file in place and no temporary file behind."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest

from pkt import artifacts
from pkt.artifacts import (
    ArtifactStore,
    atomic_dir,
    atomic_path,
    atomic_write,
    write_json_atomic,
    write_text_atomic,
)


@pytest.fixture()
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _by_name(tmp: Path) -> None:
    with open(tmp, "wb") as f:
        f.write(b"by name")


WRITERS = {
    "atomic_write bytes": lambda p: atomic_write(p, b"\x00\x01bytes"),
    "atomic_write str": lambda p: atomic_write(p, "text \u00e9\n"),
    "write_text_atomic": lambda p: write_text_atomic(p, "text\n"),
    "write_json_atomic": lambda p: write_json_atomic(p, {"a": [1, 2]}),
}


def _atomic_path(p: Path) -> None:
    with atomic_path(p) as tmp:
        _by_name(tmp)


WRITERS["atomic_path"] = _atomic_path


@pytest.mark.parametrize("umask,want", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)],
                         indirect=["umask"])
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_file_mode_follows_the_umask(tmp_path, umask, want, writer):
    new, old = tmp_path / "sub" / "new.json", tmp_path / "old.json"
    old.write_text("old")
    os.chmod(old, 0o600)  # replacing a file does not inherit its mode either
    for p in (new, old):
        WRITERS[writer](p)
        assert mode(p) == want, f"{writer}: {oct(mode(p))}"
    assert sorted(x.name for x in tmp_path.rglob("*")) == ["new.json", "old.json", "sub"]


def test_contents_round_trip(tmp_path):
    atomic_write(tmp_path / "b", b"\x00\xff")
    atomic_write(tmp_path / "t", "caf\u00e9")
    write_json_atomic(tmp_path / "j.json", {"x": Path("/a")})  # default=str, as before
    assert (tmp_path / "b").read_bytes() == b"\x00\xff"
    assert (tmp_path / "t").read_bytes() == "caf\u00e9".encode()
    assert (tmp_path / "j.json").read_text() == json.dumps({"x": "/a"}, indent=2) + "\n"
    with pytest.raises(TypeError, match="bytes or str"):
        atomic_write(tmp_path / "n", 3)
    assert not (tmp_path / "n").exists()


@pytest.mark.parametrize("umask", [0o022], indirect=True)
def test_folder_modes_follow_the_umask(tmp_path, umask):
    with atomic_dir(tmp_path / "d") as d:
        (d / "f.txt").write_text("x")
    assert mode(tmp_path / "d") == 0o755 and mode(tmp_path / "d" / "f.txt") == 0o644
    art = ArtifactStore(tmp_path / "store").save("stats", {"k": 1},
                                                 lambda d: (d / "x.bin").write_bytes(b"1"))
    assert mode(art) == 0o755 and mode(art / "meta.json") == 0o644
    assert mode(art / "x.bin") == 0o644


@pytest.mark.parametrize("umask", [0o022], indirect=True)
def test_matplotlib_savefig_through_atomic_path(tmp_path, umask):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1], [1, 0])
    out = tmp_path / "plot.png"
    try:
        with atomic_path(out) as tmp:
            assert tmp.suffix == ".png" and tmp.parent == tmp_path and tmp.name.startswith(".")
            fig.savefig(tmp, dpi=20)  # matplotlib picks the format from the suffix
    finally:
        plt.close(fig)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and mode(out) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]


# ---------------------------------------------------------------------------------------
# failures


def _disk_full(fd):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_failure_while_writing_keeps_the_old_file(tmp_path, monkeypatch, writer):
    target = tmp_path / "out.json"
    target.write_text("old contents")
    monkeypatch.setattr(artifacts.os, "fsync", _disk_full)
    with pytest.raises(OSError, match="No space left"):
        WRITERS[writer](target)
    assert target.read_text() == "old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_error_in_the_block_keeps_the_old_file(tmp_path):
    target = tmp_path / "plot.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="renderer died"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half a pn")
            raise RuntimeError("renderer died")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]


def test_error_in_a_folder_block_keeps_the_old_folder(tmp_path):
    final = tmp_path / "model"
    with atomic_dir(final) as d:
        (d / "weights").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as d:
            (d / "weights").write_text("v2, half")
            raise RuntimeError("killed")
    assert (final / "weights").read_text() == "v1"
    with atomic_dir(final) as d:  # and a successful rewrite replaces it whole
        (d / "other").write_text("v3")
    assert sorted(p.name for p in final.iterdir()) == ["other"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    store = ArtifactStore(tmp_path / "store")
    with pytest.raises(RuntimeError):
        store.save("stats", {"k": 1}, lambda d: (_ for _ in ()).throw(RuntimeError("x")))
    assert store.load("stats", {"k": 1}) is None
    # no temporary folder left either
    assert [p.relative_to(tmp_path) for p in (tmp_path / "store").rglob("*")] == [
        Path("store/stats")]
