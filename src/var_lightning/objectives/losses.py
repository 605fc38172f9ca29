"""The objectives (plain torch): the frozen tokenizer's tokens, label dropout for classifier-free guidance, the
per-token head loss, the next-scale objective (VAR) and the raster next-token objective (the AR baseline).
Trained by the LightningModules of :mod:`var_lightning.training`, measured on held-out data by ``var-eval``.

Shapes: B batch, L tokens of all scales, V vocabulary, Cv tokenizer codebook dim, C width, D condition width.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from var_lightning.objectives.chunked_ce import chunked_head_cross_entropy
from var_lightning.objectives.progressive import Stage
from var_lightning.tokenizer.autoencoder import MultiScaleVQVAE
from var_lightning.transformer.ar import ARTransformer, raster_tokens
from var_lightning.transformer.var import VAR


@torch.no_grad()
def tokenize(vae: MultiScaleVQVAE, img_B3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground-truth tokens (B, L) and the teacher-forcing input (B, L - l_1, Cv), in fp32, no grad.

    Accepts images (B, 3, H, W) or, from pre-tokenized shards, the token pyramid itself (B, L) integer:
    then only the cheap embedding lookup + phi convs of ``idx_to_var_input`` run, not the encoder."""
    if vae.quantize.embedding.weight.dtype != torch.float32:  # trainer.precision=*-true converted it; its
        vae.float()  # nearest-code search in bf16 would pick other tokens: the frozen tokenizer stays fp32
    with torch.autocast(device_type=img_B3HW.device.type, enabled=False):
        if img_B3HW.ndim == 2 and not img_B3HW.is_floating_point():
            gt_BL = img_B3HW.long()
            sizes = [pn * pn for pn in vae.patch_nums]
            lo, hi = (int(v) for v in torch.aminmax(gt_BL))  # one host sync per step
            if gt_BL.shape[1] != sum(sizes) or hi >= vae.cfg.vocab_size or lo < 0:
                raise ValueError(
                    f"pre-tokenized batch of {gt_BL.shape[1]} tokens (ids {lo}..{hi}) does "
                    f"not fit the tokenizer (schedule {vae.patch_nums} = {sum(sizes)} tokens, vocabulary "
                    f"{vae.cfg.vocab_size}); re-tokenize the shards with this tokenizer (var-make-shards --tokenizer)"
                )
            return gt_BL, vae.quantize.idx_to_var_input(gt_BL.split(sizes, dim=1))
        idx_list, x_BLCv = vae.img_to_var_input(img_B3HW.float())
    return torch.cat(idx_list, dim=1), x_BLCv


def drop_labels(label_B: torch.Tensor, rate: float, null_class: int) -> torch.Tensor:
    """Replace a random ``rate`` of the labels with the null class (classifier-free guidance training).

    The uniform draw happens at every rate, 0 included, as in the published trainer: a run with
    ``cond_drop_rate=0`` consumes the same random numbers per step as one with 0.1, so the streams that
    follow (drop-path masks, the next steps' draws) match the published trainer's, and exact resume (each
    rank's RNG state is in the checkpoint) continues them either way."""
    drop_B = torch.rand(label_B.shape[0], device=label_B.device) < rate
    return torch.where(drop_B, null_class, label_B)


def token_losses(
    model: Any,
    h_BLC: torch.Tensor,
    cond_BD: torch.Tensor,
    gt_BL: torch.Tensor,
    label_smoothing: float,
    fused_ce: bool,
    ce_chunk_tokens: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token cross-entropy and error (B, L) of the trunk's output through the model's head (VAR and the AR
    baseline share it); ``fused_ce`` never materialises the (B, L, V) fp32 logits (same numbers)."""
    if fused_ce:
        return chunked_head_cross_entropy(
            h_BLC, cond_BD, model.head_nm, model.head, gt_BL, label_smoothing, ce_chunk_tokens
        )
    logits_BLV = model.get_logits(h_BLC, cond_BD)
    B, L, V = logits_BLV.shape
    loss_BL = F.cross_entropy(
        logits_BLV.view(-1, V), gt_BL.view(-1), reduction="none", label_smoothing=label_smoothing
    ).view(B, L)
    return loss_BL, (logits_BLV.argmax(dim=-1) != gt_BL).float()


def next_scale_losses(
    var: VAR,
    vae: MultiScaleVQVAE,
    batch: tuple[torch.Tensor, torch.Tensor],
    cond_drop_rate: float = 0.0,
    label_smoothing: float = 0.0,
    fused_ce: bool = False,
    ce_chunk_tokens: int = 8192,
    compile: bool | str = False,
    stage: Stage | None = None,
) -> dict[str, torch.Tensor]:
    """The next-scale prediction objective of one batch: mean token cross-entropy (uniform 1/L weights, as
    published), the last scale's loss, token error rates (all scales / last) and per-scale loss and
    accuracy. ``cond_drop_rate`` replaces that fraction of labels with the null class (training only).

    ``stage`` (progressive training, :mod:`var_lightning.objectives.progressive`): feed only the tokens of
    scales ``0..stage.scale``; the loss is the published weighted sum (1/L per token, the newest scale x
    ``stage.ramp``) and the metrics of untrained scales (the last scale's among them) are left out."""
    img, label_B = batch
    gt_BL, x_BLCv = tokenize(vae, img)
    L_full = gt_BL.shape[1]
    if stage is not None and not stage.full:  # progressive training: only the prefix of scales 0..stage.scale
        gt_BL, x_BLCv = gt_BL[:, : stage.end].contiguous(), x_BLCv[:, : stage.end - var.first_l]
    label_B = drop_labels(label_B, cond_drop_rate, var.num_classes)
    h_BLC, cond_BD = var.forward_hidden(label_B, x_BLCv, compile=compile)
    loss_BL, err_BL = token_losses(var, h_BLC, cond_BD, gt_BL, label_smoothing, fused_ce, ce_chunk_tokens)
    if stage is not None and not stage.full:
        # the published weights: 1/L per token of the full L (not of the prefix), the newest scale x ramp
        a, b = var.begin_ends[stage.scale]
        w_L = loss_BL.new_full((stage.end,), 1.0 / L_full)
        w_L[a:b] *= stage.ramp
        trained = var.begin_ends[: stage.scale + 1]
        out = {"loss": (loss_BL * w_L).sum(dim=1).mean(), "token_err_avg": err_BL.mean()}
    else:  # the last scale's metrics only when it is trained
        a, b = var.begin_ends[-1]
        trained = var.begin_ends
        out = {
            "loss": loss_BL.mean(),
            "loss_last": loss_BL[:, a:b].mean(),
            "token_err_avg": err_BL.mean(),
            "token_err_last": err_BL[:, a:b].mean(),
        }
    for si, (a, b) in enumerate(trained):
        out[f"scale/loss_s{si}"] = loss_BL[:, a:b].mean().detach()
        out[f"scale/acc_s{si}"] = 1 - err_BL[:, a:b].mean()
    return out


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
