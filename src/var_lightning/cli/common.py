"""Helpers shared by the Hydra entry points (instantiating callbacks/loggers, startup checks)."""

from __future__ import annotations

import logging

import pytorch_lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def instantiate_callbacks(cfg: DictConfig | None) -> list[L.Callback]:
    """Every entry with a ``_target_`` becomes a callback; null entries are skipped (disable one with
    ``~callbacks.<name>`` or ``callbacks.<name>=null``)."""
    if not cfg:
        return []
    return [instantiate(c) for c in cfg.values() if c is not None and "_target_" in c]


def instantiate_loggers(cfg: DictConfig | None) -> list:
    if not cfg:
        return []
    return [instantiate(c) for c in cfg.values() if c is not None and "_target_" in c]


def check_image_size(model: L.LightningModule, datamodule: L.LightningDataModule) -> None:
    """Fail at startup, naming the expected size, when the data does not fit the scale schedule."""
    vae = getattr(model, "vae", None)
    want = vae.cfg.image_size if vae is not None else None
    got = getattr(datamodule, "image_size", None)
    if want is not None and got is not None and int(got) != int(want):
        raise ValueError(
            f"data.image_size={got} does not fit the scale schedule: patch_nums ends at {vae.patch_nums[-1]} and the "
            f"tokenizer downsamples {vae.cfg.downsample}x, so images must be {want}x{want} "
            f"(set data.image_size={want} or pick another schedule)"
        )
    n_cls = getattr(datamodule, "num_classes", None)
    var = getattr(model, "var", None)
    if var is not None and n_cls is not None and int(n_cls) > var.num_classes:
        raise ValueError(
            f"the dataset has {n_cls} classes but the transformer only {var.num_classes} "
            f"(set model.transformer.num_classes={n_cls})"
        )
