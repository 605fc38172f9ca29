"""Callbacks and loggers from the config's ``_target_`` entries (the Hydra side of building a Trainer)."""

from __future__ import annotations

import logging
import os

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


# the optional trackers: the package each needs and the extra that installs it
TRACKER_PACKAGES = {
    "WandbLogger": ("wandb", "wandb"),
    "MLFlowLogger": ("mlflow", "mlflow"),
    "TensorBoardLogger": ("tensorboard", "tensorboard"),
}


def _check_tracker(name: str, node: DictConfig) -> None:
    """A missing tracker package stops the run before it starts, naming the pip command; an MLflow file
    store (the default: ``<run dir>/mlruns``) is allowed explicitly, since MLflow 3 asks for it."""
    import importlib.util

    cls = str(node.get("_target_", "")).rsplit(".", 1)[-1]
    if cls in TRACKER_PACKAGES:
        module, extra = TRACKER_PACKAGES[cls]
        if importlib.util.find_spec(module) is None:
            raise ValueError(
                f"logger={name} needs the {module} package, which is not installed: pip install "
                f"'var_lightning[{extra}]' (in a clone: pip install -e '.[{extra}]', or make install-trackers), "
                f"or drop it from the command line (logger=csv)"
            )
    if cls == "MLFlowLogger" and str(node.get("tracking_uri") or "").startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


def instantiate_loggers(cfg: DictConfig | None) -> list:
    """Every entry with a ``_target_`` becomes a Lightning logger (``logger=[csv,wandb]`` gives both)."""
    if not cfg:
        return []
    nodes = {str(k): c for k, c in cfg.items() if c is not None and "_target_" in c}
    for name, node in nodes.items():
        _check_tracker(name, node)
    return [instantiate(c) for c in nodes.values()]
