"""Cached artifacts: directories with ``meta.json`` (key, format version, file checksums).

An artifact is written into a temporary sibling directory and renamed into place, so a
reader never sees a half-written one; the key decides the directory name, and the stored
key and checksums are verified on every load.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pkt.errors import PktError
from pkt.faults import fault_point

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------
# atomic writes: a reader sees the old file or the new one, never a half-written one.
# The temporary sibling is created with os.open(..., 0o666) / os.mkdir(..., 0o777), so
# the kernel applies the umask (and a directory's default ACL) exactly as for a plain
# open(): 0644 / 0755 under umask 022, where tempfile.mkstemp / mkdtemp would give 0600 /
# 0700. Data is fsynced before the rename, and the rename itself after it.


def _temp_sibling(path: Path, suffix: str, make) -> Path:
    """A new, unused ``.<name>.<random><suffix>`` next to ``path``, made by ``make(tmp)``."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{suffix}")
        try:
            make(tmp)
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name next to {path}")


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (best effort: not every system can)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _create(tmp: Path) -> None:
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                     0o666))


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """A temporary file next to ``path`` to write into by name; it replaces ``path`` when
    the block ends without error, and is removed when it raises.

    ``suffix`` (default: the one of ``path``) lets a writer that goes by the extension,
    such as matplotlib's ``savefig``, see the right one::

        with atomic_path(out / "scores.png") as tmp:
            fig.savefig(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path, path.suffix if suffix is None else suffix, _create)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)  # the writer has closed it: flush what it wrote
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        fault_point("file.publish")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write(path: str | Path, data: bytes | str, encoding: str = "utf-8") -> Path:
    """Write ``data`` (bytes, or text in ``encoding``) to ``path`` atomically."""
    if isinstance(data, str):
        data = data.encode(encoding)
    elif not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"atomic_write takes bytes or str, not {type(data).__name__}")
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return path


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """A temporary directory next to ``path`` to fill; it replaces ``path`` (and whatever
    was there) when the block ends without error, and is removed when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path, "", lambda p: os.mkdir(p, 0o777))
    try:
        yield tmp
        fault_point("dir.publish")
        old = None
        if path.exists():  # a directory cannot be renamed over a full one: move it aside
            old = path.with_name(f".{path.name}.{secrets.token_hex(6)}.old")
            os.replace(path, old)
            fault_point("dir.swap")  # no artifact at path now: the next load computes it
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(path.parent)


def write_text_atomic(path: str | Path, text: str) -> None:
    atomic_write(path, text)


def write_json_atomic(path: str | Path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=2, default=str) + "\n")


def read_meta(path: Path, kind: str | None = None) -> dict:
    """Read and verify an artifact directory; a clear error if it is damaged."""
    path = Path(path)
    meta_f = path / "meta.json"
    try:
        meta = json.loads(meta_f.read_text())
    except FileNotFoundError:
        raise PktError(f"not a pkt artifact (no meta.json): {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise PktError(f"corrupt artifact {path}: meta.json is unreadable; "
                       f"delete it or pass method.recompute=true") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise PktError(f"artifact {path} has format version {meta.get('format_version')}, "
                       f"this pkt reads {FORMAT_VERSION}; pass method.recompute=true")
    if kind is not None and meta.get("kind") != kind:
        raise PktError(f"artifact {path} holds '{meta.get('kind')}', expected '{kind}'")
    for name, digest in meta.get("files", {}).items():
        f = path / name
        if not f.is_file() or _sha(f) != digest:
            raise PktError(f"corrupt artifact {path}: {name} is missing or truncated; "
                           f"delete it or pass method.recompute=true")
    return meta


class ArtifactStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, kind: str, key: dict) -> Path:
        return self.root / kind / key_hash(key)

    def load(self, kind: str, key: dict) -> Path | None:
        """The artifact's directory if a valid one with exactly this key exists, else None
        (a damaged one, or one made for another key, is a warning and counts as absent)."""
        p = self.path(kind, key)
        if not p.exists():
            return None
        try:
            meta = read_meta(p, kind)  # format, kind and every file's hash
            if meta.get("key") != json.loads(json.dumps(key, default=str)):
                raise PktError(f"artifact {p} was made for a different key")
        except PktError as e:
            # a cache entry is checked when loaded: a bad one is never used, it is computed
            # again (and the new one replaces it)
            log.warning("%s; computing it again", str(e).split("; ")[0])
            return None
        return p

    @contextlib.contextmanager
    def computing(self, kind: str, key: dict) -> Iterator[None]:
        """Held while one process computes the artifact ``(kind, key)``: a second process
        (another run on the same cache, a sweep job, a server) waits here and then finds the
        first one's result with :meth:`load`. A POSIX record lock (``lockf``, which NFS
        supports through its lock manager), so the kernel frees it when its holder dies,
        even by ``kill -9``: a dead holder never leaves a stale lock."""
        import fcntl

        locks = self.root / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        path = locks / f"{kind}-{self.path(kind, key).name}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                log.warning("another pkt process is computing this %s (%s): waiting for it, "
                            "then using its result", kind, path)
                fcntl.lockf(fd, fcntl.LOCK_EX)
            # under the lock nobody else writes this key: temporary siblings left by a
            # writer that died (kill -9, power loss) are stale
            final = self.path(kind, key)
            for stale in final.parent.glob(f".{final.name}.*"):
                shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else \
                    stale.unlink(missing_ok=True)
            yield
        finally:
            try:
                fcntl.lockf(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def load_or_compute(self, kind: str, key: dict, compute: Callable[[], Path],
                        recompute: bool = False) -> tuple[Path, bool]:
        """``(path, hit)``: the cached artifact, or ``compute()`` (which saves it and
        returns its path) under :meth:`computing`, after a second look: another process
        may have made it while this one waited."""
        path = None if recompute else self.load(kind, key)
        if path is not None:
            return path, True
        with self.computing(kind, key):
            path = None if recompute else self.load(kind, key)
            if path is not None:
                return path, True
            return compute(), False

    def cached_json(self, kind: str, key: dict, compute: Callable[[], object],
                    extra: dict | None = None, name: str = "value.json"):
        """``(value, hit)``: the JSON value stored under the key (in the file ``name``), or
        ``compute()`` stored."""
        def make() -> Path:
            value = compute()
            return self.save(kind, key, lambda tmp: (tmp / name).write_text(
                json.dumps(value, ensure_ascii=False), encoding="utf-8"), extra=extra)

        path, hit = self.load_or_compute(kind, key, make)
        try:
            return json.loads((path / name).read_text(encoding="utf-8")), hit
        except (OSError, json.JSONDecodeError):
            log.warning("unreadable %s artifact %s: computing it again", kind, path)
            path, hit = self.load_or_compute(kind, key, make, recompute=True)
            return json.loads((path / name).read_text(encoding="utf-8")), hit

    def save(self, kind: str, key: dict, write: Callable[[Path], None], extra: dict | None = None) -> Path:
        """Call ``write(tmpdir)`` then publish the directory atomically under the key."""
        final = self.path(kind, key)
        with atomic_dir(final) as tmp:
            write(tmp)
            files = {f.name: _sha(f) for f in sorted(tmp.iterdir()) if f.is_file()}
            meta = {"format_version": FORMAT_VERSION, "kind": kind, "key": key,
                    "key_hash": final.name, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "files": files, **(extra or {})}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
        log.info("saved %s artifact %s", kind, final)
        return final
