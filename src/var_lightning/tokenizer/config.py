"""Tokenizer (multi-scale VQ-VAE) configuration with validation.

The defaults are the released tokenizer ``vae_ch160v4096z32.pth`` (``ch`` = 160 as in that file; the
published class's own default is 128, which no released model uses).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

SCHEDULE_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
SCHEDULE_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)
SCHEDULE_1024 = (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64)


def _bad(key: str, value: object, why: str) -> ValueError:
    return ValueError(f"invalid tokenizer config: {key}={value!r}: {why} (config key model.tokenizer.{key})")


@dataclass
class VQVAEConfig:
    """Shape of a multi-scale VQ-VAE.

    vocab_size: codebook size V (shared by all scales).
    z_channels: codebook/latent dimension Cvae.
    ch, ch_mult, num_res_blocks: VQGAN encoder/decoder width, per-level multipliers (downsample factor
        2 ** (len(ch_mult) - 1)) and residual blocks per level (the decoder has one more).
    norm_groups: GroupNorm groups (32 in the released model); every level's width must divide by it.
    attn_lowest / attn_mid: single-head attention at the lowest resolution level / in the middle block.
    patch_nums: the scale schedule, token-map sides from coarse to fine; the last equals the latent side.
    beta: commitment weight. quant_resi: phi mixing ratio r. share_quant_resi: 0 = one phi per scale,
        1 = one shared, n = n partially shared phis. default_qresi_counts: phi count for mode 0 (0 = K).
    """

    vocab_size: int = 4096
    z_channels: int = 32
    ch: int = 160
    ch_mult: Sequence[int] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    dropout: float = 0.0
    norm_groups: int = 32
    attn_lowest: bool = True
    attn_mid: bool = True
    in_channels: int = 3
    patch_nums: Sequence[int] = field(default_factory=lambda: SCHEDULE_256)
    beta: float = 0.25
    using_znorm: bool = False
    quant_conv_ks: int = 3
    quant_resi: float = 0.5
    share_quant_resi: int = 4
    default_qresi_counts: int = 0

    def __post_init__(self) -> None:
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        self.patch_nums = tuple(int(p) for p in self.patch_nums)
        if self.vocab_size < 2:
            raise _bad("vocab_size", self.vocab_size, "the codebook needs at least 2 entries")
        if self.z_channels < 1:
            raise _bad("z_channels", self.z_channels, "must be positive")
        if self.ch < 1 or not self.ch_mult or min(self.ch_mult) < 1:
            raise _bad("ch_mult", self.ch_mult, "ch and every multiplier must be positive")
        for m in self.ch_mult:
            if (self.ch * m) % self.norm_groups:
                raise _bad("ch", self.ch, f"ch * {m} is not divisible by norm_groups={self.norm_groups}")
        if self.num_res_blocks < 1:
            raise _bad("num_res_blocks", self.num_res_blocks, "must be >= 1")
        if not self.patch_nums or min(self.patch_nums) < 1:
            raise _bad("patch_nums", self.patch_nums, "needs at least one positive scale")
        if any(b <= a for a, b in zip(self.patch_nums, self.patch_nums[1:], strict=False)):
            raise _bad("patch_nums", self.patch_nums, "scales must increase strictly from coarse to fine")
        if not 0.0 <= self.dropout < 1.0:
            raise _bad("dropout", self.dropout, "must be in [0, 1)")
        if self.share_quant_resi < 0 or self.default_qresi_counts < 0:
            raise _bad("share_quant_resi", self.share_quant_resi, "must be >= 0")
        if self.quant_conv_ks % 2 != 1:
            raise _bad("quant_conv_ks", self.quant_conv_ks, "must be odd")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def image_size(self) -> int:
        """Input side in pixels the schedule implies: last scale x downsample factor."""
        return self.patch_nums[-1] * self.downsample
