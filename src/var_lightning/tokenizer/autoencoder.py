"""VQGAN-family encoder/decoder and the multi-scale VQ-VAE (tokenizer) built on them.

Module and parameter names follow the released tokenizer (``vae_ch160v4096z32.pth``) so its state_dict
loads as is. Images are in [-1, 1] throughout.

Shapes: B batch, K scales, C channels, Cvae codebook dim, H,W image side, h,w latent side,
l tokens of one scale, L tokens of all scales.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from var_lightning.tokenizer.config import VQVAEConfig
from var_lightning.tokenizer.quantizer import MultiScaleQuantizer, QuantizerOutput


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


def _silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU of a GroupNorm output, in place when autograd does not need the input (inference, the frozen
    tokenizer): saves one full-resolution allocation per block, with identical numbers."""
    return F.silu(x, inplace=not (torch.is_grad_enabled() and x.requires_grad))


class Upsample2x(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x_BChw: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x_BChw, scale_factor=2, mode="nearest"))


class Downsample2x(nn.Module):
    """Zero-pad right/bottom by one, then a stride-2 3x3 conv without padding."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x_BChw: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x_BChw, pad=(0, 1, 0, 1), mode="constant", value=0))


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = _norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout) if dropout > 1e-6 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.nin_shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x_BChw: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_silu(self.norm1(x_BChw)))
        h = self.conv2(self.dropout(_silu(self.norm2(h))))
        return self.nin_shortcut(x_BChw) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with a fused 1x1 ``qkv`` conv (scale C^-0.5) and a residual."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.C = channels
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x_BChw: torch.Tensor) -> torch.Tensor:
        B, C, h, w = x_BChw.shape
        qkv = self.qkv(self.norm(x_BChw)).reshape(B, 3, C, h * w)
        q_B1NC, k_B1NC, v_B1NC = (t.transpose(1, 2).unsqueeze(1) for t in qkv.unbind(1))  # N = h*w
        o_B1NC = F.scaled_dot_product_attention(q_B1NC, k_B1NC, v_B1NC)
        o_BChw = o_B1NC.squeeze(1).transpose(1, 2).reshape(B, C, h, w)
        return x_BChw + self.proj_out(o_BChw)


class _Level(nn.Module):
    """One resolution level: ``block`` ResnetBlocks, optional ``attn`` after each, optional resampler."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()


class _Mid(nn.Module):
    def __init__(self, channels: int, dropout: float, groups: int, use_attn: bool) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout, groups)
        self.attn_1 = AttnBlock(channels, groups) if use_attn else nn.Identity()
        self.block_2 = ResnetBlock(channels, channels, dropout, groups)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    """(B, 3, H, W) -> (B, Cvae, H/f, W/f) with f = 2 ** (levels - 1)."""

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        g, n_levels = cfg.norm_groups, len(cfg.ch_mult)
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, kernel_size=3, stride=1, padding=1)
        in_mult = (1, *cfg.ch_mult)
        self.down = nn.ModuleList()
        block_in = cfg.ch
        for i_level in range(n_levels):
            level = _Level()
            block_in, block_out = cfg.ch * in_mult[i_level], cfg.ch * cfg.ch_mult[i_level]
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResnetBlock(block_in, block_out, cfg.dropout, g))
                block_in = block_out
                if i_level == n_levels - 1 and cfg.attn_lowest:
                    level.attn.append(AttnBlock(block_in, g))
            if i_level != n_levels - 1:
                level.downsample = Downsample2x(block_in)
            self.down.append(level)
        self.mid = _Mid(block_in, cfg.dropout, g, cfg.attn_mid)
        self.norm_out = _norm(block_in, g)
        self.conv_out = nn.Conv2d(block_in, cfg.z_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x_B3HW: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x_B3HW)
        for i_level, level in enumerate(self.down):
            for i_block, block in enumerate(level.block):
                h = block(h)
                if len(level.attn) > 0:
                    h = level.attn[i_block](h)
            if i_level != len(self.down) - 1:
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(_silu(self.norm_out(h)))


class Decoder(nn.Module):
    """(B, Cvae, h, w) -> (B, 3, h*f, w*f); ``up[i]`` is level i (``up[0]`` the finest), run coarse first."""

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        g, n_levels = cfg.norm_groups, len(cfg.ch_mult)
        block_in = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = _Mid(block_in, cfg.dropout, g, cfg.attn_mid)
        levels: list[_Level] = []
        for i_level in reversed(range(n_levels)):
            level = _Level()
            block_out = cfg.ch * cfg.ch_mult[i_level]
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(ResnetBlock(block_in, block_out, cfg.dropout, g))
                block_in = block_out
                if i_level == n_levels - 1 and cfg.attn_lowest:
                    level.attn.append(AttnBlock(block_in, g))
            if i_level != 0:
                level.upsample = Upsample2x(block_in)
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(block_in, g)
        self.conv_out = nn.Conv2d(block_in, cfg.in_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, z_BChw: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z_BChw))
        for i_level in reversed(range(len(self.up))):
            level = self.up[i_level]
            for i_block, block in enumerate(level.block):
                h = block(h)
                if len(level.attn) > 0:
                    h = level.attn[i_block](h)
            if i_level != 0:
                h = level.upsample(h)
        return self.conv_out(_silu(self.norm_out(h)))

    @property
    def last_layer(self) -> torch.Tensor:
        """Weight of the final conv: the adaptive GAN weight balances gradients at this tensor."""
        return self.conv_out.weight


class MultiScaleVQVAE(nn.Module):
    """Encoder -> quant_conv -> multi-scale quantizer -> post_quant_conv -> decoder."""

    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = MultiScaleQuantizer(
            cfg.vocab_size,
            cfg.z_channels,
            cfg.patch_nums,
            beta=cfg.beta,
            quant_resi=cfg.quant_resi,
            share_quant_resi=cfg.share_quant_resi,
            default_qresi_counts=cfg.default_qresi_counts,
            using_znorm=cfg.using_znorm,
        )
        ks = cfg.quant_conv_ks
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, ks, stride=1, padding=ks // 2)
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, ks, stride=1, padding=ks // 2)

    @property
    def patch_nums(self) -> tuple[int, ...]:
        return self.quantize.patch_nums

    def check_image(self, img_B3HW: torch.Tensor) -> None:
        """Raise a clear error when the image does not fit the scale schedule."""
        size = self.cfg.image_size
        if img_B3HW.ndim != 4 or img_B3HW.shape[1] != self.cfg.in_channels:
            raise ValueError(
                f"expected images of shape (B, {self.cfg.in_channels}, {size}, {size}), got {tuple(img_B3HW.shape)}"
            )
        if tuple(img_B3HW.shape[-2:]) != (size, size):
            raise ValueError(
                f"image size {tuple(img_B3HW.shape[-2:])} does not match the scale schedule: patch_nums ends at "
                f"{self.patch_nums[-1]} with downsample {self.cfg.downsample}, so images must be {size}x{size} "
                f"(set data.image_size={size} or change model.tokenizer.patch_nums)"
            )

    def encode(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        """Continuous latent ``f`` (B, Cvae, h, w) before quantization."""
        self.check_image(img_B3HW)
        return self.quant_conv(self.encoder(img_B3HW))

    def forward(self, img_B3HW: torch.Tensor) -> tuple[torch.Tensor, QuantizerOutput]:
        """Training path: unclamped reconstruction (B, 3, H, W) and the quantizer's output."""
        q = self.quantize(self.encode(img_B3HW))
        return self.decoder(self.post_quant_conv(q.f_hat_BChw)), q

    def fhat_to_img(self, f_hat_BChw: torch.Tensor) -> torch.Tensor:
        """Decode a latent to an image in [-1, 1]. The latent is taken in the decoder's dtype (a bf16-true
        transformer hands over a bf16 one; under autocast the convolutions pick theirs anyway)."""
        f_hat_BChw = f_hat_BChw.to(self.post_quant_conv.weight.dtype)
        return self.decoder(self.post_quant_conv(f_hat_BChw)).clamp_(-1, 1)

    @torch.no_grad()
    def img_to_idx(
        self, img_B3HW: torch.Tensor, patch_nums: Sequence[int] | None = None
    ) -> list[torch.Tensor]:
        """Tokenize: K LongTensors (B, l_k) in raster order."""
        return self.quantize.f_to_idx(self.encode(img_B3HW), patch_nums)

    def idx_to_img(self, idx_list: Sequence[torch.Tensor]) -> torch.Tensor:
        """Decode tokens of all scales to an image (B, 3, H, W) in [-1, 1]."""
        return self.fhat_to_img(self.quantize.idx_to_fhat(idx_list))

    def idx_to_progressive_imgs(self, idx_list: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Images decoded from the cumulative f_hat after each scale (coarse to fine)."""
        return [self.fhat_to_img(f) for f in self.quantize.idx_to_fhat(idx_list, cumulative=True)]

    @torch.no_grad()
    def img_to_reconstruction(
        self, img_B3HW: torch.Tensor, progressive: bool = False
    ) -> torch.Tensor | list[torch.Tensor]:
        """Quantized reconstruction (B, 3, H, W) in [-1, 1], or the list over scales with ``progressive``."""
        f_hats = self.quantize.f_to_fhats(self.encode(img_B3HW))
        return [self.fhat_to_img(f) for f in f_hats] if progressive else self.fhat_to_img(f_hats[-1])

    @torch.no_grad()
    def img_to_var_input(self, img_B3HW: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Tokens and the transformer's teacher-forcing input (B, L - l_1, Cvae) for a batch of images."""
        idx_list = self.img_to_idx(img_B3HW)
        return idx_list, self.quantize.idx_to_var_input(idx_list)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # type: ignore[override]
        """Accept a usage buffer recorded with another number of scales (one tokenizer serves several
        schedules with the same final grid); the buffer is statistics only."""
        key = "quantize.ema_vocab_hit_SV"
        if key in state_dict and state_dict[key].shape != self.quantize.ema_vocab_hit_SV.shape:
            state_dict = dict(state_dict)
            state_dict[key] = self.quantize.ema_vocab_hit_SV.clone()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
