"""What the experiment trackers receive besides scalars: image grids and the checkpoint paths.

Lightning's loggers take metrics and the resolved config (``var-train`` calls ``log_hyperparams``) the same
way; images and files each tracker takes its own way, so this module speaks to the three we ship
(``logger=tensorboard``, ``logger=wandb``, ``logger=mlflow``, combinable with ``csv``: ``'logger=[csv,wandb]'``):

* TensorBoard: ``add_image`` (a CHW grid) and ``add_text`` for the checkpoint paths;
* Weights & Biases: ``WandbLogger.log_image`` (the PNG) and the run summary for the checkpoint paths;
* MLflow: the PNG as an artifact under ``images/`` and run tags for the checkpoint paths.

CSV keeps images as the PNG files in the run directory. Every call runs on rank 0 only and never stops a
run: a tracker that fails to take an image logs a warning.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as L
import torch
from pytorch_lightning.utilities import rank_zero_only

log = logging.getLogger(__name__)


def _kind(logger: object) -> str:
    return type(logger).__name__


@rank_zero_only
def log_image(trainer: L.Trainer, key: str, grid_CHW: torch.Tensor, path: Path) -> None:
    """Send one image grid (also written at ``path``) to every tracker of the run."""
    step = trainer.global_step
    for lg in trainer.loggers:
        try:
            kind = _kind(lg)
            if kind == "TensorBoardLogger":
                img = grid_CHW.float() / 255 if grid_CHW.dtype == torch.uint8 else grid_CHW.float()
                lg.experiment.add_image(key, img.clamp(0, 1), global_step=step)
            elif kind == "WandbLogger":
                lg.log_image(key=key, images=[str(path)], step=step)
            elif kind == "MLFlowLogger":
                lg.experiment.log_artifact(lg.run_id, str(path), artifact_path="images")
        except Exception as e:  # noqa: BLE001 - a tracker's hiccup must not stop training
            log.warning("could not send %s to %s: %s", key, _kind(lg), e)


class TrackerRecords(L.Callback):
    """At the end of fitting, the checkpoint paths (``last``, ``best`` and its score) go to every tracker, so
    a run found in W&B / MLflow / TensorBoard names the files to sample from or resume."""

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        cb = trainer.checkpoint_callback
        if cb is None:
            return
        record = {"checkpoint/last": cb.last_model_path or "", "checkpoint/best": cb.best_model_path or "",
                  "checkpoint/run_dir": str(trainer.default_root_dir)}  # fmt: skip
        score = getattr(cb, "best_model_score", None)
        if score is not None:
            record["checkpoint/best_score"] = f"{float(score):.6g} ({cb.monitor})"
        for lg in trainer.loggers:
            try:
                kind = _kind(lg)
                if kind == "TensorBoardLogger":
                    text = "\n\n".join(f"{k}: `{v}`" for k, v in record.items())
                    lg.experiment.add_text("checkpoints", text, global_step=trainer.global_step)
                elif kind == "WandbLogger":
                    lg.experiment.summary.update(record)
                elif kind == "MLFlowLogger":
                    for k, v in record.items():
                        lg.experiment.set_tag(lg.run_id, k, v)
            except Exception as e:  # noqa: BLE001
                log.warning("could not record the checkpoint paths in %s: %s", _kind(lg), e)
