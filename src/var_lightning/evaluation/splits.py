"""Datasets of a LightningDataModule's splits, and a stable identity for caching their statistics.

Duck-typed (no Lightning import): anything with ``setup(stage)`` and ``<split>_dataloader()`` works.
Items are ``(img_3HW in [-1, 1], label)``, as the var_lightning datamodules yield them.
"""

from __future__ import annotations

import json
from typing import Any

from torch.utils.data import Dataset

SPLITS = ("train", "val", "test")
_STAGE = {"train": "fit", "val": "validate", "test": "test"}


def dataset_split(datamodule: Any, split: str, config_key: str = "split") -> Dataset:
    """The dataset behind ``datamodule.<split>_dataloader()`` (after ``setup`` for that split)."""
    if split not in SPLITS:
        raise ValueError(f"{config_key}={split!r}: choose one of {', '.join(SPLITS)}")
    datamodule.setup(_STAGE[split])
    loader = getattr(datamodule, f"{split}_dataloader", None)
    if loader is None:
        raise ValueError(f"{type(datamodule).__name__} has no {split}_dataloader ({config_key}={split!r})")
    return loader().dataset


def datamodule_source_id(datamodule: Any, split: str, num_items: int | None = None) -> str:
    """Identity of a split for reference-statistics caches: the datamodule class, its constructor
    arguments (``hparams``: root, image size, seed, sizes ...), the split and its length. Data changed
    in place under the same arguments is not detected: delete the cache directory after editing data."""
    hparams = dict(getattr(datamodule, "hparams", {}) or {})
    if getattr(datamodule, "image_size", None) is not None:  # the size the model filled in (image_size: null)
        hparams["image_size"] = int(datamodule.image_size)
    for key in ("batch_size", "val_batch_size", "num_workers", "pin_memory", "persistent_workers"):
        hparams.pop(key, None)  # loader settings do not change the images
    payload = json.dumps(hparams, sort_keys=True, default=str)
    return (
        f"datamodule:{type(datamodule).__module__}.{type(datamodule).__name__}:{payload}:{split}:{num_items}"
    )
