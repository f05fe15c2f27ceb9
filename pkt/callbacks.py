"""Hydra callbacks: a sweep that ends in its comparison report."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class ReportCallback(Callback):
    """After a multirun, write ``report.md``/``report.csv``/plots into the sweep dir.

    With the W&B logger, the report's tables and plots also go into one W&B run of
    ``job_type=report`` in the sweep's group.
    """

    def __init__(self, wandb: bool = True):
        self.wandb = wandb

    name = "report"

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep = Path(config.hydra.sweep.dir)
        if not any(sweep.rglob("metrics.json")):
            log.warning("no finished runs under %s: no %s", sweep, self.name)
            return
        tracker = None
        logger_cfg = config.get("logger") or {}
        if self.wandb and str(logger_cfg.get("_target_", "")).endswith("WandbTracker"):
            from pkt.tracking import WandbTracker

            tracker = WandbTracker(run_dir=sweep, run_config={"sweep_dir": str(sweep)},
                                   name=self.name, group=logger_cfg.get("group") or sweep.name,
                                   project=logger_cfg.get("project", "pkt"),
                                   entity=logger_cfg.get("entity"),
                                   mode=logger_cfg.get("mode", "offline"), job_type=self.name)
        try:
            path = self.build(sweep, tracker)
        finally:
            if tracker is not None:
                tracker.finish()
        log.info("%s: %s", self.name, path)
        print(f"{self.name}: {path}")

    def build(self, sweep: Path, tracker) -> Path | None:
        from pkt.report import build_report

        return build_report([sweep], tracker=tracker)


class LeakageCallback(ReportCallback):
    """After a multirun of single-trait inductions (or profiles) scored on all five traits,
    write the leakage matrix (``leakage.md``/``.json``/``.png``) into the sweep dir."""

    name = "leakage"

    def build(self, sweep: Path, tracker) -> Path | None:
        from pkt.eval.leakage import write_leakage

        return write_leakage([sweep], sweep, tracker=tracker)
