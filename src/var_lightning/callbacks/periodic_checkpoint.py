"""A checkpoint every N minutes (and/or N steps) of training, so a crash loses minutes, not the run.

Why not ``ModelCheckpoint(train_time_interval=...)``: in pytorch-lightning 2.6 its manual-optimisation path
(the tokenizer stage's GAN training) only looks at ``every_n_train_steps`` and never saves on time. This
callback does the same thing for both stages: at the end of a training batch, rank 0 decides whether the
interval has passed, the decision is broadcast (ranks' clocks differ), and every rank calls
``trainer.save_checkpoint`` (a collective under DDP/FSDP). With several processes the time is looked at only
every ``check_every_n_steps`` optimizer steps (a broadcast is a host sync; at every step it would stall the
GPU queue), one process looks at its clock at every step without any collective; step-based saves need no
agreement at all. The file, ``<dirpath>/periodic.ckpt`` by default,
is replaced each time; ``resume=auto`` picks the newest checkpoint of the run, whichever callback wrote it.
A save due at an epoch's last step is written at the epoch's end, after its validation
(:func:`~var_lightning.callbacks.preemption.at_epoch_end`).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as L

from var_lightning.callbacks.preemption import at_epoch_end

log = logging.getLogger(__name__)


class PeriodicCheckpoint(L.Callback):
    """Save ``<dirpath>/<filename>.ckpt`` every ``minutes`` of training (None = never on time) and/or every
    ``every_n_steps`` optimizer steps (None = never on steps)."""

    def __init__(
        self,
        dirpath: str | None = None,
        filename: str = "periodic",
        minutes: float | None = 10.0,
        every_n_steps: int | None = None,
        check_every_n_steps: int = 20,
    ) -> None:
        super().__init__()
        if check_every_n_steps < 1:
            raise ValueError(
                f"callbacks.periodic_checkpoint.check_every_n_steps={check_every_n_steps} must be >= 1"
            )
        self.check_every_n_steps = int(check_every_n_steps)
        if minutes is not None and minutes < 0:
            raise ValueError(f"callbacks.periodic_checkpoint.minutes={minutes} must be >= 0 (or null)")
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(
                f"callbacks.periodic_checkpoint.every_n_steps={every_n_steps} must be >= 1 (or null)"
            )
        self.dirpath, self.filename = dirpath, filename
        self.interval_s = None if minutes is None else float(minutes) * 60
        self.every_n_steps = every_n_steps
        self._last_time = time.monotonic()
        self._last_step = -1
        self._pending = False  # due at an epoch's last step: written at the epoch's end
        self.saved: list[int] = []  # steps saved at (tests read it)

    def path(self, trainer: L.Trainer) -> Path:
        base = Path(self.dirpath) if self.dirpath else Path(trainer.default_root_dir) / "checkpoints"
        return base / f"{self.filename}.ckpt"

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_time, self._last_step = time.monotonic(), trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        step = trainer.global_step
        if step == self._last_step or trainer.sanity_checking:
            return  # no optimizer step since the last save (gradient accumulation)
        due = self.every_n_steps is not None and step % self.every_n_steps == 0  # the same on every rank
        if not due and self.interval_s is not None:
            if trainer.world_size <= 1:
                due = time.monotonic() - self._last_time >= self.interval_s
            elif step % self.check_every_n_steps == 0:  # the same steps on every rank: rank 0 decides for all
                due = bool(trainer.strategy.broadcast(time.monotonic() - self._last_time >= self.interval_s))
        if not due:
            return
        if at_epoch_end(trainer):  # after this epoch's validation (see at_epoch_end)
            self._pending, self._last_step = True, step
            return
        self._save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending:
            self._pending = False
            self._save(trainer)

    def _save(self, trainer: L.Trainer) -> None:
        step = trainer.global_step
        path = self.path(trainer)
        trainer.save_checkpoint(path, weights_only=False)  # the full training state (and no "not set" line)
        self._last_time, self._last_step = time.monotonic(), step
        self.saved.append(step)
        if trainer.is_global_zero:
            log.info(
                "periodic checkpoint at step %d: %s (%s)", step, path, dt.datetime.now().strftime("%H:%M:%S")
            )
