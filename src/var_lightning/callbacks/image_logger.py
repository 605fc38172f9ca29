"""One image-logging callback for every module that implements ``log_images(batch, max_images) -> dict``.

Each entry is an image batch in [0, 1], or ``(images, row_names)`` for a grid whose rows are labelled (one
class per row, e.g. the VAR's samples); a name ending in ``_nrow<N>`` sets the grid's row length. Grids are
written as PNG under ``<save_dir>/<split>_<name>_e<epoch>_s<step>.png`` (rank zero only) and sent to a
TensorBoard logger when one is attached.

The batch handed to ``log_images`` is a fixed, seeded, class-balanced pick from the validation set (round
robin over the classes, a random image of each), so a sorted ImageFolder shows several classes rather than
the first files of its first class; datasets without cheap labels fall back to the first validation batch.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as L
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.utils import make_grid, save_image

from var_lightning.callbacks.trackers import log_image
from var_lightning.inference.grids import labelled_grid

log = logging.getLogger(__name__)


def grid_nrow(name: str, n: int) -> tuple[str, int]:
    m = re.search(r"_nrow(\d+)$", name)
    if m:
        return name[: m.start()], int(m.group(1))
    return name, min(n, 8)


def balanced_indices(labels: Sequence[int], n: int, seed: int = 0) -> list[int]:
    """``n`` indices spread over the classes: classes in a seeded random order, one random image of each
    per round, until ``n`` (fewer when the set is smaller)."""
    g = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for i, lab in enumerate(labels):
        by_class.setdefault(int(lab), []).append(i)
    classes = [sorted(by_class)[j] for j in torch.randperm(len(by_class), generator=g).tolist()]
    pools = {
        c: [by_class[c][j] for j in torch.randperm(len(by_class[c]), generator=g).tolist()] for c in classes
    }
    out: list[int] = []
    while len(out) < n and any(pools.values()):
        for c in classes:
            if pools[c] and len(out) < n:
                out.append(pools[c].pop())
    return out


def preview_batch(dataset: Any, n: int, seed: int = 0) -> list[torch.Tensor] | None:
    """A class-balanced batch ``[images, labels]`` of ``dataset`` (None when it has no cheap labels)."""
    labels = getattr(dataset, "labels_N", None)
    if labels is None:
        labels = getattr(dataset, "targets", None)
    if labels is None:
        return None
    items = [dataset[i] for i in balanced_indices(torch.as_tensor(labels).tolist(), n, seed)]
    return [torch.stack([torch.as_tensor(x) for x, _ in items]), torch.tensor([int(y) for _, y in items])]


class ImageLogger(L.Callback):
    """Logs ``pl_module.log_images`` on a class-balanced validation batch every ``every_n_epochs`` epochs
    and once at the end of training (``final.png`` names)."""

    def __init__(
        self, save_dir: str | None = None, every_n_epochs: int = 1, max_images: int = 8, seed: int = 0
    ) -> None:
        super().__init__()
        self.save_dir, self.every_n_epochs, self.max_images, self.seed = (
            save_dir,
            every_n_epochs,
            max_images,
            seed,
        )
        self._batch: Any = None
        self.written: list[Path] = []

    def _dir(self, trainer: L.Trainer) -> Path:
        return Path(self.save_dir) if self.save_dir else Path(trainer.default_root_dir) / "images"

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx != 0 or self._batch is not None:
            return
        loaders = trainer.val_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        picked = preview_batch(getattr(loader, "dataset", None), self.max_images, self.seed)
        if picked is None:
            picked = [t[: self.max_images].detach().cpu() if torch.is_tensor(t) else t for t in batch]
        self._batch = picked

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self._batch is None:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._log(trainer, pl_module, tag=f"e{trainer.current_epoch:03d}_s{trainer.global_step:06d}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._batch is not None:
            self._log(trainer, pl_module, tag="final")

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, tag: str) -> None:
        """Rank 0 samples and writes. A sharded model's ranks all take part in gathering its full weights
        (``pl_module.gathered()``, a collective) before rank 0 samples from them."""
        if not hasattr(pl_module, "log_images"):
            return
        sharded = bool(getattr(pl_module, "sharded", False))
        if not trainer.is_global_zero and not sharded:
            return
        with pl_module.gathered() if sharded else nullcontext():
            if trainer.is_global_zero:
                self._write(trainer, pl_module, tag)

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule, tag: str) -> None:
        with trainer.precision_plugin.forward_context():  # as the validation step runs (bf16 autocast on GPU)
            images = pl_module.log_images(self._batch, max_images=self.max_images)
        out_dir = self._dir(trainer)
        out_dir.mkdir(parents=True, exist_ok=True)
        for raw_name, entry in images.items():
            batch, row_names = entry if isinstance(entry, tuple) else (entry, None)
            name, nrow = grid_nrow(raw_name, batch.shape[0])
            imgs = batch.float().clamp(0, 1).cpu()
            path = out_dir / f"val_{name}_{tag}.png"
            if row_names is not None:  # one labelled row per class
                labels = [r for r in range(len(row_names)) for _ in range(nrow)][: imgs.shape[0]]
                labelled_grid(imgs, labels, path, per_row=nrow, class_names=list(row_names))
                grid = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(
                    2, 0, 1
                )  # a writable copy
            else:
                if imgs.shape[-1] < 64:  # small images: nearest-upscale so the grid is readable
                    imgs = F.interpolate(imgs, scale_factor=64 // imgs.shape[-1], mode="nearest")
                grid = make_grid(imgs, nrow=nrow, padding=2, pad_value=1.0)
                save_image(grid, path)
            self.written.append(path)
            log_image(trainer, f"val/{name}", grid, path)  # TensorBoard / W&B / MLflow, whichever the run has
        log.info("wrote image grids to %s", out_dir)
