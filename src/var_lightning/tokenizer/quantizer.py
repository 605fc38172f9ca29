"""Multi-scale residual vector quantizer (VAR paper, Algorithms 1 and 2).

One codebook ``Z`` (V x C) is shared by all K scales. Encoding (Alg. 1) quantizes an area-downsampled
residual at each scale, upsamples the chosen code vectors (bicubic) to the full latent grid, refines them
with a phi convolution and subtracts them from the residual. Decoding (Alg. 2) sums the refined
embeddings into ``f_hat``.

Shapes: B batch, K scales, C codebook dim (Cvae), V codebook size, h,w token grid of one scale
(``pn x pn``), H,W latent grid (= the last scale), l = h*w tokens of one scale, L = tokens of all scales.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def phi_index_map(num_scales: int, num_phis: int) -> list[int]:
    """Which phi convolution each scale uses when ``num_phis`` phis serve ``num_scales`` scales.

    Scale ``si`` takes the phi whose tick is nearest to ``si / (K - 1)``. Ticks are evenly spaced
    (with a 1/3 margin when there are exactly four phis, else 1/2), computed in float64 with numpy so
    that the exact ties at 2/9 and 7/9 break the same way as the released tokenizer
    (10 scales, 4 phis -> [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]).
    """
    if num_scales < 1 or num_phis < 1:
        raise ValueError(f"need at least one scale and one phi, got {num_scales=} {num_phis=}")
    if num_phis == 1:
        return [0] * num_scales
    if num_phis == 4:
        ticks = np.linspace(1 / 3 / num_phis, 1 - 1 / 3 / num_phis, num_phis)
    else:
        ticks = np.linspace(1 / 2 / num_phis, 1 - 1 / 2 / num_phis, num_phis)
    denom = max(num_scales - 1, 1)
    return [int(np.argmin(np.abs(ticks - si / denom)).item()) for si in range(num_scales)]


class Phi(nn.Conv2d):
    """Residual 3x3 refinement of an upsampled embedding: ``h * (1 - r) + conv(h) * r``."""

    def __init__(self, dim: int, resi_ratio: float) -> None:
        super().__init__(dim, dim, kernel_size=3, stride=1, padding=1)
        self.resi_ratio = abs(resi_ratio)

    def forward(self, h_BChw: torch.Tensor) -> torch.Tensor:
        return h_BChw.mul(1 - self.resi_ratio) + super().forward(h_BChw).mul_(self.resi_ratio)


class PhiBank(nn.Module):
    """The phi convolutions and the scale -> phi map.

    ``share_quant_resi``: 0 = one phi per scale (or ``default_qresi_counts``), 1 = one shared phi,
    n > 1 = n partially shared phis. With ``|quant_resi| < 1e-6`` every phi is the identity.
    The submodule is called ``qresi_ls`` in every mode (the released tokenizer's name for mode n > 1).
    """

    def __init__(
        self, dim: int, num_scales: int, quant_resi: float, share_quant_resi: int, default_qresi_counts: int
    ) -> None:
        super().__init__()
        if share_quant_resi == 0:
            num_phis = default_qresi_counts or num_scales
        else:
            num_phis = share_quant_resi
        self.num_phis = num_phis
        self.qresi_ls = nn.ModuleList(
            [Phi(dim, quant_resi) if abs(quant_resi) > 1e-6 else nn.Identity() for _ in range(num_phis)]
        )
        self.index_map = phi_index_map(num_scales, num_phis)

    def forward(self, h_BChw: torch.Tensor, si: int) -> torch.Tensor:
        return self.qresi_ls[self.index_map[si]](h_BChw)


@dataclass
class QuantizerOutput:
    """What the training forward returns: ``f_hat`` with a straight-through gradient, the VQ loss and
    the per-scale code hit counts of this batch on this rank (``hits_KV``; no collective runs in
    forward, so ranks may call it unevenly; ``CodebookUsage`` sums over ranks when read)."""

    f_hat_BChw: torch.Tensor
    vq_loss: torch.Tensor
    hits_KV: torch.Tensor


class MultiScaleQuantizer(nn.Module):
    """Residual multi-scale quantizer with a shared codebook (no EMA codebook: it learns by gradient)."""

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        patch_nums: Sequence[int],
        beta: float = 0.25,
        quant_resi: float = 0.5,
        share_quant_resi: int = 4,
        default_qresi_counts: int = 0,
        using_znorm: bool = False,
    ) -> None:
        super().__init__()
        self.vocab_size, self.dim, self.beta = vocab_size, dim, beta
        self.patch_nums = tuple(int(p) for p in patch_nums)
        self.using_znorm = using_znorm
        # EMA of this rank's code hits per scale (the released layout has this buffer); updated in training.
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(self.patch_nums), vocab_size))
        self.record_hit = 0
        self.quant_resi = PhiBank(
            dim, len(self.patch_nums), quant_resi, share_quant_resi, default_qresi_counts
        )
        self.embedding = nn.Embedding(vocab_size, dim)  # default N(0, 1) init, as the released tokenizer

    # ------------------------------------------------------------------ helpers
    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    def _check_latent(self, f_BChw: torch.Tensor) -> None:
        H, W = f_BChw.shape[-2:]
        if H != W or self.patch_nums[-1] != H:
            raise ValueError(
                f"latent grid is {H}x{W} but the scale schedule ends at {self.patch_nums[-1]}; the image must be "
                f"{self.patch_nums[-1]} x the autoencoder's downsample factor pixels on each side"
            )

    def nearest_code(self, z_NC: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook entry for each row (L2, or cosine with ``using_znorm``)."""
        codebook_VC = self.embedding.weight.detach()
        if self.using_znorm:
            return torch.argmax(F.normalize(z_NC, dim=1) @ F.normalize(codebook_VC, dim=1).T, dim=1)
        dist_NV = z_NC.square().sum(dim=1, keepdim=True) + codebook_VC.square().sum(dim=1)
        dist_NV.addmm_(z_NC, codebook_VC.T, alpha=-2, beta=1)
        return torch.argmin(dist_NV, dim=1)

    def _embed_up(self, idx_Bhw: torch.Tensor, H: int, W: int) -> torch.Tensor:
        h_BChw = self.embedding(idx_Bhw).permute(0, 3, 1, 2)
        if h_BChw.shape[-1] != W or h_BChw.shape[-2] != H:
            h_BChw = F.interpolate(h_BChw, size=(H, W), mode="bicubic")
        return h_BChw.contiguous()

    # ------------------------------------------------------------------ training forward
    def forward(self, f_BChw: torch.Tensor) -> QuantizerOutput:
        """Alg. 1 with gradients to the codebook and phis; loss = mean over scales of
        ``beta * |sg(f_hat) - f|^2 + |f_hat - sg(f)|^2`` with f_hat the cumulative reconstruction."""
        self._check_latent(f_BChw)
        B, C, H, W = f_BChw.shape
        f_BChw = f_BChw.float()
        f_ng = f_BChw.detach()
        f_rest = f_ng.clone()
        f_hat = torch.zeros_like(f_rest)
        vq_loss = f_BChw.new_zeros(())
        hits_KV = f_BChw.new_zeros(self.num_scales, self.vocab_size)
        with torch.autocast(device_type=f_BChw.device.type, enabled=False):
            for si, pn in enumerate(self.patch_nums):
                z = f_rest if pn == H else F.interpolate(f_rest, size=(pn, pn), mode="area")
                idx_N = self.nearest_code(z.permute(0, 2, 3, 1).reshape(-1, C))
                hits_KV[si] = idx_N.bincount(minlength=self.vocab_size).float()
                h_BChw = self.quant_resi(self._embed_up(idx_N.view(B, pn, pn), H, W), si)
                f_hat = f_hat + h_BChw
                f_rest = f_rest - h_BChw.detach()
                vq_loss = vq_loss + self.beta * F.mse_loss(f_hat.detach(), f_BChw) + F.mse_loss(f_hat, f_ng)
        vq_loss = vq_loss / self.num_scales
        if self.training:
            self._update_ema_hits(hits_KV)
        f_hat_ste = (f_hat.detach() - f_ng) + f_BChw
        return QuantizerOutput(f_hat_ste, vq_loss, hits_KV)

    @torch.no_grad()
    def _update_ema_hits(self, hits_KV: torch.Tensor) -> None:
        if self.record_hit == 0:
            self.ema_vocab_hit_SV.copy_(hits_KV)
        elif self.record_hit < 100:
            self.ema_vocab_hit_SV.mul_(0.9).add_(hits_KV, alpha=0.1)
        else:
            self.ema_vocab_hit_SV.mul_(0.99).add_(hits_KV, alpha=0.01)
        self.record_hit += 1

    # ------------------------------------------------------------------ Alg. 1 without gradients
    @torch.no_grad()
    def f_to_idx(self, f_BChw: torch.Tensor, patch_nums: Sequence[int] | None = None) -> list[torch.Tensor]:
        """Token indices per scale, each (B, l) in raster order. A prefix of the schedule gives a prefix
        of the tokens (each scale only depends on coarser ones)."""
        return self._encode(f_BChw, patch_nums, to_fhat=False)

    @torch.no_grad()
    def f_to_fhats(self, f_BChw: torch.Tensor) -> list[torch.Tensor]:
        """Cumulative reconstructions ``f_hat`` after each scale, each (B, C, H, W)."""
        return self._encode(f_BChw, None, to_fhat=True)

    def _encode(
        self, f_BChw: torch.Tensor, patch_nums: Sequence[int] | None, to_fhat: bool
    ) -> list[torch.Tensor]:
        self._check_latent(f_BChw)
        patch_nums = self.patch_nums if patch_nums is None else tuple(patch_nums)
        if tuple(patch_nums) != self.patch_nums[: len(patch_nums)]:
            raise ValueError(f"patch_nums {patch_nums} is not a prefix of the quantizer's {self.patch_nums}")
        B, C, H, W = f_BChw.shape
        f_rest = f_BChw.detach().float().clone()
        f_hat = torch.zeros_like(f_rest)
        out: list[torch.Tensor] = []
        with torch.autocast(device_type=f_BChw.device.type, enabled=False):
            for si, pn in enumerate(patch_nums):
                z = f_rest if pn == H else F.interpolate(f_rest, size=(pn, pn), mode="area")
                idx_N = self.nearest_code(z.permute(0, 2, 3, 1).reshape(-1, C))
                h_BChw = self.quant_resi(self._embed_up(idx_N.view(B, pn, pn), H, W), si)
                f_hat.add_(h_BChw)
                f_rest.sub_(h_BChw)
                out.append(f_hat.clone() if to_fhat else idx_N.view(B, pn * pn))
        return out

    # ------------------------------------------------------------------ one scale (the AR baseline's tokens)
    @torch.no_grad()
    def f_to_single_scale_idx(self, f_BChw: torch.Tensor) -> torch.Tensor:
        """Tokens of the schedule reduced to its last scale: the nearest code of every position of ``f``
        (no residual pyramid), (B, h * w) in raster order. Decode with :meth:`single_scale_fhat`."""
        self._check_latent(f_BChw)
        B, C, H, W = f_BChw.shape
        with torch.autocast(device_type=f_BChw.device.type, enabled=False):
            z_NC = f_BChw.detach().float().permute(0, 2, 3, 1).reshape(-1, C)
            return self.nearest_code(z_NC).view(B, H * W)

    def single_scale_fhat(self, idx_BN: torch.Tensor) -> torch.Tensor:
        """``f_hat`` (B, C, h, w) of one-scale tokens: their codebook vectors refined by the last scale's phi."""
        H = W = self.patch_nums[-1]
        if idx_BN.ndim != 2 or idx_BN.shape[1] != H * W:
            raise ValueError(
                f"one-scale tokens must be (B, {H * W}) for the {H}x{W} grid, got {tuple(idx_BN.shape)}"
            )
        return self.quant_resi(self._embed_up(idx_BN.view(-1, H, W), H, W), self.num_scales - 1)

    # ------------------------------------------------------------------ Alg. 2
    def idx_to_fhat(
        self, idx_list: Sequence[torch.Tensor], cumulative: bool = False
    ) -> torch.Tensor | list[torch.Tensor]:
        """Sum the refined embeddings of the given scales (a prefix of the schedule) into ``f_hat``
        (B, C, H, W); with ``cumulative`` return the partial sums after every scale."""
        H = W = self.patch_nums[-1]
        B = idx_list[0].shape[0]
        f_hat = self.embedding.weight.new_zeros(B, self.dim, H, W)
        partial: list[torch.Tensor] = []
        for si, idx_Bl in enumerate(idx_list):
            pn = self.patch_nums[si]
            f_hat = f_hat + self.quant_resi(self._embed_up(idx_Bl.view(B, pn, pn), H, W), si)
            if cumulative:
                partial.append(f_hat)
        return partial if cumulative else f_hat

    def idx_to_var_input(self, idx_list: Sequence[torch.Tensor]) -> torch.Tensor:
        """Teacher-forcing input of the transformer: for every scale k >= 2, the cumulative ``f_hat`` of
        scales < k area-downsampled to scale k's grid. Given the first n token maps it returns the
        inputs of scales 2..n: (B, l_2 + ... + l_n, C); a full list gives (B, L - l_1, C)."""
        H = W = self.patch_nums[-1]
        B = idx_list[0].shape[0]
        f_hat = self.embedding.weight.new_zeros(B, self.dim, H, W)
        next_inputs: list[torch.Tensor] = []
        for si in range(len(idx_list) - 1):
            pn, pn_next = self.patch_nums[si], self.patch_nums[si + 1]
            f_hat = f_hat + self.quant_resi(self._embed_up(idx_list[si].view(B, pn, pn), H, W), si)
            down = F.interpolate(f_hat, size=(pn_next, pn_next), mode="area")
            next_inputs.append(down.view(B, self.dim, -1).transpose(1, 2))
        if not next_inputs:
            return f_hat.new_zeros(B, 0, self.dim)
        return torch.cat(next_inputs, dim=1)

    def next_autoregressive_input(
        self, si: int, f_hat_BChw: torch.Tensor, h_BChw: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One sampling step: add scale ``si``'s embedding map ``h`` (B, C, pn, pn) to ``f_hat`` (in
        place) and return ``(f_hat, next scale's input)``; at the last scale the second item is f_hat."""
        H = self.patch_nums[-1]
        if si < self.num_scales - 1:
            f_hat_BChw.add_(self.quant_resi(F.interpolate(h_BChw, size=(H, H), mode="bicubic"), si))
            pn_next = self.patch_nums[si + 1]
            return f_hat_BChw, F.interpolate(f_hat_BChw, size=(pn_next, pn_next), mode="area")
        f_hat_BChw.add_(self.quant_resi(h_BChw, si))
        return f_hat_BChw, f_hat_BChw
