"""Record what a scaling-law study needs from a VAR training job: ``results.json`` in the run directory.

Follows the contract of :mod:`var_lightning.scaling.collect`: parameter count N, training FLOPs per image
(from the analytic FLOP model), and after every validation the images seen, the training compute so far
and the validation loss / token error rate (average over all tokens and last scale). A job that raises
writes ``status: failed`` with the error, so a sweep's collector reports it instead of guessing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as L
from pytorch_lightning.utilities import rank_zero_only

from var_lightning.scaling.collect import history_entry, write_results
from var_lightning.scaling.flops import model_flops, model_num_params

log = logging.getLogger(__name__)

# logged metric -> results.json key
METRIC_MAP = {
    "val/loss": "val/loss_avg",
    "val/loss_last": "val/loss_last",
    "val/token_err_avg": "val/token_err_avg",
    "val/token_err_last": "val/token_err_last",
}


class ScalingResults(L.Callback):
    def __init__(self, path: str | None = None, seed: int | None = None) -> None:
        super().__init__()
        self.path, self.seed = path, seed
        self.history: list[dict[str, Any]] = []
        self._info: dict[str, Any] | None = None

    def _dir(self, trainer: L.Trainer) -> Path:
        return Path(self.path).parent if self.path else Path(trainer.default_root_dir)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        var = getattr(pl_module, "var", None)
        if var is None:
            raise TypeError("ScalingResults records VAR-stage runs; remove it from tokenizer runs")
        kind = getattr(var, "kind", "var")
        self._info = {
            "params": model_num_params(var.cfg, kind),
            "flops_per_image": float(model_flops(var.cfg, kind)["train"]),
            "depth": var.cfg.depth,
            "seed": self.seed,
        }
        self._global_batch = pl_module.global_batch_size()
        if trainer.is_global_zero:
            log.info(
                "scaling record: N=%d params, %.3g training FLOPs/image",
                self._info["params"],
                self._info["flops_per_image"],
            )

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self._info is None:
            return
        metrics = {
            dst: float(trainer.callback_metrics[src])
            for src, dst in METRIC_MAP.items()
            if src in trainer.callback_metrics
        }
        if len(metrics) < len(METRIC_MAP):
            return
        images = trainer.global_step * self._global_batch
        self.history.append(
            history_entry(
                trainer.global_step, trainer.current_epoch, images, self._info["flops_per_image"], metrics
            )
        )
        self._write(trainer, "failed", error="running (not finished yet)")

    @rank_zero_only
    def _write(self, trainer: L.Trainer, status: str, error: str | None = None) -> None:
        if self._info is not None:
            write_results(self._dir(trainer), status=status, history=self.history, error=error, **self._info)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.history:
            self._write(trainer, "completed")
        else:
            self._write(
                trainer, "failed", error="no validation ran: results need at least one val/ metric set"
            )

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._write(trainer, "failed", error=f"{type(exception).__name__}: {exception}")
