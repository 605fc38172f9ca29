"""PatchGAN discriminator and GAN losses for the tokenizer's adversarial term.

The discriminator is the pix2pix / VQGAN "N-layer" design: ``n_layers`` stride-2 4x4 convs, one stride-1
4x4 conv, and a 4x4 conv to one channel. Each output logit judges one receptive-field patch (70x70 pixels
for ``n_layers=3``), so the loss pushes local texture rather than global layout.

Normalization and DDP: ``norm="batch"`` (the published choice) keeps running statistics that each rank
computes on its own shard, and the real and the fake batches are normalised separately (each call sees
only one of them). DDP's default buffer broadcast overwrites the statistics from rank 0 at every forward,
and ``SyncBatchNorm`` needs every rank to call the discriminator the same number of times.
``norm="group"`` normalises each sample on its own: no buffers, no cross-rank state, the same result
in one process and under DDP. Prefer it for multi-GPU runs.

Shapes: B batch, C channels, H,W image side, h,w logit-map side.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("batch", "group", "none")


def _norm_layer(norm: str, channels: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        return nn.GroupNorm(math.gcd(32, channels), channels)
    return nn.Identity()


class PatchDiscriminator(nn.Module):
    """(B, in_channels, H, W) image -> (B, 1, h, w) real/fake logits, h = H / 2**n_layers - 2.

    Widths: ``ch``, then doubling per layer up to ``8 * ch``. Convs before a norm carry no bias (the
    norm's shift replaces it). Init: conv weights N(0, 0.02), norm scales N(1, 0.02), biases 0.
    """

    def __init__(self, in_channels: int = 3, ch: int = 64, n_layers: int = 3, norm: str = "batch") -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"unknown discriminator norm {norm!r}; valid: {', '.join(NORMS)}")
        if in_channels < 1 or ch < 1 or n_layers < 1:
            raise ValueError(f"need in_channels, ch, n_layers >= 1, got {in_channels=} {ch=} {n_layers=}")
        self.n_layers = n_layers
        use_bias = norm == "none"
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, ch, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        width = ch
        for n in range(1, n_layers + 1):
            out = ch * min(2**n, 8)
            stride = 2 if n < n_layers else 1  # the last hidden conv keeps the resolution
            layers += [
                nn.Conv2d(width, out, kernel_size=4, stride=stride, padding=1, bias=use_bias),
                _norm_layer(norm, out),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            width = out
        layers.append(nn.Conv2d(width, 1, kernel_size=4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    @property
    def min_input_size(self) -> int:
        """Smallest image side giving a 1x1 logit map: each stride-2 conv halves, the two stride-1 4x4
        convs each remove one pixel."""
        return 3 * 2**self.n_layers

    def forward(self, img_BCHW: torch.Tensor) -> torch.Tensor:
        if min(img_BCHW.shape[-2:]) < self.min_input_size:
            raise ValueError(
                f"images of side {tuple(img_BCHW.shape[-2:])} are too small for a {self.n_layers}-layer "
                f"discriminator (needs >= {self.min_input_size}); lower model.loss.disc_layers"
            )
        return self.main(img_BCHW)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (mean relu(1 - real) + mean relu(1 + fake)): zero once real >= 1 and fake <= -1."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * binary cross-entropy with logits (real -> 1, fake -> 0), written with softplus."""
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator side of the hinge GAN: raise the fake logits without a margin."""
    return -logits_fake.mean()


def vanilla_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss -log sigmoid(fake), the counterpart of ``vanilla_d_loss``
    (taming-transformers uses ``-mean(logits_fake)`` for both; this keeps useful gradients when D wins)."""
    return F.softplus(-logits_fake).mean()


D_LOSSES = {"hinge": hinge_d_loss, "vanilla": vanilla_d_loss}
G_LOSSES = {"hinge": hinge_g_loss, "vanilla": vanilla_g_loss}
