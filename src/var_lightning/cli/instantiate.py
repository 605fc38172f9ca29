"""Callbacks and loggers from the config's ``_target_`` entries (the Hydra side of building a Trainer)."""

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
