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

from var_lightning.tokenizer.autoencoder import MultiScaleVQVAE
from var_lightning.training.objectives import drop_labels, token_losses
from var_lightning.training.progressive import Stage
from var_lightning.training.var_module import VARModule
from var_lightning.transformer.ar import ARTransformer, raster_tokens
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


def raster_losses(
    model: ARTransformer,
    vae: MultiScaleVQVAE,
    batch: tuple[torch.Tensor, torch.Tensor],
    cond_drop_rate: float = 0.0,
    label_smoothing: float = 0.0,
    fused_ce: bool = False,
    ce_chunk_tokens: int = 8192,
    compile: bool | str = False,
) -> dict[str, torch.Tensor]:
    """The AR objective of one batch of images: mean next-token cross-entropy over the h * w raster tokens,
    and the token error rate. Every AR token is a last-scale token, so ``loss_last`` / ``token_err_last``
    equal ``loss`` / ``token_err_avg`` (named so for side-by-side tables with VAR)."""
    img, label_B = batch
    if img.ndim == 2 and not img.is_floating_point():
        raise ValueError(
            "the AR baseline needs images: pre-tokenized shards hold VAR's multi-scale token pyramid, not the "
            "one-scale raster tokens (use data=webdataset or an image dataset, not data=webdataset_tokens)"
        )
    gt_BN = raster_tokens(vae, img)
    label_B = drop_labels(label_B, cond_drop_rate, model.num_classes)
    h_BNC, cond_BD = model.forward_hidden(label_B, gt_BN, compile=compile)
    loss_BN, err_BN = token_losses(model, h_BNC, cond_BD, gt_BN, label_smoothing, fused_ce, ce_chunk_tokens)
    loss, err = loss_BN.mean(), err_BN.mean()
    return {"loss": loss, "loss_last": loss.detach(), "token_err_avg": err, "token_err_last": err.detach()}
