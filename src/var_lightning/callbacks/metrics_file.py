"""Write the run's metrics to JSON files in the run directory (rank zero).

``metrics.json`` holds the latest value of every logged metric (updated after each validation and at the
end of fitting/testing) and the datamodule's ``data_report()`` (e.g. the unreadable files it skipped);
``metrics_history.jsonl`` appends one line per validation.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytorch_lightning as L
from pytorch_lightning.utilities import rank_zero_only

log = logging.getLogger(__name__)


def scalar_metrics(metrics: dict) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out[k] = f
    return out


class MetricsFile(L.Callback):
    def __init__(self, path: str | None = None) -> None:
        super().__init__()
        self.path = path

    def _path(self, trainer: L.Trainer) -> Path:
        return Path(self.path) if self.path else Path(trainer.default_root_dir) / "metrics.json"

    @rank_zero_only
    def _write(self, trainer: L.Trainer, history: bool) -> None:
        metrics = scalar_metrics(trainer.callback_metrics)
        metrics.update(epoch=trainer.current_epoch, step=trainer.global_step)
        path = self._path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        merged = {}
        if path.exists():
            try:
                merged = json.loads(path.read_text())
            except json.JSONDecodeError:
                merged = {}
        merged.update(metrics)
        report = getattr(getattr(trainer, "datamodule", None), "data_report", None)
        if callable(report):  # e.g. the unreadable files found so far (counts and names)
            merged.update(report())
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(merged, indent=2, sort_keys=True))
        tmp.replace(path)
        if history:
            with open(path.with_name("metrics_history.jsonl"), "a") as f:
                f.write(json.dumps(metrics, sort_keys=True) + "\n")

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._write(trainer, history=True)

    def on_fit_end(self, trainer, pl_module) -> None:
        self._write(trainer, history=False)
        if trainer.is_global_zero:  # the only rank that writes it
            log.info("metrics written to %s", self._path(trainer))

    def on_test_end(self, trainer, pl_module) -> None:
        self._write(trainer, history=False)
