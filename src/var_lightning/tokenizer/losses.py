"""VQGAN training loss of the tokenizer: reconstruction + perceptual + VQ + adaptive-weight GAN.

``VQGANLoss`` owns the discriminator (its parameters are this module's only parameters, so
``loss.parameters()`` is exactly what the discriminator optimizer needs) and the frozen LPIPS network
(held outside ``state_dict``, see ``FrozenLPIPS``). One training step calls ``generator_loss`` (backward
into the autoencoder only) and then ``discriminator_loss`` (backward into the discriminator only).

Generator objective (taming-transformers' VQGAN):
    nll  = recon_weight * recon(img, rec) + perceptual_weight * LPIPS(img, rec)
    loss = nll + vq_weight * vq + disc_factor * d_weight * g_loss
with ``disc_factor`` 0 before ``disc_start`` and 1 after, and ``d_weight`` the adaptive weight
``||grad_last nll|| / (||grad_last g_loss|| + 1e-4)`` (clamped to [0, adaptive_weight_max]) times
``disc_weight``: the GAN gradient at the decoder's last layer is scaled to the size of the
reconstruction gradient there, whatever the losses' raw magnitudes.

Shapes: B batch, H,W image side, h,w discriminator logit map.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from var_lightning.tokenizer.discriminator import D_LOSSES, G_LOSSES, NORMS, PatchDiscriminator
from var_lightning.tokenizer.perceptual import PERCEPTUAL_NETS, FrozenLPIPS, build_perceptual


def _bad(key: str, value: object, why: str) -> ValueError:
    return ValueError(f"invalid loss config: model.loss.{key}={value!r}: {why}")


@contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    """Run ``module`` with ``requires_grad`` off: its forward records no gradient edges to its parameters,
    so a later backward through its output reaches the inputs only and never writes ``.grad`` on them."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)


class VQGANLoss(nn.Module):
    """Tokenizer loss; every argument is a ``model.loss.<name>`` config key.

    recon_loss: "l1" or "l2" pixel loss (mean). recon_weight / vq_weight / perceptual_weight: term
        weights (perceptual_weight=0 builds no LPIPS network).
    perceptual_net / perceptual_weights_path / perceptual_random_backbone: see ``build_perceptual``.
    disc_weight: GAN weight (0 builds no discriminator). disc_start: global step from which the GAN terms
        are on. disc_loss: "hinge" or "vanilla". disc_ch / disc_layers / disc_norm: ``PatchDiscriminator``
        shape ("group" is safe under DDP, see its module docstring).
    adaptive_weight: scale the GAN term by the adaptive weight (else by disc_weight alone);
        adaptive_weight_max clamps the ratio.
    """

    def __init__(
        self,
        recon_loss: str = "l1",
        recon_weight: float = 1.0,
        vq_weight: float = 1.0,
        perceptual_weight: float = 1.0,
        perceptual_net: str = "vgg",
        perceptual_weights_path: str | os.PathLike | None = None,
        perceptual_random_backbone: bool = False,
        disc_weight: float = 0.5,
        disc_start: int = 0,
        disc_loss: str = "hinge",
        disc_ch: int = 64,
        disc_layers: int = 3,
        disc_norm: str = "batch",
        adaptive_weight: bool = True,
        adaptive_weight_max: float = 1e4,
    ) -> None:
        super().__init__()
        if recon_loss not in ("l1", "l2"):
            raise _bad("recon_loss", recon_loss, "valid: l1, l2")
        for key, value in [
            ("recon_weight", recon_weight),
            ("vq_weight", vq_weight),
            ("perceptual_weight", perceptual_weight),
            ("disc_weight", disc_weight),
        ]:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise _bad(key, value, "must be a finite number")
            if value < 0:
                raise _bad(key, value, "must be >= 0 (0 disables the term)")
        if perceptual_net not in PERCEPTUAL_NETS:
            raise _bad("perceptual_net", perceptual_net, f"valid: {', '.join(PERCEPTUAL_NETS)}")
        if perceptual_weights_path is not None and perceptual_random_backbone:
            raise _bad("perceptual_random_backbone", True, "cannot be combined with perceptual_weights_path")
        if isinstance(disc_start, bool) or not isinstance(disc_start, int) or disc_start < 0:
            raise _bad("disc_start", disc_start, "must be an integer global step >= 0")
        if disc_loss not in D_LOSSES:
            raise _bad("disc_loss", disc_loss, f"valid: {', '.join(D_LOSSES)}")
        if disc_norm not in NORMS:
            raise _bad("disc_norm", disc_norm, f"valid: {', '.join(NORMS)}")
        for key, value in [("disc_ch", disc_ch), ("disc_layers", disc_layers)]:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise _bad(key, value, "must be an integer >= 1")
        if not (isinstance(adaptive_weight_max, (int, float)) and adaptive_weight_max > 0):
            raise _bad("adaptive_weight_max", adaptive_weight_max, "must be > 0")

        self.recon_loss, self.recon_weight, self.vq_weight = recon_loss, float(recon_weight), float(vq_weight)
        self.perceptual_weight, self.disc_weight = float(perceptual_weight), float(disc_weight)
        self.disc_start, self.disc_loss = disc_start, disc_loss
        self.adaptive_weight, self.adaptive_weight_max = bool(adaptive_weight), float(adaptive_weight_max)
        self.perceptual: FrozenLPIPS | None = None
        if self.perceptual_weight > 0:
            self.perceptual = build_perceptual(
                perceptual_net, perceptual_weights_path, random_backbone=perceptual_random_backbone
            )
        self.discriminator: PatchDiscriminator | None = None
        if self.disc_weight > 0:
            self.discriminator = PatchDiscriminator(3, disc_ch, disc_layers, disc_norm)

    # ------------------------------------------------------------------ helpers
    def disc_active(self, global_step: int) -> bool:
        """Whether the GAN terms count at this step (a discriminator exists and ``disc_start`` is reached);
        the training loop may skip the discriminator step when False."""
        return self.discriminator is not None and global_step >= self.disc_start

    def adaptive_d_weight(
        self, nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor | None
    ) -> torch.Tensor:
        """``disc_weight * clamp(||dnll/dW|| / (||dg/dW|| + 1e-4), 0, max)`` at ``W = last_layer``, detached.

        Falls back to ``disc_weight`` when no gradient can be taken (no ``last_layer``, module in eval
        mode, grad disabled, or a loss without a graph), e.g. in validation.
        """
        weight = nll.new_tensor(self.disc_weight, dtype=torch.float32)
        if (
            not self.adaptive_weight
            or last_layer is None
            or not self.training
            or not torch.is_grad_enabled()
            or not (nll.requires_grad and g_loss.requires_grad)
        ):
            return weight
        nll_grad, g_grad = (
            torch.autograd.grad(t, last_layer, retain_graph=True, allow_unused=True)[0] for t in (nll, g_loss)
        )
        if nll_grad is None or g_grad is None:
            raise ValueError(
                "last_layer is not in the graph of the reconstruction/GAN loss: pass the decoder's final conv "
                "weight (vae.decoder.last_layer) for the adaptive weight"
            )
        ratio = nll_grad.float().norm() / (g_grad.float().norm() + 1e-4)
        return (ratio.clamp(0.0, self.adaptive_weight_max) * self.disc_weight).detach()

    # ------------------------------------------------------------------ generator step
    def generator_loss(
        self,
        img: torch.Tensor,
        rec: torch.Tensor,
        vq_loss: torch.Tensor,
        global_step: int,
        last_layer: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss for the autoencoder's backward (fp32 scalar) and detached logs.

        img, rec: (B, 3, H, W) in [-1, 1] (rec unclamped, with its graph); vq_loss: scalar from the
        quantizer; last_layer: ``vae.decoder.last_layer`` for the adaptive weight. The discriminator is run
        frozen, so this backward leaves its ``.grad`` untouched.
        """
        diff = rec.float() - img.float()
        rec_l1, rec_l2 = diff.abs().mean(), diff.square().mean()
        nll = self.recon_weight * (rec_l1 if self.recon_loss == "l1" else rec_l2)
        perceptual = diff.new_zeros(())
        if self.perceptual is not None:
            perceptual = self.perceptual(img, rec).mean()
            nll = nll + self.perceptual_weight * perceptual
        vq = vq_loss.float()
        loss = nll + self.vq_weight * vq

        g_loss, d_weight = diff.new_zeros(()), diff.new_zeros(())
        disc_factor = 1.0 if self.disc_active(global_step) else 0.0
        if disc_factor > 0:
            with _frozen(self.discriminator):
                logits_fake_B1hw = self.discriminator(rec)
            g_loss = G_LOSSES[self.disc_loss](logits_fake_B1hw.float())
            d_weight = self.adaptive_d_weight(nll, g_loss, last_layer)
            loss = loss + disc_factor * d_weight * g_loss

        logs = {
            "loss": loss,
            "rec_l1": rec_l1,
            "rec_l2": rec_l2,
            "perceptual": perceptual,
            "vq": vq,
            "nll": nll,
            "g_loss": g_loss,
            "d_weight": d_weight,
            "disc_factor": diff.new_tensor(disc_factor),
        }
        return loss, {k: v.detach() for k, v in logs.items()}

    # ------------------------------------------------------------------ discriminator step
    def discriminator_loss(
        self, img: torch.Tensor, rec: torch.Tensor, global_step: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Discriminator loss on real ``img`` and ``rec.detach()`` (B, 3, H, W), times ``disc_factor``
        (so before ``disc_start`` it is 0 with a graph; skip the step with ``disc_active`` to save time).
        Logs ``d_loss`` and the mean ``logits_real`` / ``logits_fake``."""
        if self.discriminator is None:
            raise RuntimeError("no discriminator: model.loss.disc_weight=0 disables the GAN terms")
        disc_factor = 1.0 if self.disc_active(global_step) else 0.0
        logits_real_B1hw = self.discriminator(img.detach()).float()
        logits_fake_B1hw = self.discriminator(rec.detach()).float()
        d_loss = disc_factor * D_LOSSES[self.disc_loss](logits_real_B1hw, logits_fake_B1hw)
        logs = {
            "d_loss": d_loss.detach(),
            "logits_real": logits_real_B1hw.detach().mean(),
            "logits_fake": logits_fake_B1hw.detach().mean(),
        }
        return d_loss, logs
