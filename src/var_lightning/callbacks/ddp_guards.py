"""Multi-process runs that fail instead of hanging: every rank must have data, and SIGTERM ends the run.

``RankCoverage``: in data parallel training every rank runs the same collectives (gradient all-reduce,
``sync_dist`` metrics). A rank whose validation slice is empty (a validation set smaller than the world
size, an unreadable validation shard) or whose training share is less than one batch skips them, and the
others wait forever, in the sanity check already. At set-up, on every rank, before any collective, the
data module's ``samples_per_rank(split, world_size)`` is checked and the run stops on all ranks alike with
an error naming the split, the sample count and the world size.

``SigtermExit``: Lightning answers SIGTERM by setting a flag that the training loop checks between batches,
so a process blocked inside a collective (waiting for a rank that died or hangs) never sees it and the job
outlives its ``scancel`` / ``kill``. A watchdog thread listens on the signal wake-up file descriptor (written
by Python's C-level handler the moment the signal arrives, whatever the main thread is doing) and, if the
process is still alive ``grace_s`` seconds after a SIGTERM, exits it with status 143. The grace period lets a
responsive run stop on its own: it saves a checkpoint at the next step boundary (callbacks/preemption.py),
and a save in progress is always let finish.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from typing import Any

import pytorch_lightning as L

from var_lightning.callbacks.preemption import SAVING

log = logging.getLogger(__name__)


class RankCoverage(L.Callback):
    """Stop at set-up when some rank would get no validation sample or no training batch."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        world = trainer.world_size
        dm = getattr(trainer, "datamodule", None)
        per_rank_of = getattr(dm, "samples_per_rank", None)
        if world <= 1 or per_rank_of is None or stage != "fit":
            return
        problems = []
        val_off = trainer.limit_val_batches == 0 or not trainer.enable_validation
        for split in ("train", "val"):
            if split == "val" and val_off:
                continue
            counts = per_rank_of(split, world)
            if counts is None:
                continue
            need = (
                int(getattr(dm, "batch_size", 1))
                if split == "train" and getattr(dm, "drop_last", False)
                else 1
            )
            short = [r for r, n in enumerate(counts) if n < need]
            if short:
                what = "one batch of data.batch_size=" + str(need) if need > 1 else "one sample"
                problems.append(
                    f"the {split} split gives {counts} samples to the {world} ranks: rank(s) {short} would get less "
                    f"than {what}"
                )
        if problems:
            raise ValueError(
                "; ".join(problems)
                + ". A rank without data skips the collectives the others wait in, so the run "
                "would hang. Use fewer devices (trainer.devices), more data (or more, smaller shards for "
                "data=webdataset), or turn validation off (trainer.limit_val_batches=0)"
            )


class SigtermExit(L.Callback):
    """On SIGTERM, exit after ``grace_s`` seconds if the run has not ended by itself (see the module doc).
    Installed in every process of a multi-process run; ``VAR_SIGTERM_GRACE_S`` overrides the grace period."""

    def __init__(self, grace_s: float = 30.0) -> None:
        super().__init__()
        self.grace_s = float(os.environ.get("VAR_SIGTERM_GRACE_S", grace_s))
        self._installed = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.world_size > 1 and not self._installed:
            self._installed = install_sigterm_watchdog(self.grace_s)


def install_sigterm_watchdog(grace_s: float) -> bool:
    """Start the watchdog thread (main thread only; False when another wake-up fd is in use)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        return False
    r, w = os.pipe()
    os.set_blocking(w, False)
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _remember)  # a Python handler, so the C handler writes the wake-up fd
    old = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    if old != -1:  # someone else listens already: leave theirs in place
        signal.set_wakeup_fd(old)
        os.close(r)
        os.close(w)
        return False
    threading.Thread(target=_watch, args=(r, grace_s), name="sigterm-watchdog", daemon=True).start()
    return True


def _remember(signum: int, frame: Any) -> None:  # the default action, deferred to the watchdog's grace
    log.warning("received signal %d", signum)


def _watch(fd: int, grace_s: float) -> None:
    while True:
        try:
            data = os.read(fd, 64)
        except OSError:
            return
        if signal.SIGTERM in data:
            log.warning("SIGTERM: the run ends; exiting in %.0f s unless it stops by itself first", grace_s)
            deadline = time.monotonic() + (grace_s if math.isfinite(grace_s) else 1e9)

            while (
                time.monotonic() < deadline or SAVING.is_set()
            ):  # a pre-emption checkpoint is finished first
                time.sleep(0.2)
            log.error("still running %.0f s after SIGTERM (blocked in a collective?): exiting now", grace_s)
            for h in logging.getLogger().handlers:
                h.flush()
            os._exit(128 + signal.SIGTERM)
