"""Training throughput: images/s and tokens/s over all ranks, from wall-clock time between batches."""

from __future__ import annotations

import time

import pytorch_lightning as L


class Throughput(L.Callback):
    """Logs ``train/images_per_sec`` and ``train/tokens_per_sec`` (global: x world size) every
    ``log_every_n_steps`` optimizer steps, skipping the first ``warmup`` batches."""

    def __init__(self, log_every_n_steps: int = 50, warmup: int = 2) -> None:
        super().__init__()
        self.every, self.warmup = log_every_n_steps, warmup
        self._t0: float | None = None
        self._images = 0
        self._batches = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._batches += 1
        if self._batches <= self.warmup:
            self._t0 = time.perf_counter()
            self._images = 0
            return
        self._images += int(batch[0].shape[0])
        if self._t0 is None or self._batches % self.every:
            return
        dt = time.perf_counter() - self._t0
        if dt <= 0:
            return
        ips = self._images * trainer.world_size / dt
        metrics = {"train/images_per_sec": ips}
        seq_len = getattr(getattr(pl_module, "var", None), "L", None)
        if seq_len is not None:
            metrics["train/tokens_per_sec"] = ips * seq_len
        pl_module.log_dict(metrics, rank_zero_only=True)
        self._t0, self._images = time.perf_counter(), 0
