"""Progress a user can see wherever the output goes: a rich bar on a terminal, plain log lines elsewhere.

A rich (or tqdm) bar written to a log file or a SLURM ``.out`` becomes megabytes of carriage returns that
no one can read. :func:`progress_bar` picks :class:`~pytorch_lightning.callbacks.RichProgressBar` when
stdout and stderr are terminals and :class:`LogProgress` otherwise: one line every ``every_n_steps``
optimizer steps or ``every_seconds`` seconds, whichever comes first, with the epoch, the step, the loss,
images/s over all ranks and the ETA of the run; one line per validation with its metrics.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import sys
import time
from typing import Any

import pytorch_lightning as L
from pytorch_lightning.callbacks import RichProgressBar
from pytorch_lightning.callbacks.progress.progress_bar import ProgressBar
from pytorch_lightning.utilities import rank_zero_only

log = logging.getLogger("var_lightning.progress")


def _is_terminal() -> bool:
    return sys.stdout.isatty() and sys.stderr.isatty()


def progress_bar(
    every_n_steps: int = 50, every_seconds: float = 60.0, terminal: bool | None = None
) -> ProgressBar:
    """The progress display for this process's output (``terminal`` None = detect)."""
    if terminal is None:
        terminal = _is_terminal()
    return RichProgressBar() if terminal else LogProgress(every_n_steps, every_seconds)


def _fmt_eta(seconds: float) -> str:
    return str(dt.timedelta(seconds=round(seconds))) if math.isfinite(seconds) else "?"


class LogProgress(ProgressBar):
    """Progress as log lines (see the module docstring); logs on rank zero only."""

    def __init__(self, every_n_steps: int = 50, every_seconds: float = 60.0) -> None:
        super().__init__()
        if every_n_steps < 1 or every_seconds <= 0:
            raise ValueError(
                f"callbacks.progress_bar: every_n_steps={every_n_steps} must be >= 1 and every_seconds="
                f"{every_seconds} > 0"
            )
        self.every_n_steps, self.every_seconds = int(every_n_steps), float(every_seconds)
        self._enabled = True
        self._t_start = self._t_last = 0.0
        self._step_start = self._step_last = 0
        self.lines: list[str] = []  # what was logged (tests read it)

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t_start = self._t_last = time.perf_counter()
        self._step_start = self._step_last = trainer.global_step

    def _images_per_step(self, trainer: L.Trainer) -> int | None:
        per_device = getattr(getattr(trainer, "datamodule", None), "batch_size", None)
        if per_device is None:
            return None
        return int(per_device) * trainer.accumulate_grad_batches * trainer.world_size

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        if not self._enabled or trainer.sanity_checking:
            return
        step, now = trainer.global_step, time.perf_counter()
        if step == self._step_last:
            return  # inside a gradient-accumulation window
        if (step % self.every_n_steps) and now - self._t_last < self.every_seconds:
            return
        self._t_last, self._step_last = now, step
        self._line(trainer, step, now)

    @rank_zero_only
    def _line(self, trainer: L.Trainer, step: int, now: float) -> None:
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        try:
            total = total or int(trainer.estimated_stepping_batches)
        except Exception:  # noqa: BLE001 - iterable datasets without a length
            total = None
        done = step - self._step_start
        elapsed = now - self._t_start
        sec_per_step = elapsed / done if done > 0 else math.nan
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else '?'}",
                 f"step {step}/{total or '?'}"]  # fmt: skip
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            parts.append(f"loss {float(loss):.4f}")
        per_step = self._images_per_step(trainer)
        if per_step and done > 0:
            parts.append(f"{per_step / sec_per_step:.1f} img/s")
        if total:
            parts.append(f"ETA {_fmt_eta((total - step) * sec_per_step)}")
        self._emit(" | ".join(parts))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._enabled or trainer.sanity_checking:
            return
        shown = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")
                 and "/scale/" not in k and getattr(v, "numel", lambda: 1)() == 1}  # fmt: skip
        if shown:
            text = ", ".join(f"{k} {v:.4f}" for k, v in sorted(shown.items()))
            self._emit_rank0(f"validation after step {trainer.global_step}: {text}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._enabled:
            took = _fmt_eta(time.perf_counter() - self._t_start)
            self._emit_rank0(f"training done: step {trainer.global_step}, {took}")

    @rank_zero_only
    def _emit_rank0(self, text: str) -> None:
        self._emit(text)

    def _emit(self, text: str) -> None:
        self.lines.append(text)
        log.info("%s", text)
