"""Data-loader workers leave the stop signals to the main process.

A cluster scheduler, ``timeout`` and ``kill -- -PGID`` signal every process of a job, data-loader workers
included. A worker killed by SIGTERM ends the run in torch's "DataLoader worker ... is killed by signal"
error before the main process reaches the step boundary where it saves ``preempted.ckpt``
(:mod:`var_lightning.callbacks.preemption`). Workers therefore ignore SIGTERM, SIGINT and SIGUSR1: the main
process saves, exits with ``128 + signal`` and shuts its workers down; a worker whose parent is gone exits
by itself (torch's watchdog), so nothing is left running.
"""

from __future__ import annotations

import os
import signal

STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")


def worker_init(worker_id: int) -> None:
    """The ``worker_init_fn`` of every loader we build: ignore the stop signals, then seed the worker as
    Lightning would have (``seed_everything(workers=True)`` adds its own only to loaders without one)."""
    for name in STOP_SIGNALS:
        signum = getattr(signal, name, None)
        if signum is not None:
            signal.signal(signum, signal.SIG_IGN)
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        # lazy: an optional step; the rank comes from the parent process (rank_zero_only.rank, inherited)
        from lightning_fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id)
