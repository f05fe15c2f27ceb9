"""Cached artifacts: directories with ``meta.json`` (key, format version, file checksums).

An artifact is written into a temporary sibling directory and renamed into place, so a
reader never sees a half-written one; the key decides the directory name, and the stored
key and checksums are verified on every load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pkt import PktError

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


def write_json_atomic(path: Path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
        """The artifact's directory if a valid one with exactly this key exists, else None."""
        p = self.path(kind, key)
        if not p.exists():
            return None
        meta = read_meta(p, kind)
        if meta.get("key") != json.loads(json.dumps(key, default=str)):
            raise PktError(f"artifact {p} was made for a different key (model, data or "
                           f"parameters differ); delete it or pass method.recompute=true")
        return p

    def save(self, kind: str, key: dict, write: Callable[[Path], None], extra: dict | None = None) -> Path:
        """Call ``write(tmpdir)`` then publish the directory atomically under the key."""
        final = self.path(kind, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{final.name}-"))
        try:
            write(tmp)
            files = {f.name: _sha(f) for f in sorted(tmp.iterdir()) if f.is_file()}
            meta = {"format_version": FORMAT_VERSION, "kind": kind, "key": key,
                    "key_hash": final.name, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "files": files, **(extra or {})}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
            os.chmod(tmp, 0o755)
            if final.exists():
                old = final.with_name(f".old-{final.name}-{os.getpid()}")
                os.replace(final, old)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("saved %s artifact %s", kind, final)
        return final
