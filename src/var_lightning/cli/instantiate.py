"""Callbacks and loggers from the config's ``_target_`` entries (the Hydra side of building a Trainer)."""

from __future__ import annotations

import logging
import os

import pytorch_lightning as L
import torch
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
    """A missing tracker package, or W&B without a login (online), stops the run before it starts, naming the
    fix; an MLflow file store (the default: ``<run dir>/mlruns``) is allowed explicitly, since MLflow 3 asks
    for it."""
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
    offline = node.get("offline") or os.environ.get("WANDB_MODE", "").lower() in (
        "offline",
        "disabled",
        "dryrun",
    )
    if cls == "WandbLogger" and not offline:
        import wandb

        if not wandb.login(prompt=False, verify=False):  # the key from WANDB_API_KEY or ~/.netrc; no network
            raise ValueError(
                f"logger={name}: W&B has no login on this machine: run `wandb login` (or set WANDB_API_KEY), or log "
                f"offline with logger.{name}.offline=true (or WANDB_MODE=offline) and upload later with "
                f"`wandb sync <run dir>/wandb/offline-run-*`"
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


MATMUL_PRECISIONS = ("highest", "high", "medium")


def set_matmul_precision(value: str | None) -> None:
    """``trainer.matmul_precision``: torch's float32 matmul precision for the run. The GPU trainer configs set
    ``high``: fp32 matmuls (the fp32 parts of a bf16-mixed run: the tokenizer, the head under fp32, the
    optimizer's math) use TF32 tensor cores on NVIDIA Ampere and newer, as the published trainer does;
    ``highest`` keeps full fp32; null leaves torch's setting alone (the CPU configs)."""
    if value is None:
        return
    if value not in MATMUL_PRECISIONS:
        raise ValueError(
            f"trainer.matmul_precision={value!r}: choose one of {', '.join(MATMUL_PRECISIONS)} (high = TF32 "
            "on NVIDIA GPUs) or null to leave torch's default"
        )
    torch.set_float32_matmul_precision(value)
    torch.backends.cudnn.allow_tf32 = value != "highest"
    log.info("float32 matmul precision: %s (trainer.matmul_precision)", value)
