"""Experiment tracking: one W&B run per job (offline by default), always finished."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


class NullTracker:
    """logger=none: files only."""

    run = None

    def __init__(self, **_):
        pass

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        pass

    def log_summary(self, metrics: dict) -> None:
        pass

    def log_table(self, name: str, rows: list[dict]) -> None:
        pass

    def log_image(self, name: str, path: Path) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "/"))
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[key] = v
    return out


class WandbTracker(NullTracker):
    """A W&B run written under ``<run_dir>/wandb`` (``mode: offline`` unless told otherwise).

    Each job creates its own run (``reinit='create_new'``) and finishes it, so a multirun
    never reuses one; nothing is written to the process environment.
    """

    def __init__(self, run_dir: str | Path, run_config: dict, name: str, group: str | None = None,
                 project: str = "pkt", entity: str | None = None, mode: str = "offline",
                 tags: list | None = None, job_type: str = "run"):
        import wandb

        self._wandb = wandb
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(silent=True, console="off", x_disable_stats=True,
                                  x_disable_meta=False)
        self.run = wandb.init(project=project, entity=entity, mode=mode, dir=str(run_dir),
                              name=name, group=group, job_type=job_type, tags=list(tags or []),
                              config=run_config, reinit="create_new", settings=settings)
        log.info("W&B run %s (%s) in %s", self.run.id, mode, run_dir / "wandb")

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        self.run.log(_flat(metrics), step=step)

    def log_summary(self, metrics: dict) -> None:
        for k, v in _flat(metrics).items():
            self.run.summary[k] = v

    def log_table(self, name: str, rows: list[dict]) -> None:
        if not rows:
            return
        cols = list(rows[0].keys())
        data = [[r.get(c) if isinstance(r.get(c), (int, float, str, bool)) or r.get(c) is None
                 else str(r.get(c)) for c in cols] for r in rows]
        self.run.log({name: self._wandb.Table(columns=cols, data=data)})

    def log_image(self, name: str, path: Path) -> None:
        if os.path.isfile(path):
            self.run.log({name: self._wandb.Image(str(path))})

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None
