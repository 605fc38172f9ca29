"""Building blocks of the VAR transformer: attention with KV cache, MLP, AdaLN blocks, AdaLN head.

Parameter names follow the released checkpoints (``var_d16.pth`` ...). Each AdaLN module splits into
``modulation(cond)`` (depends only on the class condition) and ``forward_modulated`` (the per-token
work), so a sampler can compute the modulation once per image instead of once per scale.
Shapes: B batch, L sequence length (tokens of the scales in the current call), C width,
D condition width (= C), H heads, c head dim.
"""

from __future__ import annotations

import math
from typing import Any

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


class KVCache:
    """The plain sampler's cache: every call appends its k, v (B, H, l, c) along the length axis."""

    def __init__(self) -> None:
        self.k_BHLc: torch.Tensor | None = None
        self.v_BHLc: torch.Tensor | None = None

    def update(self, k_BHlc: torch.Tensor, v_BHlc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k_BHLc is not None:
            k_BHlc = torch.cat((self.k_BHLc, k_BHlc), dim=2)
            v_BHlc = torch.cat((self.v_BHLc, v_BHlc), dim=2)
        self.k_BHLc, self.v_BHLc = k_BHlc, v_BHlc
        return k_BHlc, v_BHlc


class StaticKVCache:
    """A preallocated (B, H, L_max, c) cache written in place at ``pos``.

    Every sampling run touches the same memory, which is what a CUDA graph replay needs, and no scale
    copies the whole cache (``torch.cat`` does). The caller sets ``pos`` to the first token of the scale
    before each call. ``dtype``: store k, v cast to it (under autocast SDPA casts them to the autocast
    dtype anyway, so storing them cast gives equal results with half the memory); None keeps their dtype.
    Buffers are allocated on the first call.
    """

    def __init__(self, max_len: int, dtype: torch.dtype | None = None) -> None:
        self.max_len, self.dtype, self.pos = max_len, dtype, 0
        self.k_BHLc: torch.Tensor | None = None
        self.v_BHLc: torch.Tensor | None = None

    def update(self, k_BHlc: torch.Tensor, v_BHlc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, H, n_new, c = k_BHlc.shape
        dtype = self.dtype or k_BHlc.dtype
        if self.k_BHLc is None or self.k_BHLc.shape[:2] != (B, H) or self.k_BHLc.dtype != dtype:
            self.k_BHLc = k_BHlc.new_empty(B, H, self.max_len, c, dtype=dtype)
            self.v_BHLc = v_BHlc.new_empty(B, H, self.max_len, c, dtype=self.dtype or v_BHlc.dtype)
        end = self.pos + n_new
        if end > self.max_len:
            raise ValueError(f"StaticKVCache holds {self.max_len} tokens; cannot write {n_new} at {self.pos}")
        self.k_BHLc[:, :, self.pos : end].copy_(k_BHlc)
        self.v_BHLc[:, :, self.pos : end].copy_(v_BHlc)
        return self.k_BHLc[:, :, :end], self.v_BHLc[:, :, :end]


class SelfAttention(nn.Module):
    """Multi-head attention with q/v biases (k bias fixed at zero) and optional L2-normalised q, k.

    In training the caller passes the block-causal mask (a dense additive ``attn_bias`` for SDPA, or a
    FlexAttention ``block_mask``); in sampling ``kv_caching(True)`` makes every call append its k, v to a
    cache (``kv_cache``, replaceable by a :class:`StaticKVCache`) so one scale's queries see all earlier
    scales without a mask.
    """

    def __init__(
        self, C: int, num_heads: int, attn_l2_norm: bool, attn_drop: float, proj_drop: float
    ) -> None:
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
        self.kv_cache: KVCache | StaticKVCache | None = None

    @property
    def caching(self) -> bool:
        return self.kv_cache is not None

    def kv_caching(self, enable: bool) -> None:
        """Start (with an empty cache) or stop caching k, v across calls."""
        self.kv_cache = KVCache() if enable else None

    def qkv(self, x_BLC: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project and split into (B, H, L, c) q, k, v; normalise and scale q, k when configured."""
        B, L, C = x_BLC.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        if isinstance(self.mat_qkv, nn.Linear):  # the published computation, bias fused
            qkv = F.linear(x_BLC, self.mat_qkv.weight, bias)
        else:  # a wrapped projection (e.g. a LoRA adapter around it): its own forward, then the q / v bias
            qkv = self.mat_qkv(x_BLC) + bias
        qkv = qkv.view(B, L, 3, self.num_heads, self.head_dim)
        q_BHLc, k_BHLc, v_BHLc = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if self.attn_l2_norm:
            scale_mul = self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp()
            q_BHLc = F.normalize(q_BHLc, dim=-1).mul(scale_mul)
            k_BHLc = F.normalize(k_BHLc, dim=-1)
        return q_BHLc, k_BHLc, v_BHLc

    def forward(
        self, x_BLC: torch.Tensor, attn_bias: torch.Tensor | None, block_mask: Any = None
    ) -> torch.Tensor:
        """``attn_bias``: (1, 1, L, L) additive mask or None; ``block_mask``: a FlexAttention BlockMask
        (takes precedence; see :mod:`var_lightning.transformer.flex`)."""
        B, L, C = x_BLC.shape
        q, k, v = self.qkv(x_BLC)
        if self.kv_cache is not None:
            k, v = self.kv_cache.update(k, v)
        dropout_p = self.attn_drop if self.training else 0.0
        if block_mask is not None:
            # lazy: optional dependency; FlexAttention needs torch >= 2.5 and attn_impl='flex'
            from var_lightning.transformer.flex import flex_attention_call

            o_BHLc = flex_attention_call(q, k, v, block_mask, self.scale)
        else:
            mask = None if attn_bias is None else attn_bias.to(q.dtype)
            o_BHLc = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=self.scale
            )
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

    def modulation(self, cond: torch.Tensor) -> torch.Tensor:
        """(B, 1, 6, C) AdaLN vectors from ``cond``: the (B, D) condition, or the (B, 1, 6, C) shared
        projection when ``shared_aln``."""
        if self.shared_aln:
            return self.ada_gss + cond
        return self.ada_lin(cond).view(-1, 1, 6, self.C)

    def forward(
        self, x_BLC: torch.Tensor, cond: torch.Tensor, attn_bias: torch.Tensor | None, block_mask: Any = None
    ) -> torch.Tensor:
        return self.forward_modulated(x_BLC, self.modulation(cond), attn_bias, block_mask)

    def forward_modulated(
        self,
        x_BLC: torch.Tensor,
        ada_B16C: torch.Tensor,
        attn_bias: torch.Tensor | None,
        block_mask: Any = None,
    ) -> torch.Tensor:
        """The block given its precomputed ``modulation`` (B, 1, 6, C)."""
        gamma1, gamma2, scale1, scale2, shift1, shift2 = ada_B16C.unbind(2)  # each (B, 1, C)
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

    def modulation(self, cond_BD: torch.Tensor) -> torch.Tensor:
        """(B, 1, 2, C): scale and shift."""
        return self.ada_lin(cond_BD).view(-1, 1, 2, self.C)

    def forward(self, x_BLC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        return self.forward_modulated(x_BLC, self.modulation(cond_BD))

    def forward_modulated(self, x_BLC: torch.Tensor, ada_B12C: torch.Tensor) -> torch.Tensor:
        scale, shift = ada_B12C.unbind(2)
        return self.ln_wo_grad(x_BLC).mul(scale.add(1)).add_(shift)
