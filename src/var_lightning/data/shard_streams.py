"""The shard streams behind :class:`~var_lightning.data.webdataset.WebDatasetDataModule`: the seeded infinite
training stream (:class:`TrainStream`), the exactly-once validation slices (:class:`EvalStream`) and the
loader that resumes mid-epoch (:class:`ShardLoader`). The module docstring of
:mod:`var_lightning.data.webdataset` describes what they guarantee."""

from __future__ import annotations

import random
from collections.abc import Iterator
from itertools import islice
from typing import Any

import pytorch_lightning as L
import torch
from torch.utils.data import IterableDataset, get_worker_info

from var_lightning import distributed
from var_lightning.data.resumable import ProgressAwareLoader, mix_seed
from var_lightning.data.shard_health import ShardLedger
from var_lightning.data.shard_reader import collate_samples, iter_tar_samples

_MAX_EMPTY_SHARDS = 64


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


class _ShardStream(IterableDataset):
    """Shared parts: shard list, decoder, the per-shard ledger of lost samples; rank and world size are
    captured in the main process (workers have no process group)."""

    def __init__(
        self,
        urls: list[str],
        decoder: Any,
        batch_size: int,
        seed: int,
        what: str,
        counts: list[int] | None,
        num_workers: int,
    ) -> None:
        self.urls, self.decoder, self.batch_size, self.seed = urls, decoder, batch_size, seed
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.ledger = ShardLedger(urls, counts, what, num_workers)
        self.epoch = 0
        self._url: str | None = None  # the shard being read (for the tar reader's error handler)

    def _handler(self, err: BaseException) -> bool:
        self.ledger.read_error(self._url or "?", err)
        return True

    def _shard(self, url: str) -> Iterator[dict[str, Any]]:
        self._url = url
        return iter_tar_samples(url, self._handler)

    def _samples(self, urls: Iterator[str]) -> Iterator[dict[str, Any]]:
        empty = 0
        for url in urls:
            read = 0
            for sample in self._shard(url):
                read += 1
                yield sample
            self.ledger.end_pass(url, read)
            empty = 0 if read else empty + 1
            if empty >= _MAX_EMPTY_SHARDS:
                raise RuntimeError(
                    f"no readable sample in {empty} consecutive shards (last: {url}); check the shards"
                )


class TrainStream(_ShardStream):
    """Infinite per-worker stream of batches; the loader cuts it to ``batches_per_epoch`` (``len``)."""

    def __init__(
        self,
        urls: list[str],
        decoder: Any,
        batch_size: int,
        seed: int,
        batches_per_epoch: int,
        shuffle_buffer: int,
        resampled: bool,
        counts: list[int] | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__(urls, decoder, batch_size, seed, "training", counts, num_workers)
        self.batches_per_epoch, self.shuffle_buffer, self.resampled = (
            batches_per_epoch,
            shuffle_buffer,
            resampled,
        )
        self.start_batch = 0

    def __len__(self) -> int:
        return self.batches_per_epoch

    def shard_sequence(self, stream: int, num_streams: int) -> Iterator[str]:
        """This stream's share of the global seeded shard sequence of the epoch."""
        n, pos = len(self.urls), 0
        rng = random.Random(mix_seed(self.seed, self.epoch, 1))
        while True:
            order = [rng.randrange(n) for _ in range(n)] if self.resampled else rng.sample(range(n), n)
            for u in order:
                if pos % num_streams == stream:
                    yield self.urls[u]
                pos += 1

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader_wid, nw = _worker()
        # The DataLoader takes batch i from its worker i % nw; after a resume at batch s its worker 0 must
        # play the worker that produced batch s, so the logical worker id is rotated by s.
        wid = (loader_wid + self.start_batch) % nw
        stream, num_streams = self.rank * nw + wid, self.world * nw
        samples: Iterator[dict[str, Any]] = self._samples(self.shard_sequence(stream, num_streams))
        if self.shuffle_buffer > 1:
            from webdataset.filters import _shuffle

            rng = random.Random(mix_seed(self.seed, self.epoch, stream, 2))
            samples = _shuffle(samples, self.shuffle_buffer, self.shuffle_buffer, rng=rng)
        # batches this worker produced before the resume point (the loader takes them round-robin)
        skip = len(range(wid, self.start_batch, nw)) * self.batch_size
        samples = islice(samples, skip, None)
        batch: list[tuple[torch.Tensor, int]] = []
        for count, sample in enumerate(samples, start=skip):
            try:
                batch.append(self.decoder(sample, mix_seed(self.seed, self.epoch, stream, count)))
            except Exception as err:  # noqa: BLE001 - corrupt sample: skip and count
                self.ledger.decode_error(str(sample.get("__url__")), str(sample.get("__key__")), err)
                continue
            if len(batch) == self.batch_size:
                yield collate_samples(batch)
                batch = []


class EvalStream(_ShardStream):
    """Finite, ordered validation stream; rank r takes samples [r N/R, (r+1) N/R) when counts are known,
    else every R-th shard. ``counts`` are the shards' readable samples (``count_readable``), so a damaged
    shard shrinks the slices instead of leaving a rank short."""

    def __init__(
        self, urls: list[str], decoder: Any, batch_size: int, counts: list[int] | None, num_workers: int = 0
    ) -> None:
        super().__init__(urls, decoder, batch_size, 0, "validation", counts, num_workers)
        self.counts = counts

    def assigned(self, rank: int | None = None) -> list[tuple[str, int, int, int]]:
        """(url, global index of its first sample, lo, hi) of the shards ``rank`` reads."""
        rank = self.rank if rank is None else rank
        if self.counts is None:
            return [(u, 0, 0, 1 << 62) for u in self.urls[rank :: self.world]]
        total = sum(self.counts)
        lo, hi = rank * total // self.world, (rank + 1) * total // self.world
        out, offset = [], 0
        for url, n in zip(self.urls, self.counts, strict=True):
            if offset < hi and offset + n > lo:
                out.append((url, offset, lo, hi))
            offset += n
        return out

    def samples_per_rank(self) -> list[int] | None:
        """Validation samples of every rank (None without per-shard counts)."""
        if self.counts is None:
            return None
        total = sum(self.counts)
        return [(r + 1) * total // self.world - r * total // self.world for r in range(self.world)]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        wid, nw = _worker()
        batch: list[tuple[torch.Tensor, int]] = []
        for url, first, lo, hi in self.assigned()[wid::nw]:
            n = self.counts[self.urls.index(url)] if self.counts is not None else None
            want = None if n is None else min(hi, first + n) - max(lo, first)
            read = 0
            for k, sample in enumerate(self._shard(url)):
                if not lo <= first + k < hi:
                    continue
                read += 1
                try:
                    batch.append(self.decoder(sample, first + k))
                except Exception as err:  # noqa: BLE001
                    self.ledger.decode_error(url, str(sample.get("__key__")), err)
                    continue
                if len(batch) == self.batch_size:
                    yield collate_samples(batch)
                    batch = []
            self.ledger.end_pass(url, read, want)
        if batch:
            yield collate_samples(batch)


class ShardLoader(ProgressAwareLoader):
    """Loader of a :class:`TrainStream`: sets the epoch and resume point before workers start, and ends the
    epoch after ``len(stream)`` batches. Workers are not persistent: they must see each epoch's seed."""

    def __init__(
        self,
        dataset: TrainStream,
        num_workers: int = 0,
        pin_memory: bool = False,
        trainer: L.Trainer | None = None,
        worker_init_fn: Any = None,
    ) -> None:
        super().__init__(
            dataset,
            batch_size=None,
            num_workers=num_workers,
            pin_memory=pin_memory,
            worker_init_fn=worker_init_fn,
        )
        self.attach(trainer)
        self._epochs = 0

    def _fallback_epoch(self) -> int:
        return self._epochs

    def _start(self, epoch: int, consumed: int):
        ds: TrainStream = self.dataset  # type: ignore[assignment]
        ds.epoch, ds.start_batch = epoch, consumed
        ds.ledger.reset_epoch()  # before the workers start: they write into these shared counters
        self._epochs = epoch + 1
        it = iter(torch.utils.data.DataLoader.__iter__(self))
        try:
            for _ in range(len(ds) - consumed):
                yield next(it)
        finally:
            del it

    def state_dict(self) -> dict[str, Any]:
        ds: TrainStream = self.dataset  # type: ignore[assignment]
        epoch, consumed = self.progress()
        return {
            "seed": ds.seed,
            "world_size": ds.world,
            "num_workers": self.num_workers,
            "batch_size": ds.batch_size,
            "epoch": epoch,
            "consumed": consumed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ds: TrainStream = self.dataset  # type: ignore[assignment]
        self._check_state(
            state,
            {
                "seed": ds.seed,
                "world_size": ds.world,
                "num_workers": self.num_workers,
                "batch_size": ds.batch_size,
            },
        )
