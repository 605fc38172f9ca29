"""WebDataset data module: train and validate from tar shards (local paths or URLs), images or pre-tokenized.

Training stream. Every (rank, worker) pair takes every n-th entry (n = ranks x workers) of one global,
seeded, infinite sequence of shards: resampled with replacement (``resampled=true``, the default) or
reshuffled passes over the list. This is webdataset's ``resampled`` + ``split_by_node`` +
``split_by_worker`` made deterministic: the sequence depends on ``(seed, epoch)`` only. Samples go through
a seeded shuffle buffer, are decoded with the same transforms as the ImageFolder path (resize the shorter
side to ``mid_reso x size``, random crop, optional flip), and are batched inside the workers. An epoch is
a fixed number of batches, the same on every rank (``train_samples // (batch_size x world_size)``), so no
rank waits for another at the end of an epoch, whatever the shard sizes.

Validation stream. With a manifest (per-shard counts), rank r evaluates samples ``[r N / R, (r+1) N / R)``
of the shard list in order, so every validation sample is seen exactly once across ranks. Local shards are
checked at set-up (tar headers only): the slices cover the samples that can be read, damaged shards are
named, and a rank that would get none is an error at start-up (``samples_per_rank``) rather than a hang.

Corrupt samples (undecodable image, missing field, truncated tar) are skipped and counted per shard as lost
*samples* (the manifest's count minus what a pass read, plus decode failures), not read errors
(:mod:`var_lightning.data.shard_health`); the DataHealth callback reports them per epoch and at the end,
naming the shards. A stream that finds nothing readable in many consecutive shards stops with an error
instead of spinning. Mid-epoch resume skips the consumed batches by re-reading (not decoding)
the same raw samples, so it is exact unless corrupt samples were skipped in that range.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as L
import torch

from var_lightning import distributed
from var_lightning.data.shard_health import ShardLedger, count_readable
from var_lightning.data.shard_reader import ImageDecoder, TokenDecoder, check_reachable, expand_shard_spec
from var_lightning.data.shard_streams import EvalStream, ShardLoader, TrainStream
from var_lightning.data.shards import Manifest
from var_lightning.data.sizing import ImageSizeMixin, check_image_size, resolve_num_workers
from var_lightning.data.workers import worker_init

log = logging.getLogger(__name__)


class WebDatasetDataModule(ImageSizeMixin, L.LightningDataModule):
    """Batches ``(img_B3HW, label_B)`` (or ``(tokens_BL, label_B)`` with ``pretokenized``) from tar shards.

    train_shards / val_shards: a shard directory or ``manifest.json`` (local or URL; written by
    ``var-make-shards``), a brace pattern ``/data/train-{000000..000127}.tar`` or ``https://.../train-{..}.tar``,
    or a list. train_samples: samples per epoch (default: the manifest's count). num_classes: needed when there
    is no manifest. shuffle_buffer: samples held per worker for shuffling. resampled: draw shards with
    replacement (else reshuffled passes). pretokenized: read ``tok.npy`` token pyramids instead of images (the
    VAR stage then skips the tokenizer's encoder); image_size comes from the manifest then. Other arguments as
    ``ImageFolderDataModule``. Nothing is read until ``setup`` or ``class_names``/``num_classes``.
    """

    def __init__(
        self,
        train_shards: str | Sequence[str],
        val_shards: str | Sequence[str] | None = None,
        image_size: int | None = None,
        mid_reso: float = 1.125,
        hflip: bool = False,
        batch_size: int = 32,
        val_batch_size: int | None = None,
        num_workers: int | None = None,
        shuffle_buffer: int = 5000,
        resampled: bool = True,
        train_samples: int | None = None,
        num_classes: int | None = None,
        pretokenized: bool = False,
        seed: int = 0,
        pin_memory: bool = True,
    ) -> None:
        super().__init__()
        if not train_shards:
            raise ValueError(
                "data.train_shards is empty: set it to a shard directory (var-make-shards output), a "
                "manifest.json or a brace pattern like /data/train-{000000..000127}.tar"
            )
        for key, v in (("batch_size", batch_size), ("shuffle_buffer", shuffle_buffer)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"data.{key} must be a positive integer, got {v!r}")
        check_image_size(image_size, "data.image_size")
        if mid_reso < 1.0:
            raise ValueError(f"data.mid_reso must be >= 1 (resize then crop), got {mid_reso}")
        self.save_hyperparameters(logger=False)  # var-train logs the resolved config to the trackers
        self.train_spec = list(train_shards) if not isinstance(train_shards, str) else train_shards
        self.val_spec = (
            list(val_shards) if val_shards is not None and not isinstance(val_shards, str) else val_shards
        )
        self._image_size, self.mid_reso, self.hflip = (
            image_size,
            mid_reso,
            hflip,
        )  # image_size: see ImageSizeMixin
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.num_workers = resolve_num_workers(num_workers)
        self.shuffle_buffer, self.resampled = shuffle_buffer, resampled
        self.train_samples, self._num_classes, self.pretokenized = train_samples, num_classes, pretokenized
        self.seed, self.pin_memory = seed, pin_memory
        self._train: tuple[list[str], Manifest | None] | None = None
        self._val: tuple[list[str], Manifest | None] | None = None
        self.train_stream: TrainStream | None = None
        self.val_stream: EvalStream | None = None

    # ------------------------------------------------------------------ metadata
    def _train_meta(self) -> tuple[list[str], Manifest | None]:
        if self._train is None:
            urls, man = expand_shard_spec(self.train_spec, "data.train_shards")
            self._check_kind(man, "data.train_shards")
            self._train = (urls, man)
        return self._train

    def _check_kind(self, man: Manifest | None, key: str) -> None:
        if man is None:
            return
        want = "tokens" if self.pretokenized else "images"
        if man.kind != want:
            fix = (
                "write token shards with `var-make-shards ... --tokenizer <ckpt>` or set data.pretokenized=false"
                if self.pretokenized
                else "use data=webdataset_tokens (data.pretokenized=true) for them"
            )
            raise ValueError(
                f"{key}: the shards hold {man.kind} but data.pretokenized={self.pretokenized}; {fix}"
            )

    @property
    def manifest(self) -> Manifest | None:
        return self._train_meta()[1]

    @property
    def tokenizer_meta(self) -> dict[str, Any] | None:
        """The tokenizer that wrote pre-tokenized shards (schedule, vocabulary, fingerprint), else None."""
        man = self.manifest if self.pretokenized else None
        return man.tokenizer if man is not None else None

    @property
    def class_names(self) -> list[str]:
        man = self.manifest
        if man is not None:
            return list(man.classes)
        if self._num_classes is None:
            raise ValueError(
                "data.num_classes is required: the shards have no manifest.json to read classes from"
            )
        return [str(i) for i in range(self._num_classes)]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> int | None:
        meta = self.tokenizer_meta
        return int(meta["image_size"]) if meta else self._image_size

    @image_size.setter
    def image_size(self, value: int | None) -> None:
        self._image_size = value

    # ------------------------------------------------------------------ streams
    def _decoder(self, train: bool) -> Any:
        if self.pretokenized:
            meta = self.tokenizer_meta
            length = sum(p * p for p in meta["patch_nums"]) if meta else None
            return TokenDecoder(train, self.hflip, length)
        return ImageDecoder(self.require_image_size(), self.mid_reso, train, self.hflip)

    def _check_shards(self, urls: list[str], key: str, resampled: bool) -> None:
        check_reachable(urls[0], key)
        streams = distributed.world_size() * max(self.num_workers, 1)
        if len(urls) < streams:
            msg = (
                f"{key}: {len(urls)} shards for {distributed.world_size()} ranks x {max(self.num_workers, 1)} "
                f"workers = {streams} readers"
            )
            if not resampled:
                raise ValueError(
                    f"{msg}: some readers would get no shard; set data.resampled=true, lower "
                    f"data.num_workers, or write more shards (var-make-shards --max-count)"
                )
            log.warning(
                "%s: readers draw the same shards concurrently, which weakens shuffling; write more, "
                "smaller shards (var-make-shards --max-count) or lower data.num_workers",
                msg,
            )

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_stream is None:
            urls, man = self._train_meta()
            samples = self.train_samples or (man.num_samples if man else None)
            if samples is None:
                raise ValueError(
                    "data.train_samples is required: the shards have no manifest.json with the count"
                )
            global_batch = self.batch_size * distributed.world_size()
            batches = samples // global_batch
            if batches < 1:
                raise ValueError(
                    f"{samples} training samples give no full batch of {self.batch_size} x "
                    f"{distributed.world_size()} ranks; lower data.batch_size"
                )
            self._check_shards(urls, "data.train_shards", self.resampled)
            self.train_stream = TrainStream(
                urls,
                self._decoder(True),
                self.batch_size,
                self.seed,
                batches,
                self.shuffle_buffer,
                self.resampled,
                counts=[r.num_samples for r in man.shards] if man is not None else None,
                num_workers=self.num_workers,
            )
            log.info(
                "train shards: %d files, %d samples -> %d batches of %d per rank per epoch",
                len(urls),
                samples,
                batches,
                self.batch_size,
            )
        if self.val_spec and self.val_stream is None and stage in (None, "fit", "validate", "test"):
            urls, man = expand_shard_spec(self.val_spec, "data.val_shards")
            self._check_kind(man, "data.val_shards")
            if man is not None and self.manifest is not None and man.classes != self.manifest.classes:
                raise ValueError(
                    "data.val_shards: the validation shards' classes differ from the training shards'; "
                    "write them with `var-make-shards ... --classes-from <train shards>`"
                )
            counts = [r.num_samples for r in man.shards] if man is not None else None
            if counts is None and len(urls) < distributed.world_size():
                raise ValueError(
                    f"data.val_shards: {len(urls)} shards for {distributed.world_size()} ranks and no "
                    f"manifest with per-shard counts; write them with var-make-shards"
                )
            check_reachable(urls[0], "data.val_shards")
            counts = self._readable_counts(urls, counts)
            self.val_stream = EvalStream(
                urls, self._decoder(False), self.val_batch_size, counts, num_workers=self.num_workers
            )

    @staticmethod
    def _readable_counts(urls: list[str], counts: list[int] | None) -> list[int] | None:
        """The validation shards' samples that can actually be read (local shards: their tar headers, no
        data read), so each rank's slice exists; damaged shards are named. Remote shards keep the manifest's."""
        if counts is None or not all(os.path.isfile(u) for u in urls):
            return counts
        readable = []
        for url, n in zip(urls, counts, strict=True):
            got, problem = count_readable(url)
            if problem or got < n:
                log.warning(
                    "validation shard %s: %d of the manifest's %d samples are readable (%s); validation uses those",
                    url, got, n, problem or "missing samples",
                )  # fmt: skip
            readable.append(min(got, n))
        return readable

    def samples_per_rank(self, split: str, world_size: int) -> list[int] | None:
        """Samples each rank gets of ``split`` (None: not known in advance)."""
        if split == "val":
            stream = self.val_stream
            return stream.samples_per_rank() if stream is not None and stream.world == world_size else None
        return None

    def data_report(self) -> dict[str, Any]:
        """The lost samples per shard (filled in by the DataHealth callback), for ``metrics.json``."""
        return dict(getattr(self, "health_reports", {}))

    def shard_ledgers(self) -> list[ShardLedger]:
        return [s.ledger for s in (self.train_stream, self.val_stream) if s is not None]

    def train_dataloader(self) -> ShardLoader:
        assert self.train_stream is not None, "call setup('fit') first"
        workers = self.num_workers
        return ShardLoader(
            self.train_stream,
            num_workers=workers,
            worker_init_fn=worker_init if workers > 0 else None,  # stop signals go to the main process
            trainer=self._trainer_or_none(),
            pin_memory=self.pin_memory and torch.cuda.is_available(),
        )

    def _trainer_or_none(self) -> L.Trainer | None:
        return getattr(self, "trainer", None)

    def val_dataloader(self) -> torch.utils.data.DataLoader | list:
        if self.val_stream is None:
            return []
        return torch.utils.data.DataLoader(
            self.val_stream,
            batch_size=None,
            num_workers=self.num_workers,
            worker_init_fn=worker_init if self.num_workers > 0 else None,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
        )

    def test_dataloader(self) -> torch.utils.data.DataLoader | list:
        return self.val_dataloader()

    @property
    def num_skipped(self) -> int:
        """Sample reads lost so far, this process (training + validation, main process + workers)."""
        return sum(s.ledger.lost_total("run") for s in (self.train_stream, self.val_stream) if s is not None)
