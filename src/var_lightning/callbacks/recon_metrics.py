"""rFID, PSNR, SSIM and LPIPS of a tokenizer on (part of) the validation set, during training.

Every ``every_n_epochs`` epochs, each validation batch (the first ``limit_batches`` per rank, or all) is
reconstructed with ``pl_module.vae.img_to_reconstruction`` (the quantized path, as the transformer
will see it) and scored; at the end of the epoch the per-rank sums are all-reduced and ``val/rfid``,
``val/psnr``, ``val/ssim``, ``val/lpips`` are logged (``val/psnr`` replaces the module's own value of the
same name, which agrees with it when every batch is used). The feature and LPIPS networks live in
this callback, so they never enter the model checkpoint; they also run under the EMA weights that
validation uses, since all of it happens between the validation epoch's start and end.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as L
import torch

from var_lightning.evaluation.extractors import FeatureExtractor, build_extractor
from var_lightning.evaluation.recon import LPIPSFn, ReconstructionMetrics, build_lpips

log = logging.getLogger(__name__)


class ReconMetrics(L.Callback):
    """Reconstruction metrics of a module with a ``vae`` (``MultiScaleVQVAE``): a TokenizerModule, or a
    VARModule's frozen tokenizer.

    limit_batches: validation batches per rank to score (None = all). extractor: a ``build_extractor``
    mapping for rFID (None: no rFID). lpips: ``{net, weights_path, random_backbone}`` (None: no LPIPS;
    ``random_backbone: true`` runs offline but is not LPIPS). config_key: this callback's place in the
    config, named in error messages.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        limit_batches: int | None = None,
        extractor: Mapping[str, Any] | str | None = "inception-tf",
        lpips: Mapping[str, Any] | None = None,
        config_key: str = "callbacks.recon_metrics",
    ) -> None:
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"{config_key}.every_n_epochs={every_n_epochs} must be >= 1")
        if limit_batches is not None and limit_batches < 1:
            raise ValueError(f"{config_key}.limit_batches={limit_batches} must be >= 1 (or null for all)")
        self.every_n_epochs, self.limit_batches = every_n_epochs, limit_batches
        self.extractor_spec = (
            extractor if extractor is None or isinstance(extractor, str) else dict(extractor)
        )
        self.lpips_spec = None if lpips is None else dict(lpips)
        self.config_key = config_key
        self.extractor: FeatureExtractor | None = None
        self.lpips: LPIPSFn | None = None
        self.metrics: ReconstructionMetrics | None = None
        self._built = False
        self.best_rfid = float("inf")
        self.last_metrics: dict[str, float] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"best_rfid": self.best_rfid}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_rfid = float(state_dict.get("best_rfid", float("inf")))

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if getattr(pl_module, "vae", None) is None:
            raise TypeError(f"{self.config_key} (ReconMetrics) needs a module with a `vae` tokenizer")
        if self._built:
            return
        if trainer.world_size > 1 and not trainer.is_global_zero:
            trainer.strategy.barrier("recon_metrics_setup")  # rank 0 downloads weights first
        if self.extractor_spec is not None:
            self.extractor = build_extractor(self.extractor_spec, f"{self.config_key}.extractor")
        self.lpips = build_lpips(self.lpips_spec, f"{self.config_key}.lpips")
        if trainer.world_size > 1 and trainer.is_global_zero:
            trainer.strategy.barrier("recon_metrics_setup")
        self._built = True

    def _due(self, trainer: L.Trainer) -> bool:
        if trainer.sanity_checking:
            return False
        return bool(trainer.fast_dev_run) or (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.metrics = None
        if not self._due(trainer):
            return
        device = pl_module.device
        if self.extractor is not None:
            self.extractor.to(device)
        if isinstance(self.lpips, torch.nn.Module):
            self.lpips.to(device)
        self.metrics = ReconstructionMetrics(self.extractor, self.lpips, device=device)

    @torch.no_grad()
    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.metrics is None or dataloader_idx != 0:
            return
        if self.limit_batches is not None and batch_idx >= self.limit_batches:
            return
        img_B3HW = (batch[0] if isinstance(batch, list | tuple) else batch).to(pl_module.device)
        rec_B3HW = pl_module.vae.img_to_reconstruction(img_B3HW.float())
        self.metrics.update(img_B3HW.float(), rec_B3HW.float())

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.metrics is None:
            return
        out = self.metrics.sync_().compute()
        self.metrics = None
        self.last_metrics = out
        logged = {f"val/{k}": v for k, v in out.items()}
        if "rfid" in out:
            self.best_rfid = min(self.best_rfid, out["rfid"])
            logged["val/rfid_best"] = self.best_rfid
        pl_module.log_dict(logged, on_step=False, on_epoch=True, sync_dist=False)
        if trainer.is_global_zero:
            log.info("reconstruction metrics: %s", ", ".join(f"{k}={v:.4g}" for k, v in logged.items()))
