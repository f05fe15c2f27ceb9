"""The paper release's neuron format: ``<Trait>_dict.json`` and ``<Trait>_reversed_dict.json``.

Each file is a JSON object mapping a layer number (string) to a list of
``[layer, index, diff, prob, p95]`` rows; the plain name holds the high aspect's set and
the ``_reversed`` name the low aspect's.
"""

from __future__ import annotations

import json
from pathlib import Path

from pkt import PktError
from pkt.artifacts import write_json_atomic
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
            if not isinstance(lst, list):
                raise PktError(f"{p}: layer '{key}' does not hold a list of rows")
            for r in lst:
                if not isinstance(r, list) or len(r) < 5:
                    raise PktError(f"{p}: layer '{key}': row {r!r} is not [layer, index, diff, prob, p95]")
                if str(int(r[0])) != str(int(key)):
                    raise PktError(f"{p}: row {r!r} filed under layer '{key}'")
                rows.append(r)
        ns = NeuronSet.from_rows(rows)
        if n_layers is not None and width is not None:
            check_fits(ns, n_layers, width, str(p))
        sets[aspect] = ns
    return sets
