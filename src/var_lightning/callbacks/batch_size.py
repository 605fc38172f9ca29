"""``trainer.auto_batch_size=true``: Lightning's batch-size finder, with the global batch kept.

:class:`~pytorch_lightning.callbacks.BatchSizeFinder` tries growing per-device batches for a few steps each
(binary search after the first out-of-memory error, never above the configured ``data.batch_size``) and
restores the weights afterwards. What it finds only replaces the per-device batch: the global batch of the
recipe (``data.batch_size`` x devices x accumulation), and with it the learning rate (``base_lr x global /
256``) and the number of optimizer steps, stay as configured, because the accumulation rises to make up the
difference. The per-device batch becomes the largest divisor of the configured one that fits, so the global
batch is exact. Lightning's finder runs in one process only; multi-GPU runs say so and point at ``var-plan``.
"""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as L
from pytorch_lightning.callbacks import BatchSizeFinder

log = logging.getLogger(__name__)


def fitting_divisor(requested: int, found: int) -> int:
    """The largest divisor of ``requested`` that is at most ``found`` (so requested = divisor x steps)."""
    return max(d for d in range(1, max(min(found, requested), 1) + 1) if requested % d == 0)


class GlobalBatchFinder(BatchSizeFinder):
    """Find the per-device batch that fits, then restore the configured global batch by accumulation."""

    def __init__(self, steps_per_trial: int = 2, max_trials: int = 12) -> None:
        super().__init__(mode="binsearch", steps_per_trial=steps_per_trial, init_val=1, max_trials=max_trials,
                         batch_arg_name="batch_size", margin=0.0)  # fmt: skip
        self.requested: int | None = None
        self.chosen: tuple[int, int] | None = None  # (per-device batch, accumulation)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str | None = None) -> None:
        if trainer.world_size > 1:
            raise ValueError(
                "trainer.auto_batch_size=true runs Lightning's batch-size finder, which works in one process only: "
                "find the batch on one GPU (trainer.devices=1) or estimate it with var-plan, then set "
                "data.batch_size and trainer.accumulate_grad_batches"
            )
        dm = trainer.datamodule
        self.requested = int(dm.batch_size)
        self._max_val = self.requested  # never above the recipe's batch
        super().setup(trainer, pl_module, stage)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        accumulate0 = int(trainer.accumulate_grad_batches)
        loop: Any = trainer.fit_loop
        trainer.datamodule.batch_size = self._init_val  # the loader built during set-up (the rank checks)
        loop._combined_loader = None  # is rebuilt at the first trial's size before the search starts
        loop.setup_data()
        super().on_fit_start(trainer, pl_module)
        found = int(self.optimal_batch_size or self.requested)
        per_device = fitting_divisor(self.requested, found)
        accumulate = accumulate0 * (self.requested // per_device)
        trainer.datamodule.batch_size = per_device
        trainer.accumulate_grad_batches = accumulate
        self.chosen = (per_device, accumulate)
        loop._combined_loader = None  # the train loader with the new batch size
        loop.setup_data()
        log.info("auto batch size: %d images per device fit (of %d asked); data.batch_size=%d with "
                 "accumulate_grad_batches=%d keeps the global batch at %d", found, self.requested, per_device,
                 accumulate, per_device * accumulate * trainer.world_size)  # fmt: skip
