"""`var-train`: train either stage from a composed Hydra config.

    var-train experiment=tokenizer_tiny
    var-train experiment=var_tiny model.tokenizer_ckpt=outputs/.../checkpoints/last.ckpt
    var-train experiment=var_d16_imagenet256 model.tokenizer_ckpt=vae_ch160v4096z32.pth trainer.devices=8

Everything a run writes (checkpoints, images, metrics, logs, the resolved config) goes below the Hydra run
directory, which is printed at the start and the end.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from var_lightning.cli.common import check_image_size, instantiate_callbacks, instantiate_loggers

log = logging.getLogger("var_lightning.train")


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule, L.Trainer]:
    """Instantiate data, model and trainer; the scale schedule is handed to the model from ``schedule``."""
    datamodule = instantiate(cfg.data)
    patch_nums = list(cfg.schedule.patch_nums) if cfg.get("schedule") else None
    model = instantiate(cfg.model, patch_nums=patch_nums, _convert_="all")
    check_image_size(model, datamodule)
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return datamodule, model, trainer


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit (and optionally test) and return the final metrics; ``optimized_metric`` picks one for sweeps."""
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule, model, trainer = build(cfg)
    run_cfg = {k: v for k, v in OmegaConf.to_container(cfg, resolve=False).items() if k != "hydra"}
    run_cfg = OmegaConf.to_container(OmegaConf.merge(run_cfg, {"paths": cfg.paths}), resolve=True)
    for lg in trainer.loggers:
        lg.log_hyperparams(run_cfg)
    if cfg.get("train", True):
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if cfg.get("test"):
        ckpt = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else None
        trainer.test(model, datamodule=datamodule, ckpt_path=ckpt or None)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1})
    ckpt_cb = trainer.checkpoint_callback
    if ckpt_cb is not None and trainer.is_global_zero:
        log.info("checkpoints: last=%s best=%s", ckpt_cb.last_model_path or "-", ckpt_cb.best_model_path or "-")
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    log.info("run directory: %s", out_dir)
    metrics = train(cfg)
    log.info("done; outputs in %s", out_dir)
    name = cfg.get("optimized_metric")
    if name:
        if name not in metrics:
            raise KeyError(f"optimized_metric={name!r} was not logged; available: {sorted(metrics)}")
        return metrics[name]
    return None


if __name__ == "__main__":
    main()
