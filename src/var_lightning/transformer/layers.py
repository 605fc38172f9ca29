"""Building blocks of the VAR transformer: attention with KV cache, MLP, AdaLN blocks, AdaLN head.

Parameter names follow the released checkpoints (``var_d16.pth`` ...).
Shapes: B batch, L sequence length (tokens of the scales in the current call), C width,
D condition width (= C), H heads, c head dim.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class DropPath(nn.Module):
    """Stochastic depth per sample (training only)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p <= 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p:g}"


class FFN(nn.Module):
    """fc1 (C -> 4C) -> GELU(tanh) -> fc2 (4C -> C)."""

    def __init__(self, C: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(C, hidden)
        self.fc2 = nn.Linear(hidden, C)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x_BLC: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(F.gelu(self.fc1(x_BLC), approximate="tanh")))


class SelfAttention(nn.Module):
    """Multi-head attention with q/v biases (k bias fixed at zero) and optional L2-normalised q, k.

    In training the caller passes the block-causal mask; in sampling ``kv_caching(True)`` makes every call
    append its k, v to a cache so one scale's queries see all earlier scales without a mask.
    """

    def __init__(self, C: int, num_heads: int, attn_l2_norm: bool, attn_drop: float, proj_drop: float) -> None:
        super().__init__()
        self.C, self.num_heads, self.head_dim = C, num_heads, C // num_heads
        self.attn_l2_norm = attn_l2_norm
        if attn_l2_norm:
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0).log())
            self.max_scale_mul = math.log(100)
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.q_bias = nn.Parameter(torch.zeros(C))
        self.v_bias = nn.Parameter(torch.zeros(C))
        self.register_buffer("zero_k_bias", torch.zeros(C))
        self.mat_qkv = nn.Linear(C, 3 * C, bias=False)
        self.proj = nn.Linear(C, C)
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()
        self.attn_drop = attn_drop
        self.caching = False
        self.cached_k: torch.Tensor | None = None
        self.cached_v: torch.Tensor | None = None

    def kv_caching(self, enable: bool) -> None:
        self.caching, self.cached_k, self.cached_v = enable, None, None

    def qkv(self, x_BLC: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project and split into (B, H, L, c) q, k, v; normalise and scale q, k when configured."""
        B, L, C = x_BLC.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = F.linear(x_BLC, self.mat_qkv.weight, bias).view(B, L, 3, self.num_heads, self.head_dim)
        q_BHLc, k_BHLc, v_BHLc = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if self.attn_l2_norm:
            scale_mul = self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp()
            q_BHLc = F.normalize(q_BHLc, dim=-1).mul(scale_mul)
            k_BHLc = F.normalize(k_BHLc, dim=-1)
        return q_BHLc, k_BHLc, v_BHLc

    def forward(self, x_BLC: torch.Tensor, attn_bias: torch.Tensor | None, block_mask=None) -> torch.Tensor:
        B, L, C = x_BLC.shape
        q, k, v = self.qkv(x_BLC)
        if self.caching:
            if self.cached_k is not None:
                k = torch.cat((self.cached_k, k), dim=2)
                v = torch.cat((self.cached_v, v), dim=2)
            self.cached_k, self.cached_v = k, v
        dropout_p = self.attn_drop if self.training else 0.0
        if block_mask is not None:
            from var_lightning.transformer.flex import flex_attention_call

            o_BHLc = flex_attention_call(q, k, v, block_mask, self.scale)
        else:
            mask = None if attn_bias is None else attn_bias.to(q.dtype)
            o_BHLc = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=self.scale)
        o_BLC = o_BHLc.transpose(1, 2).reshape(B, L, C)
        return self.proj_drop(self.proj(o_BLC))


class SharedAdaLin(nn.Linear):
    """The one AdaLN linear of shared-AdaLN models: (B, D) -> (B, 1, 6, C)."""

    def forward(self, cond_BD: torch.Tensor) -> torch.Tensor:
        C = self.out_features // 6
        return super().forward(cond_BD).view(-1, 1, 6, C)


class AdaLNSelfAttn(nn.Module):
    """Transformer block with adaptive LayerNorm.

    The condition gives six vectors in the order gamma1, gamma2, scale1, scale2, shift1, shift2:
    ``x += drop_path(attn(ln(x) * (1 + scale1) + shift1) * gamma1)`` and the same for the FFN with the
    second triple. With ``shared_aln`` the block adds its own ``ada_gss`` (1, 1, 6, C) to the shared
    projection of the condition instead of owning an ``ada_lin``.
    """

    def __init__(
        self,
        C: int,
        D: int,
        num_heads: int,
        mlp_ratio: float,
        drop: float,
        attn_drop: float,
        drop_path: float,
        norm_eps: float,
        shared_aln: bool,
        attn_l2_norm: bool,
    ) -> None:
        super().__init__()
        self.C, self.D, self.shared_aln = C, D, shared_aln
        if shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, C) / C**0.5)
        self.drop_path = DropPath(drop_path)
        self.attn = SelfAttention(C, num_heads, attn_l2_norm, attn_drop, drop)
        self.ffn = FFN(C, round(C * mlp_ratio), drop)
        self.ln_wo_grad = nn.LayerNorm(C, eps=norm_eps, elementwise_affine=False)
        if not shared_aln:
            self.ada_lin = nn.Sequential(nn.SiLU(inplace=False), nn.Linear(D, 6 * C))

    def modulation(self, cond: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``cond``: (B, D) condition, or (B, 1, 6, C) shared projection when ``shared_aln``."""
        if self.shared_aln:
            return (self.ada_gss + cond).unbind(2)
        return self.ada_lin(cond).view(-1, 1, 6, self.C).unbind(2)

    def forward(self, x_BLC: torch.Tensor, cond: torch.Tensor, attn_bias: torch.Tensor | None, block_mask=None) -> torch.Tensor:
        gamma1, gamma2, scale1, scale2, shift1, shift2 = self.modulation(cond)  # each (B, 1, C)
        h = self.ln_wo_grad(x_BLC).mul(scale1.add(1)).add_(shift1)
        x_BLC = x_BLC + self.drop_path(self.attn(h, attn_bias, block_mask).mul_(gamma1))
        h = self.ln_wo_grad(x_BLC).mul(scale2.add(1)).add_(shift2)
        return x_BLC + self.drop_path(self.ffn(h).mul(gamma2))


class AdaLNBeforeHead(nn.Module):
    """Final adaptive LayerNorm, always conditioned on the raw class embedding (never shared)."""

    def __init__(self, C: int, D: int, norm_eps: float) -> None:
        super().__init__()
        self.C = C
        self.ln_wo_grad = nn.LayerNorm(C, eps=norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(inplace=False), nn.Linear(D, 2 * C))

    def forward(self, x_BLC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond_BD).view(-1, 1, 2, self.C).unbind(2)
        return self.ln_wo_grad(x_BLC).mul(scale.add(1)).add_(shift)
