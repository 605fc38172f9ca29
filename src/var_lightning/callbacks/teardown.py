"""Destroy the default process group when a run's last stage ends.

Why: on these machines a DDP run whose process group is still alive at interpreter exit aborts now and then
with ``terminate called without an active exception`` (gloo and NCCL threads torn down in the wrong order),
which turns a finished run into a failed job (and a SLURM requeue). A barrier first lets every rank finish
writing (checkpoints, logs) before the group goes away.
"""

from __future__ import annotations

import logging

import pytorch_lightning as L
import torch.distributed as dist

log = logging.getLogger(__name__)


def destroy_process_group() -> bool:
    """Barrier + destroy of the default group if one exists; returns whether one was destroyed."""
    if not (dist.is_available() and dist.is_initialized()):
        return False
    try:
        if dist.get_world_size() > 1:
            dist.barrier()
    finally:
        dist.destroy_process_group()
    log.debug("process group destroyed")
    return True


class ProcessGroupTeardown(L.Callback):
    """Destroys the process group in the ``teardown`` of ``last_stage`` ('fit' or 'test'): the fit's
    teardown must not destroy it when a test follows in the same process."""

    def __init__(self, last_stage: str = "fit") -> None:
        if last_stage not in ("fit", "validate", "test", "predict"):
            raise ValueError(f"last_stage={last_stage!r}: one of fit, validate, test, predict")
        self.last_stage = last_stage

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == self.last_stage:
            destroy_process_group()
