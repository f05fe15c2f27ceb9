"""The shape of the package: leaf modules stay leaves, ``import pkt`` is cheap, and no
module imports another at load time in a circle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pkt

PKG = Path(pkt.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _load_time_imports(path: Path, known: set[str]) -> set[str]:
    """The pkt modules ``path`` imports when it is loaded (not inside functions, not under
    ``if TYPE_CHECKING``); ``from pkt.x import y`` counts y when y is a module."""
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()

    def visit(nodes):
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                         for a in node.names]
            else:
                for child in ("body", "orelse", "finalbody", "handlers"):
                    visit(getattr(node, child, []) or [])
                continue
            for n in names:
                while n and n not in known:
                    n = n.rpartition(".")[0]
                if n and n != me:
                    out.add(n)

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    return out


def test_no_import_cycle_in_pkt():
    files = {_module_name(p): p for p in PKG.rglob("*.py") if "conf" not in p.parts}
    graph = {m: _load_time_imports(p, set(files)) for m, p in files.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(m: str):
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in state:
                walk(n)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            walk(m)


def test_leaf_modules_and_a_cheap_import():
    code = ("import sys, pkt, pkt.errors, pkt.resources, pkt.faults; "
            "heavy = [m for m in ('omegaconf', 'hydra', 'torch', 'transformers') "
            "if m in sys.modules]; assert not heavy, heavy; "
            "mine = sorted(m for m in sys.modules if m.startswith('pkt')); "
            "assert mine == ['pkt', 'pkt.errors', 'pkt.faults', 'pkt.resources'], mine")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
