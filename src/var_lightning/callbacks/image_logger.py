"""One image-logging callback for every module that implements ``log_images(batch, max_images) -> dict``.

Each entry is an image batch in [0, 1]; a name ending in ``_nrow<N>`` sets the grid's row length. Grids
are written as PNG under ``<save_dir>/<split>_<name>_e<epoch>_s<step>.png`` (rank zero only) and sent to
a TensorBoard logger when one is attached.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytorch_lightning as L
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_only
from torchvision.utils import make_grid, save_image

log = logging.getLogger(__name__)


def grid_nrow(name: str, n: int) -> tuple[str, int]:
    m = re.search(r"_nrow(\d+)$", name)
    if m:
        return name[: m.start()], int(m.group(1))
    return name, min(n, 8)


class ImageLogger(L.Callback):
    """Logs ``pl_module.log_images`` on the first validation batch every ``every_n_epochs`` epochs and
    once at the end of training (``final.png`` names)."""

    def __init__(self, save_dir: str | None = None, every_n_epochs: int = 1, max_images: int = 8) -> None:
        super().__init__()
        self.save_dir, self.every_n_epochs, self.max_images = save_dir, every_n_epochs, max_images
        self._batch: Any = None
        self.written: list[Path] = []

    def _dir(self, trainer: L.Trainer) -> Path:
        return Path(self.save_dir) if self.save_dir else Path(trainer.default_root_dir) / "images"

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 0 and self._batch is None:
            self._batch = [t[: self.max_images].detach().cpu() if torch.is_tensor(t) else t for t in batch]

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self._batch is None:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._log(trainer, pl_module, tag=f"e{trainer.current_epoch:03d}_s{trainer.global_step:06d}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._batch is not None:
            self._log(trainer, pl_module, tag="final")

    @rank_zero_only
    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, tag: str) -> None:
        if not hasattr(pl_module, "log_images"):
            return
        images = pl_module.log_images(self._batch, max_images=self.max_images)
        out_dir = self._dir(trainer)
        out_dir.mkdir(parents=True, exist_ok=True)
        for raw_name, batch in images.items():
            name, nrow = grid_nrow(raw_name, batch.shape[0])
            imgs = batch.float().clamp(0, 1).cpu()
            if imgs.shape[-1] < 64:  # small images: nearest-upscale so the grid is readable
                imgs = F.interpolate(imgs, scale_factor=64 // imgs.shape[-1], mode="nearest")
            grid = make_grid(imgs, nrow=nrow, padding=2, pad_value=1.0)
            path = out_dir / f"val_{name}_{tag}.png"
            save_image(grid, path)
            self.written.append(path)
            experiment = getattr(trainer.logger, "experiment", None)
            if experiment is not None and hasattr(experiment, "add_image"):
                experiment.add_image(f"val/{name}", grid, global_step=trainer.global_step)
        log.info("wrote image grids to %s", out_dir)
