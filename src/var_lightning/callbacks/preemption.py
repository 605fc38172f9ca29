"""Pre-emption that saves: SIGTERM, SIGINT (Ctrl-C) and SIGUSR1 end a run with a checkpoint to resume from.

Lightning's own answer loses the work since the last checkpoint: on SIGTERM it raises ``SIGTERMException``
(a ``SystemExit`` with status 0, so a scheduler sees success) and writes nothing; on Ctrl-C it shuts down
"gracefully", also without a checkpoint. This callback replaces the handlers of those signals while the
model trains (from ``on_train_start``, after Lightning has set its own, until the fit ends):

1. the handler only records the signal (a signal can arrive in the middle of an optimizer step or a
   collective, where nothing can be saved);
2. at the next optimizer-step boundary (with several processes: the next multiple of
   ``check_every_n_steps``, since the all-reduce of one flag that tells every rank whether any rank received
   one is a host sync, too costly at every step; a signal sent to rank 0 only is enough), all ranks write
   ``checkpoints/preempted.ckpt`` together (a collective, as every save), and raise :class:`Preempted`;
3. ``var-train`` prints the exact command that continues the run (``resume=auto`` and the pinned run
   directory) and exits with ``128 + signal`` (143 for SIGTERM, 130 for Ctrl-C, 138 for SIGUSR1), the
   status a shell or scheduler expects of a process ended by that signal, never 0.

At an epoch's last step the save waits for that epoch's validation (it is written at the epoch's end): a
checkpoint written between the last step and the validation would resume into the next epoch and skip it
(Lightning restarts a finished epoch's loop without its validation), see :func:`at_epoch_end`.

A second Ctrl-C stops at once (no checkpoint). Under ``trainer=slurm`` (Lightning's SLURM environment with
``auto_requeue``) SIGUSR1 stays Lightning's: it saves ``hpc_ckpt_<n>.ckpt`` and requeues the job, and
``resume=auto`` picks that file up; the SIGTERM SLURM sends afterwards is handled here. Signals are only
checked between optimizer steps: a validation pass (or generation metrics) runs to its end first.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

import pytorch_lightning as L
import torch

log = logging.getLogger(__name__)

SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")
# a save in progress: the SIGTERM watchdog of multi-process runs (ddp_guards) waits for it to finish
SAVING = threading.Event()


def at_epoch_end(trainer: L.Trainer) -> bool:
    """Whether this optimizer step ends the epoch (its validation and epoch-end hooks come next). A
    checkpoint a callback writes here resumes into the next epoch without this epoch's validation, last.ckpt
    and best-k; the periodic and pre-emption saves therefore wait for ``on_train_epoch_end``."""
    return bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)


class Preempted(Exception):
    """Raised on every rank after the pre-emption checkpoint is written."""

    def __init__(self, signum: int, path: Path, step: int) -> None:
        self.signum, self.path, self.step = signum, path, step
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint: {path}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class PreemptionCheckpoint(L.Callback):
    """See the module docstring. ``filename`` (without ``.ckpt``) below ``<default_root_dir>/checkpoints``."""

    def __init__(self, filename: str = "preempted", check_every_n_steps: int = 5) -> None:
        super().__init__()
        if check_every_n_steps < 1:
            raise ValueError(f"callbacks.preemption.check_every_n_steps={check_every_n_steps} must be >= 1")
        self.filename = filename
        self.check_every_n_steps = int(check_every_n_steps)
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        self._last_step = -1
        self._pending: int | None = None  # a signal seen at an epoch's last step: saved at the epoch's end

    # ------------------------------------------------------------------ handlers
    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        first = self.received is None
        self.received = signum
        if first:
            extra = "; press Ctrl-C again to stop at once without it" if signum == signal.SIGINT else ""
            log.warning("received %s: saving a checkpoint at the end of this step, then stopping%s",
                        signal.Signals(signum).name, extra)  # fmt: skip

    def _owned_by_lightning(self, trainer: L.Trainer, signum: int) -> bool:
        from lightning_fabric.plugins.environments import SLURMEnvironment

        env = trainer._accelerator_connector.cluster_environment
        return (
            isinstance(env, SLURMEnvironment)
            and bool(env.auto_requeue)
            and signum == int(env.requeue_signal or signal.SIGUSR1)
        )

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install(trainer)  # Lightning has set its handlers by now; a signal during the check counts too

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_step = trainer.global_step
        self._install(trainer)

    def _install(self, trainer: L.Trainer) -> None:
        if self._previous or threading.current_thread() is not threading.main_thread():
            return
        for name in SIGNALS:
            signum = getattr(signal, name, None)
            if signum is None or self._owned_by_lightning(trainer, int(signum)):
                continue
            self._previous[int(signum)] = signal.signal(signum, self._handle)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            if handler is not None:
                signal.signal(signum, handler)
        self._previous = {}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore()

    # ------------------------------------------------------------------ the step boundary
    def _any_rank_received(self, trainer: L.Trainer) -> int:
        local = 0 if self.received is None else int(self.received)
        if trainer.world_size <= 1:
            return local
        if trainer.global_step % self.check_every_n_steps:  # the same steps on every rank
            return 0
        flag = torch.tensor([local], device=trainer.strategy.root_device, dtype=torch.int64)
        flag = trainer.strategy.reduce(flag, reduce_op="max")
        return int(flag.item())

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:  # fmt: skip
        step = trainer.global_step
        if step == self._last_step:  # within a gradient-accumulation window: not a boundary
            return
        self._last_step = step
        signum = self._any_rank_received(trainer)
        if not signum:
            return
        if at_epoch_end(trainer):
            self._pending = signum
            if trainer.is_global_zero:
                log.warning("%s at the epoch's last step: saving after this epoch's validation",
                            signal.Signals(signum).name)  # fmt: skip
            return
        self._save_and_stop(trainer, signum)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is not None:
            signum, self._pending = self._pending, None
            self._save_and_stop(trainer, signum)

    def _save_and_stop(self, trainer: L.Trainer, signum: int) -> None:
        step = trainer.global_step
        path = Path(trainer.default_root_dir) / "checkpoints" / f"{self.filename}.ckpt"
        SAVING.set()
        try:
            trainer.save_checkpoint(
                path, weights_only=False
            )  # the full training state (and no "not set" line)
        finally:
            SAVING.clear()
        if trainer.is_global_zero:
            log.warning("pre-emption checkpoint at step %d: %s", step, path)
        raise Preempted(signum, path, step)
