"""SafeImageFolder: an ImageNet-layout dataset that survives unreadable files.

Why not torchvision's ImageFolder: one corrupt JPEG among 1.28M kills a multi-day run hours in. Here a
file that fails to decode is skipped with a warning (once per file per process), counted, and the next
index's sample is returned instead: deterministic, so a given epoch order still yields the same batches.

Layout: ``root/<class_name>/**/<image>.{jpg,jpeg,png,...}``; class index = position of the folder name in
the sorted list (as ImageFolder), unless ``classes`` pins the mapping explicitly.

Counting with DataLoader workers: each worker holds a copy of the dataset, so a plain attribute would
count only inside that worker. The record therefore lives in a shared-memory tensor with one flag per file,
which fork and spawn workers both write back into: ``corrupt_files`` lists the distinct unreadable files
(a file read every epoch counts once), ``num_skipped`` is their number; under DDP each rank sees its own
share. ``log_summary`` names them; the datamodules report them into ``metrics.json``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from var_lightning.data.transforms import to_rgb

log = logging.getLogger(__name__)

IMG_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff")
_LAYOUT_HINT = (
    "expected an ImageNet-style layout: <root>/<class_name>/<image>.jpg (one sub-folder per class, "
    "e.g. <root>/n01440764/ILSVRC2012_val_00000293.JPEG)"
)
_SPLIT_LAYOUT_HINT = (
    "expected data.root to hold one folder per split, each with one sub-folder per class: "
    "<data.root>/train/<class_name>/<image>.jpg and <data.root>/val/<class_name>/<image>.jpg "
    "(e.g. data.root=/datasets/imagenet with /datasets/imagenet/train/n01440764/n01440764_10026.JPEG; "
    "other split names: data.train_dir=, data.val_dir=)"
)


def _layout_hint(config_key: str) -> str:
    """The layout to expect: the data module's (``data.root`` is the level above ``train/``) or a plain
    class-folder tree (``var-make-shards`` input, ``var-eval`` folders)."""
    return _SPLIT_LAYOUT_HINT if config_key.startswith("data.root") else _LAYOUT_HINT


def find_classes(root: str, config_key: str = "data.root") -> list[str]:
    """Sorted names of the sub-folders of ``root``; errors name the path and the config key to fix."""
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"{config_key}: image folder {root!r} does not exist; {_layout_hint(config_key)}"
        )
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise ValueError(f"{config_key}: {root!r} has no class sub-folders; {_layout_hint(config_key)}")
    return classes


def _load_rgb(path: str) -> Image.Image:
    with Image.open(path) as img:
        img.load()  # force the decode here, inside the caller's try, so truncation surfaces now
        return to_rgb(img)


class SafeImageFolder(Dataset):
    """Images under ``root/<class>/`` as ``(transform(img), label)``, skipping files that fail to decode.

    ``classes``: an explicit class list pins the label mapping (e.g. to the train split's classes when
    building val); every listed class must have a folder. ``config_key`` names the setting that holds
    ``root`` in error messages. Decode failures are skipped; errors from ``transform`` are not (they are
    bugs, not bad data).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable[[Image.Image], Any] | None = None,
        classes: Sequence[str] | None = None,
        extensions: Sequence[str] = IMG_EXTENSIONS,
        config_key: str = "data.root",
    ) -> None:
        self.root, self.transform, self.config_key = os.fspath(root), transform, config_key
        if classes is None:
            self.classes = find_classes(self.root, config_key)
        else:
            if not os.path.isdir(self.root):
                raise FileNotFoundError(
                    f"{config_key}: image folder {self.root!r} does not exist; {_layout_hint(config_key)}"
                )
            self.classes = list(classes)
            missing = [c for c in self.classes if not os.path.isdir(os.path.join(self.root, c))]
            if missing:
                raise ValueError(
                    f"{config_key}: {len(missing)} pinned classes have no folder under {self.root!r}, "
                    f"e.g. {missing[:5]}; {_layout_hint(config_key)}"
                )
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples = self._scan(tuple(e.lower() for e in extensions))
        if not self.samples:
            raise ValueError(
                f"{config_key}: no images with extensions {tuple(extensions)} under {self.root!r} "
                f"({len(self.classes)} class folders); {_layout_hint(config_key)}"
            )
        self.targets = [label for _, label in self.samples]
        self._bad_N = torch.zeros(len(self.samples), dtype=torch.uint8).share_memory_()  # 1 = unreadable
        self._warned: set[str] = set()  # per process: each worker warns once per bad file

    def _scan(self, extensions: tuple[str, ...]) -> list[tuple[str, int]]:
        """Image files per class folder. Linked directories are followed once per real directory: a link
        back up the tree (a loop) or a second link to a folder already read is skipped and counted in
        ``skipped_links``, so no image is read twice and a loop cannot multiply the epoch."""
        samples: list[tuple[str, int]] = []
        empty = []

        def ident(path: str) -> tuple[int, int]:
            st = os.stat(path)
            return st.st_dev, st.st_ino

        # (device, inode) of every directory read or to be read: the root and the class folders up front,
        # so a link to the root or into another class is never followed
        seen = {ident(self.root), *(ident(os.path.join(self.root, c)) for c in self.classes)}
        self.skipped_links: list[str] = []
        for cls in self.classes:
            cls_dir = os.path.join(self.root, cls)
            found = []
            for dirpath, dirnames, filenames in os.walk(cls_dir, followlinks=True):
                if dirpath != cls_dir and ident(dirpath) in seen:
                    self.skipped_links.append(dirpath)
                    dirnames[:] = []
                    continue
                seen.add(ident(dirpath))
                dirnames.sort()
                found += [
                    os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(extensions)
                ]
            if not found:
                empty.append(cls)
            samples += [(path, self.class_to_idx[cls]) for path in found]
        if self.skipped_links:
            shown = ", ".join(self.skipped_links[:3]) + (" ..." if len(self.skipped_links) > 3 else "")
            log.warning(
                "%s: skipped %d linked director%s already read (a symlink loop or a second link to the same "
                "folder): %s", self.root, len(self.skipped_links),
                "y" if len(self.skipped_links) == 1 else "ies", shown,
            )  # fmt: skip
        if empty and len(empty) < len(self.classes):
            log.warning("%s: %d class folders have no images, e.g. %s", self.root, len(empty), empty[:5])
        return samples

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_skipped(self) -> int:
        """Distinct unreadable files found so far (main process and its DataLoader workers)."""
        return int(self._bad_N.sum())

    def corrupt_files(self) -> list[str]:
        """Paths of the unreadable files found so far, in dataset order."""
        return [self.samples[i][0] for i in torch.nonzero(self._bad_N).flatten().tolist()]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        n = len(self.samples)
        for attempt in range(n):
            path, label = self.samples[(index + attempt) % n]
            try:
                img = _load_rgb(path)
            except Exception as err:  # noqa: BLE001 - corrupt files raise OSError, ValueError, SyntaxError, ...
                self._record_skip((index + attempt) % n, path, err)
                continue
            return (self.transform(img) if self.transform is not None else img), label
        raise RuntimeError(f"{self.config_key}: none of the {n} images under {self.root!r} could be decoded")

    def _record_skip(self, i: int, path: str, err: Exception) -> None:
        self._bad_N[i] = 1
        if path not in self._warned:
            self._warned.add(path)
            log.warning(
                "skipping unreadable image %s (%s: %s); using the next sample", path, type(err).__name__, err
            )

    def log_summary(self) -> None:
        """Log how many files were unreadable and which (main process + workers), if any."""
        bad = self.corrupt_files()
        if bad:
            shown = ", ".join(bad[:10]) + (f", ... ({len(bad) - 10} more)" if len(bad) > 10 else "")
            log.warning(
                "%s: skipped %d unreadable files out of %d: %s", self.root, len(bad), len(self.samples), shown
            )
