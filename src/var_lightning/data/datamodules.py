"""LightningDataModules: the built-in synthetic shapes and an ImageNet-layout image folder.

Both yield batches ``(img_B3HW, label_B)``: float in [-1, 1] and int64 labels, and expose
``num_classes``, ``image_size`` and ``class_names`` for the model and the image-logging callbacks.
Distributed samplers are left to Lightning (it wraps these loaders under DDP); the train loader shuffles
with a generator seeded from ``seed`` so the order is reproducible for a given seed.
"""

from __future__ import annotations

import logging
import math
import os

import pytorch_lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from var_lightning.data.imagefolder import SafeImageFolder, find_classes
from var_lightning.data.resumable import ResumableLoader
from var_lightning.data.sizing import ImageSizeMixin, check_image_size, resolve_num_workers
from var_lightning.data.synthetic import SyntheticShapes, synthetic_class_names
from var_lightning.data.transforms import build_transform
from var_lightning.data.workers import worker_init

log = logging.getLogger(__name__)


def _check_positive(value: int, key: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{key} must be a positive integer, got {value!r}")


class _LoaderMixin:
    """Loader construction shared by both modules: seeded train shuffle, workers kept only when > 0."""

    batch_size: int
    val_batch_size: int
    num_workers: int
    seed: int
    drop_last: bool
    pin_memory: bool
    persistent_workers: bool | None

    def _split_dataset(self, split: str) -> Dataset | None:
        raise NotImplementedError

    def samples_per_rank(self, split: str, world_size: int) -> list[int] | None:
        """Samples each of ``world_size`` ranks gets of ``split``: the distributed samplers pad every rank's
        share to ``ceil(N / world_size)``, so only an empty split leaves a rank without data."""
        ds = self._split_dataset(split)
        if ds is None:
            return None
        n = len(ds)
        return [math.ceil(n / world_size)] * world_size

    def _check_one_batch(self, dataset: Dataset) -> None:
        """With ``drop_last`` a training split smaller than one batch per rank gives zero steps: the run would
        end at once with no checkpoint. Stop before training instead, with the counts and the fixes. Only while
        fitting: evaluation reads the split as a dataset and drops nothing."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or getattr(getattr(trainer, "state", None), "fn", None) != "fit":
            return  # read outside fitting (var-eval's real baseline, dataset_split): no steps to lose
        world = int(getattr(trainer, "world_size", 1) or 1)
        n = len(dataset)  # type: ignore[arg-type]
        per_rank = math.ceil(n / world)
        if self.drop_last and per_rank < self.batch_size:
            ranks = f" ({per_rank} per rank on {world} ranks)" if world > 1 else ""
            raise ValueError(
                f"the training split has {n} images{ranks}, fewer than one batch of data.batch_size="
                f"{self.batch_size}; with data.drop_last=true every epoch would have zero steps and the run would "
                f"end without training or a checkpoint. Use data.batch_size={max(1, per_rank)} (or less), add "
                f"images, or set data.drop_last=false"
            )

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        """Training: a :class:`ResumableLoader` (seeded per-epoch order and per-item augmentation; a run
        resumed mid-epoch continues with exactly the batches an uninterrupted run would see). Evaluation:
        a plain, unshuffled loader."""
        workers = self.num_workers
        persistent = workers > 0 and (self.persistent_workers is None or self.persistent_workers)
        common = dict(
            num_workers=workers,
            worker_init_fn=worker_init if workers > 0 else None,  # stop signals go to the main process
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=persistent,
        )
        if train:
            self._check_one_batch(dataset)
            return ResumableLoader(
                dataset,
                batch_size=self.batch_size,
                shuffle=True,
                seed=self.seed,
                drop_last=self.drop_last,
                trainer=getattr(self, "trainer", None),
                **common,
            )
        return DataLoader(dataset, batch_size=self.val_batch_size, shuffle=False, drop_last=False, **common)


class SyntheticDataModule(ImageSizeMixin, _LoaderMixin, L.LightningDataModule):
    """Procedural class-conditional shapes (see ``SyntheticShapes``): trains anywhere, downloads nothing.
    ``image_size`` None: the model's (set at startup by var-train / var-eval)."""

    def __init__(
        self,
        image_size: int | None = None,
        num_classes: int = 10,
        train_size: int = 2000,
        val_size: int = 256,
        test_size: int = 256,
        batch_size: int = 32,
        val_batch_size: int | None = None,
        num_workers: int | None = 0,
        seed: int = 0,
        drop_last: bool = True,
    ) -> None:
        super().__init__()
        check_image_size(image_size, "data.image_size", minimum=8)
        _check_positive(num_classes, "data.num_classes")
        _check_positive(batch_size, "data.batch_size")
        if val_batch_size is not None:
            _check_positive(val_batch_size, "data.val_batch_size")
        for key, size in (
            ("data.train_size", train_size),
            ("data.val_size", val_size),
            ("data.test_size", test_size),
        ):
            _check_positive(size, key)
        if drop_last and train_size < batch_size:
            raise ValueError(
                f"data.train_size={train_size} < data.batch_size={batch_size} with drop_last=True "
                "leaves no training batch"
            )
        self.save_hyperparameters(logger=False)  # var-train logs the resolved config to the trackers
        self.image_size, self.num_classes = image_size, num_classes
        self.class_names: list[str] = synthetic_class_names(num_classes)
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.num_workers, self.seed, self.drop_last = resolve_num_workers(num_workers), seed, drop_last
        self.pin_memory, self.persistent_workers = False, None
        self.datasets: dict[str, SyntheticShapes] = {}

    def setup(self, stage: str | None = None) -> None:
        # Labels only (pixels are generated per item), so building all three splits is instant.
        image_size = self.require_image_size()
        for split, size in self.sizes.items():
            if split not in self.datasets or self.datasets[split].image_size != image_size:
                self.datasets[split] = SyntheticShapes(
                    size, image_size, self.num_classes, split=split, seed=self.seed
                )

    def _split_dataset(self, split: str) -> Dataset | None:
        return self.datasets.get(split)

    def split_source(self, split: str) -> str:
        """Each split is generated from its own seed stream: three disjoint sets."""
        return f"synthetic:{split}"

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.datasets["train"], train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.datasets["val"], train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.datasets["test"], train=False)


class ImageFolderDataModule(ImageSizeMixin, _LoaderMixin, L.LightningDataModule):
    """ImageNet layout ``root/{train_dir,val_dir}/<class>/<image>`` with the VAR resize-then-crop recipe.

    The test loader reads ``test_dir`` when it exists, else the val split (ImageNet has no labelled test
    set). Val and test take the train split's class list, so labels agree (a train class with no val folder
    is an error). ``classes`` pins the mapping
    explicitly. Nothing touches the disk until ``class_names``/``num_classes`` are read or ``setup`` runs,
    so configs instantiate on machines without the data.
    """

    def __init__(
        self,
        root: str,
        image_size: int | None = None,
        mid_reso: float = 1.125,
        hflip: bool = False,
        batch_size: int = 32,
        val_batch_size: int | None = None,
        num_workers: int | None = None,
        train_dir: str = "train",
        val_dir: str = "val",
        test_dir: str | None = "test",
        pin_memory: bool = True,
        persistent_workers: bool | None = None,
        seed: int = 0,
        drop_last: bool = True,
        classes: list[str] | None = None,
    ) -> None:
        super().__init__()
        if not root:
            raise ValueError(
                "data.root is empty: set it to a folder laid out as <root>/train/<class>/<image>"
            )
        check_image_size(image_size, "data.image_size")
        _check_positive(batch_size, "data.batch_size")
        if val_batch_size is not None:
            _check_positive(val_batch_size, "data.val_batch_size")
        if mid_reso < 1.0:
            raise ValueError(f"data.mid_reso must be >= 1 (resize then crop), got {mid_reso}")
        self.save_hyperparameters(logger=False)  # var-train logs the resolved config to the trackers
        self.root, self.image_size, self.mid_reso, self.hflip = os.fspath(root), image_size, mid_reso, hflip
        self.train_dir, self.val_dir, self.test_dir = train_dir, val_dir, test_dir
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.num_workers = resolve_num_workers(num_workers)
        self.pin_memory, self.persistent_workers = pin_memory, persistent_workers
        self.seed, self.drop_last = seed, drop_last
        self._classes = list(classes) if classes is not None else None
        self.train_dataset: SafeImageFolder | None = None
        self.val_dataset: SafeImageFolder | None = None
        self.test_dataset: SafeImageFolder | None = None

    def _split_root(self, split_dir: str) -> tuple[str, str]:
        which = {self.train_dir: "train", self.val_dir: "val", self.test_dir: "test"}.get(split_dir, "val")
        key = f"data.root (+ data.{which}_dir={split_dir!r})"
        return os.path.join(self.root, split_dir), key

    def _split_dataset(self, split: str) -> Dataset | None:
        return {"train": self.train_dataset, "val": self.val_dataset, "test": self.test_dataset}.get(split)

    @property
    def has_test_dir(self) -> bool:
        return bool(self.test_dir) and os.path.isdir(os.path.join(self.root, self.test_dir))

    def split_source(self, split: str) -> str:
        """The folder a split reads: ``test`` is the ``test_dir`` when it exists, else the val folder (ImageNet
        has no labelled test set), so two splits may be the same images; var-eval checks this."""
        name = {"train": self.train_dir, "val": self.val_dir}.get(split)
        if split == "test":
            name = self.test_dir if self.has_test_dir else self.val_dir
        if name is None:
            raise ValueError(f"unknown split {split!r}: train, val or test")
        return os.path.abspath(os.path.join(self.root, name))

    @property
    def class_names(self) -> list[str]:
        """Class folder names of the train split (sorted), or the pinned ``classes``; read once."""
        if self._classes is None:
            path, key = self._split_root(self.train_dir)
            self._classes = find_classes(path, key)
        return self._classes

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _dataset(self, split_dir: str, train: bool) -> SafeImageFolder:
        path, key = self._split_root(split_dir)
        transform = build_transform(self.require_image_size(), self.mid_reso, train=train, hflip=self.hflip)
        ds = SafeImageFolder(path, transform=transform, classes=self.class_names, config_key=key)
        log.info("%s split: %d images, %d classes from %s", split_dir, len(ds), len(ds.classes), path)
        return ds

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = self._dataset(self.train_dir, train=True)
        if self.val_dataset is None:
            self.val_dataset = self._dataset(self.val_dir, train=False)
        if stage in (None, "test") and self.test_dataset is None and self.has_test_dir:
            self.test_dataset = self._dataset(self.test_dir, train=False)

    def train_dataloader(self) -> DataLoader:
        assert self.train_dataset is not None, "call setup('fit') first"
        return self._loader(self.train_dataset, train=True)

    def val_dataloader(self) -> DataLoader:
        assert self.val_dataset is not None, "call setup() first"
        return self._loader(self.val_dataset, train=False)

    def test_dataloader(self) -> DataLoader:
        if self.test_dataset is None and self.has_test_dir:
            self.setup("test")
        if self.test_dataset is not None:
            return self._loader(self.test_dataset, train=False)
        return self.val_dataloader()

    def data_report(self) -> dict[str, object]:
        """What went wrong reading the data, for ``metrics.json``: the unreadable files, by split."""
        out: dict[str, object] = {}
        for split, ds in (
            ("train", self.train_dataset),
            ("val", self.val_dataset),
            ("test", self.test_dataset),
        ):
            bad = ds.corrupt_files() if ds is not None else []
            if bad:
                out[f"data/{split}/corrupt_files"] = len(bad)
                out[f"data/{split}/corrupt_file_names"] = bad[:100]
        return out

    def teardown(self, stage: str | None = None) -> None:
        for ds in (self.train_dataset, self.val_dataset, self.test_dataset):
            if ds is not None:
                ds.log_summary()
