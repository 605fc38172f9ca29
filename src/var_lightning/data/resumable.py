"""Training loaders with an exact, resumable order (what makes a mid-epoch resume bit-exact).

* **Data order.** :class:`ResumableLoader` draws each epoch's permutation from ``(seed, epoch)`` only and,
  when Lightning resumes mid-epoch, skips the batches the interrupted run already consumed. It reads both
  numbers from the trainer's own progress counters at the moment the epoch's first batch is fetched, so
  they always agree with the step, batch index and learning-rate schedule Lightning restores.
* **Augmentations.** Each item is loaded under a torch RNG seeded from ``(seed, epoch, index)``, so random
  crops and flips do not depend on which worker loads an item or how many batches a worker has produced.

The global RNG state is restored by :class:`var_lightning.training.resume.RNGStateCallback`.
"""

from __future__ import annotations

import logging
import warnings
import weakref
from typing import Any

import pytorch_lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from var_lightning import distributed

log = logging.getLogger(__name__)

_MASK63 = (1 << 63) - 1


def mix_seed(*values: int) -> int:
    """A 63-bit seed from several integers (splitmix64 steps), so (seed, epoch, index) never collide the way
    ``seed + epoch`` does."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & ((1 << 64) - 1))) * 0xBF58476D1CE4E5B9 & ((1 << 64) - 1)
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & ((1 << 64) - 1)
        h ^= h >> 29
    return h & _MASK63


# ---------------------------------------------------------------------------------------------- data order
class SeededItems(Dataset):
    """Wraps a map-style dataset so that item ``(epoch, index)`` is loaded under a torch RNG seeded from
    ``(seed, epoch, index)`` (random crops/flips become a function of the item, not of the worker's history).
    The surrounding RNG state is restored afterwards, so loading in the main process consumes none of it.
    Plain integer indices pass through unseeded."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, int(seed)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: int | tuple[int, int]) -> Any:
        if not isinstance(item, tuple):
            return self.dataset[item]
        epoch, index = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix_seed(self.seed, epoch, index))
            return self.dataset[index]

    def __getattr__(self, name: str) -> Any:  # num_skipped, classes, ... of the wrapped dataset
        if name in ("dataset", "seed"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


class ResumableSampler(DistributedSampler):
    """Per-epoch permutation seeded by ``(seed, epoch)``, split across ranks like ``DistributedSampler``
    (padded to a multiple of the world size), yielding ``(epoch, index)`` for :class:`SeededItems`.
    ``start`` positions of this rank's share are skipped once (mid-epoch resume). Subclassing
    DistributedSampler keeps Lightning from replacing it under DDP."""

    def __init__(
        self,
        dataset: Dataset,
        seed: int = 0,
        shuffle: bool = True,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        super().__init__(
            dataset,
            num_replicas=distributed.world_size() if num_replicas is None else num_replicas,
            rank=distributed.rank() if rank is None else rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=False,
        )
        self.start = 0

    def indices(self) -> list[int]:
        """This rank's indices of the current epoch, before skipping."""
        n = len(self.dataset)  # type: ignore[arg-type]
        if self.shuffle:
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        pad = self.total_size - n
        order += (order * (pad // max(n, 1) + 1))[:pad]
        return order[self.rank : self.total_size : self.num_replicas]

    def __iter__(self):
        start, self.start = self.start, 0
        epoch = self.epoch
        return iter([(epoch, i) for i in self.indices()[start:]])


class ProgressAwareLoader(DataLoader):
    """A DataLoader whose iterator starts lazily, at the first batch request, from the trainer's progress:
    the running epoch and the batches of it already consumed (non-zero only when Lightning resumed
    mid-epoch). Lightning creates the iterator before it sets the epoch and restores its counters, so the
    lazy start is what lets both numbers be right. Subclasses implement ``_start(epoch, consumed)``."""

    _trainer_ref: Any = None

    def attach(self, trainer: L.Trainer | None) -> ProgressAwareLoader:
        self._trainer_ref = weakref.ref(trainer) if trainer is not None else None
        return self

    def progress(self) -> tuple[int, int]:
        """(epoch, batches consumed in it) from the attached trainer, else (own epoch counter, 0)."""
        trainer = self._trainer_ref() if self._trainer_ref is not None else None
        if trainer is None or getattr(trainer, "fit_loop", None) is None or not trainer.training:
            return self._fallback_epoch(), 0
        return int(trainer.current_epoch), int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)

    def _fallback_epoch(self) -> int:
        return 0

    def _start(self, epoch: int, consumed: int):
        raise NotImplementedError

    def __iter__(self):
        def lazy():
            epoch, consumed = self.progress()
            if consumed:
                log.info(
                    "resuming epoch %d after %d consumed batches (data order as uninterrupted)",
                    epoch,
                    consumed,
                )
            yield from self._start(epoch, consumed)

        return lazy()

    def _check_state(self, state: dict[str, Any], mine: dict[str, Any]) -> None:
        diff = {k: (state.get(k), v) for k, v in mine.items() if state.get(k) != v}
        if diff:
            warnings.warn(
                f"resuming with different data settings {diff} (checkpoint vs now): the resumed epoch's data order "
                f"differs from an uninterrupted run; keep the world size, batch size and data.seed for exact resume",
                stacklevel=2,
            )


class ResumableLoader(ProgressAwareLoader):
    """Training loader of a map-style dataset with an exact, resumable order (see the module docstring).

    Construct it like a DataLoader with ``shuffle`` and ``seed``; pass ``trainer`` (the datamodule's) so it
    follows Lightning's progress. Under DDP it splits the data itself (its sampler is a DistributedSampler).
    A ``sampler`` given explicitly (Lightning does so for ``overfit_batches``) disables the resumable order.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int = 1,
        shuffle: bool = True,
        sampler: Any = None,
        *,
        seed: int = 0,
        trainer: L.Trainer | None = None,
        **kwargs: Any,
    ) -> None:
        self.seed = int(seed)
        self.resumable = sampler is None and kwargs.get("batch_sampler") is None
        if self.resumable:
            if not isinstance(dataset, SeededItems):
                dataset = SeededItems(dataset, self.seed)
            sampler = ResumableSampler(dataset, seed=self.seed, shuffle=shuffle)
        kwargs.setdefault("generator", torch.Generator())
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
        self.attach(trainer)

    def _fallback_epoch(self) -> int:
        return int(getattr(self.sampler, "epoch", 0))

    def _start(self, epoch: int, consumed: int):
        if not self.resumable:
            yield from DataLoader.__iter__(self)
            return
        self.sampler.set_epoch(epoch)
        self.sampler.start = consumed * (self.batch_size or 1)
        self.generator.manual_seed(mix_seed(self.seed, epoch, 0x5EED))  # worker base seeds per epoch
        yield from DataLoader.__iter__(self)

    def state_dict(self) -> dict[str, Any]:
        epoch, consumed = self.progress()
        return {
            "seed": self.seed,
            "batch_size": self.batch_size,
            "world_size": self.sampler.num_replicas if self.resumable else 1,
            "epoch": epoch,
            "consumed": consumed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.resumable:
            self._check_state(
                state,
                {"seed": self.seed, "batch_size": self.batch_size, "world_size": self.sampler.num_replicas},
            )
