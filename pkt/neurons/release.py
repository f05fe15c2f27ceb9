"""The paper release's neuron format: ``<Trait>_dict.json`` and ``<Trait>_reversed_dict.json``.

Each file is a JSON object mapping a layer number (string) to a list of
``[layer, index, diff, prob, p95]`` rows; the plain name holds the high aspect's set and
the ``_reversed`` name the low aspect's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from pkt.artifacts import write_json_atomic
from pkt.errors import PktError
from pkt.neurons.induce import check_fits
from pkt.neurons.select import NeuronSet


def file_name(title: str, aspect: str) -> str:
    return f"{title}_dict.json" if aspect == "high" else f"{title}_reversed_dict.json"


def export_release(folder: str | Path, title: str, sets: dict[str, NeuronSet]) -> list[Path]:
    out = []
    for aspect, ns in sets.items():
        by_layer: dict[str, list] = {}
        for row in ns.rows():
            by_layer.setdefault(str(row[0]), []).append(row)
        ordered = {k: by_layer[k] for k in sorted(by_layer, key=int)}
        p = Path(folder) / file_name(title, aspect)
        write_json_atomic(p, ordered)
        out.append(p)
    return out


ROW = ("layer", "index", "diff", "prob", "p95")


def _number(v) -> float | None:
    """A JSON number (or a numeric string, which the format has always accepted) as a
    finite float; None for anything else (text, bool, null, nan, inf)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            return None
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _whole(v) -> int | None:
    x = _number(v)
    return int(x) if x is not None and x.is_integer() else None


def _check_row(r, where: str, layer: int) -> list:
    """One ``[layer, index, diff, prob, p95]`` row, checked field by field."""
    if not isinstance(r, list) or len(r) < 5:
        raise PktError(f"{where}: {r!r} is not [layer, index, diff, prob, p95]")
    out = []
    for name, v in zip(ROW, r[:5]):
        x = _whole(v) if name in ("layer", "index") else _number(v)
        if x is None:
            kind = "a whole number" if name in ("layer", "index") else "a finite number"
            raise PktError(f"{where}: {name} {v!r} is not {kind} (row {r!r})")
        out.append(x)
    if out[0] != layer:
        raise PktError(f"{where}: row {r!r} is filed under another layer")
    return out


def import_release(folder: str | Path, title: str, n_layers: int | None = None,
                   width: int | None = None) -> dict[str, NeuronSet]:
    folder = Path(folder)
    if not folder.is_dir():
        raise PktError(f"neuron folder not found: {folder}")
    sets = {}
    for aspect in ("high", "low"):
        p = folder / file_name(title, aspect)
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError:
            raise PktError(f"neuron file not found: {p}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise PktError(f"{p}: not valid JSON ({getattr(e, 'msg', e)}); truncated?") from None
        if not isinstance(data, dict):
            raise PktError(f"{p}: expected an object mapping layer -> rows")
        rows = []
        for key, lst in data.items():
            layer = _whole(key)
            if layer is None:
                raise PktError(f"{p}: layer key '{key}' is not a layer number")
            if not isinstance(lst, list):
                raise PktError(f"{p}: layer '{key}' does not hold a list of rows")
            for j, r in enumerate(lst, 1):
                rows.append(_check_row(r, f"{p}: layer '{key}', row {j}", layer))
        ns = NeuronSet.from_rows(rows)
        if n_layers is not None and width is not None:
            check_fits(ns, n_layers, width, str(p))
        sets[aspect] = ns
    return sets
