"""The block-causal structure of a scale schedule: which scale every token belongs to, and the dense mask
that lets a token see its own scale and all coarser ones. Shared by the transformer (SDPA's additive
mask), FlexAttention's block mask (:mod:`var_lightning.transformer.flex`) and the published-layout reader,
so none of them imports another.

Shapes: L tokens of all scales.
"""

from __future__ import annotations

import torch


def level_index(patch_nums: tuple[int, ...]) -> torch.Tensor:
    """(1, L) scale index of every token."""
    return torch.cat([torch.full((pn * pn,), si) for si, pn in enumerate(patch_nums)]).view(1, -1)


def block_causal_bias(patch_nums: tuple[int, ...]) -> torch.Tensor:
    """(1, 1, L, L) additive mask: 0 where token i may attend to token j (scale(i) >= scale(j)), else -inf."""
    d = level_index(patch_nums)[0]
    allowed = d.view(-1, 1) >= d.view(1, -1)
    return torch.where(allowed, 0.0, -torch.inf).view(1, 1, len(d), len(d))
