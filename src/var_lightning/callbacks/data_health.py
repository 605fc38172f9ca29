"""Reports of the samples a WebDataset run lost, per shard, summed over ranks: per epoch and at the end.

The data module's ``shard_ledgers()`` (:mod:`var_lightning.data.shard_health`) count, in each process, the
samples lost per shard. Here the counters are summed over the ranks (a collective every rank takes part
in), and rank 0 logs one line per damaged shard and adds the figures to ``metrics.json`` (through the data
module's ``data_report``): after every training epoch and every validation for that epoch or pass, and for
the whole run at the end.
"""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as L

log = logging.getLogger(__name__)


class DataHealth(L.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.reports: dict[str, Any] = {}  # what goes into metrics.json (read through data_report)

    def _ledgers(self, trainer: L.Trainer, what: str) -> list[Any]:
        dm = getattr(trainer, "datamodule", None)
        ledgers = dm.shard_ledgers() if dm is not None and hasattr(dm, "shard_ledgers") else []
        return [g for g in ledgers if g.what == what]

    def _report(
        self, trainer: L.Trainer, pl_module: L.LightningModule, what: str, scope: str, label: str
    ) -> None:
        for ledger in self._ledgers(trainer, what):
            counters = {}
            for name, t in ledger.counters(scope).items():  # the same shapes on every rank
                counters[name] = trainer.strategy.reduce(t.to(pl_module.device), reduce_op="sum").long().cpu()
            lines, metrics = ledger.report(counters, label)
            self.reports.update(metrics)
            if lines and trainer.is_global_zero:
                log.warning("%s", "\n  ".join(lines))

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        dm = getattr(trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "shard_ledgers"):
            dm.health_reports = self.reports  # read by its data_report() into metrics.json

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, pl_module, "training", "epoch", f"epoch{trainer.current_epoch}")

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for ledger in self._ledgers(trainer, "validation"):
            ledger.reset_epoch()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._report(trainer, pl_module, "validation", "epoch", "last_validation")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # before on_fit_end, where MetricsFile writes metrics.json for the last time
        for what in ("training", "validation"):
            self._report(trainer, pl_module, what, "run", "run")
