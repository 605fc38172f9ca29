"""The raster-scan AR baseline trained by the VAR stage's machinery (paper Table 3, row 1).

:class:`ARModule` is a :class:`~var_lightning.training.var_module.VARModule` whose transformer is an
:class:`~var_lightning.transformer.ar.ARTransformer`: the same tokenizer handling, optimiser, learning-rate
schedule, label dropout for guidance, checkpoint contents, sampling defaults and image grids; only the
network, the objective (next-token cross-entropy over the last scale's raster-order tokens) and the sampler
differ. Its checkpoints carry ``stage: ar`` and load wherever a VAR checkpoint does for sampling and
evaluation (``var-sample``, ``var-eval``).
"""

from __future__ import annotations

from typing import Any

import torch

from var_lightning.objectives.losses import raster_losses
from var_lightning.objectives.progressive import Stage
from var_lightning.training.var_module import VARModule
from var_lightning.transformer.ar import ARTransformer
from var_lightning.transformer.config import VARConfig


class ARModule(VARModule):
    """LightningModule of the AR baseline; the arguments are VARModule's (``train.progressive`` must stay
    off: there are no scales to grow)."""

    STAGE = "ar"

    def make_network(self, cfg: VARConfig) -> ARTransformer:
        if self.train_cfg.progressive.until > 0:
            raise ValueError(
                "model.train.progressive.until > 0: progressive training grows the scale schedule, and the AR "
                "baseline has one raster sequence; set model.train.progressive.until=0 (key model.train.progressive.until)"
            )
        return ARTransformer(cfg)

    @staticmethod
    def objective(*args: Any, stage: Stage | None = None, **kwargs: Any) -> dict[str, torch.Tensor]:
        return raster_losses(*args, **kwargs)  # no progressive stage (refused in make_network)
