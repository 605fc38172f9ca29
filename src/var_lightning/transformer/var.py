"""The VAR transformer: teacher-forced next-scale prediction.

The class embedding is both the start token (all ``l_1`` tokens of the first scale) and the AdaLN
condition. Every token gets a learned absolute position embedding and its scale's level embedding.
A block-causal mask lets each token see its own scale and all coarser ones: a dense additive mask for
SDPA, or (``attn_impl="flex"`` on CUDA) a FlexAttention block mask that skips the masked tiles.
``forward_hidden`` stops before the head so a loss can apply the head chunk by chunk
(:mod:`var_lightning.objectives.chunked_ce`), and ``compile=True`` runs the blocks through ``torch.compile``.

Shapes: B batch, K scales, L tokens of all scales, l tokens of one scale, C width, D condition width,
V vocabulary, Cv tokenizer codebook dim (Cvae).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from var_lightning.transformer.config import VARConfig
from var_lightning.transformer.layers import AdaLNBeforeHead, AdaLNSelfAttn, SharedAdaLin
from var_lightning.transformer.masks import block_causal_bias, level_index

log = logging.getLogger(__name__)


def run_blocks(
    blocks: nn.ModuleList,
    x_BLC: torch.Tensor,
    cond: torch.Tensor,
    attn_bias: torch.Tensor | None,
    block_mask: Any,
) -> torch.Tensor:
    """The transformer trunk; a free function so ``torch.compile`` can wrap it without holding a module
    (a compiled closure stored on a module would break ``deepcopy``, e.g. for weight averaging)."""
    for block in blocks:
        x_BLC = block(x_BLC, cond, attn_bias, block_mask)
    return x_BLC


_COMPILED_RUN_BLOCKS: dict[str | None, Callable[..., torch.Tensor]] = {}


def compiled_run_blocks(mode: str | None = None) -> Callable[..., torch.Tensor]:
    """``run_blocks`` under ``torch.compile`` (static shapes; one compiled function per mode, shared by all
    models in the process; dynamo recompiles per model and per train/eval mode)."""
    if mode not in _COMPILED_RUN_BLOCKS:
        _COMPILED_RUN_BLOCKS[mode] = torch.compile(run_blocks, mode=mode, dynamic=False)
    return _COMPILED_RUN_BLOCKS[mode]


class VAR(nn.Module):
    """Class-conditional VAR transformer (a plain ``nn.Module``; the tokenizer is not a submodule)."""

    def __init__(self, cfg: VARConfig) -> None:
        super().__init__()
        self.cfg = cfg
        C = D = cfg.width
        self.C, self.D, self.V, self.Cvae = C, D, cfg.vocab_size, cfg.cvae
        self.num_classes, self.depth = cfg.num_classes, cfg.depth
        self.patch_nums = tuple(cfg.patch_nums)
        self.L, self.first_l = cfg.seq_len, cfg.first_l
        self.begin_ends: list[tuple[int, int]] = []
        cur = 0
        for pn in self.patch_nums:
            self.begin_ends.append((cur, cur + pn * pn))
            cur += pn * pn
        std = cfg.resolved_init_std

        self.pos_start = nn.Parameter(torch.empty(1, self.first_l, C))
        self.pos_1LC = nn.Parameter(torch.empty(1, self.L, C))
        nn.init.trunc_normal_(self.pos_start, mean=0.0, std=std)
        nn.init.trunc_normal_(self.pos_1LC, mean=0.0, std=std)
        self.register_buffer("lvl_1L", level_index(self.patch_nums))
        self.register_buffer("attn_bias_for_masking", block_causal_bias(self.patch_nums))

        self.word_embed = nn.Linear(self.Cvae, C)
        self.class_emb = nn.Embedding(self.num_classes + 1, C)  # index num_classes = null class
        self.lvl_embed = nn.Embedding(len(self.patch_nums), C)
        self.shared_ada_lin = (
            nn.Sequential(nn.SiLU(inplace=False), SharedAdaLin(D, 6 * C)) if cfg.shared_aln else nn.Identity()
        )
        dpr = [
            cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)
        ]  # linspace(0, rate, depth)
        self.blocks = nn.ModuleList(
            [
                AdaLNSelfAttn(
                    C,
                    D,
                    cfg.num_heads,
                    cfg.mlp_ratio,
                    cfg.drop_rate,
                    cfg.attn_drop,
                    dpr[i],
                    cfg.norm_eps,
                    cfg.shared_aln,
                    cfg.attn_l2_norm,
                )
                for i in range(cfg.depth)
            ]
        )
        self.head_nm = AdaLNBeforeHead(C, D, cfg.norm_eps)
        self.head = nn.Linear(C, self.V)
        self.init_weights()

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def init_weights(self) -> None:
        """The published initialisation: trunc-normal linears/embeddings, a near-zero head, AdaLN
        scale/shift rows x init_adaln, gamma rows x init_adaln_gamma (so residual branches start near 0),
        and output projections divided by sqrt(2 * depth). Unlike the published code, the shared AdaLN
        linear of "-s" models gets the same row scaling as per-block AdaLN linears."""
        cfg, std = self.cfg, self.cfg.resolved_init_std
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=std)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.Embedding):
                nn.init.trunc_normal_(m.weight, std=std)
            elif isinstance(m, (nn.LayerNorm, nn.GroupNorm)) and m.weight is not None:
                m.weight.fill_(1.0)
                m.bias.zero_()
        self.head.weight.mul_(cfg.init_head)
        self.head.bias.zero_()
        self.head_nm.ada_lin[-1].weight.mul_(cfg.init_adaln)
        self.head_nm.ada_lin[-1].bias.zero_()
        C, div = self.C, math.sqrt(2 * cfg.depth)
        adaln_linears = [] if not cfg.shared_aln else [self.shared_ada_lin[-1]]
        for block in self.blocks:
            block.attn.proj.weight.div_(div)
            block.ffn.fc2.weight.div_(div)
            if cfg.shared_aln:
                block.ada_gss[:, :, 2:].mul_(cfg.init_adaln)
                block.ada_gss[:, :, :2].mul_(cfg.init_adaln_gamma)
            else:
                adaln_linears.append(block.ada_lin[-1])
        for lin in adaln_linears:
            lin.weight[2 * C :].mul_(cfg.init_adaln)
            lin.weight[: 2 * C].mul_(cfg.init_adaln_gamma)
            lin.bias.zero_()

    # ------------------------------------------------------------------ helpers
    def kv_caching(self, enable: bool) -> None:
        for block in self.blocks:
            block.attn.kv_caching(enable)

    def check_labels(self, label_B: torch.Tensor, allow_null: bool = True) -> None:
        hi = self.num_classes if allow_null else self.num_classes - 1
        if label_B.numel() and (int(label_B.min()) < 0 or int(label_B.max()) > hi):
            bad = label_B[(label_B < 0) | (label_B > hi)][0].item()
            raise ValueError(
                f"class id {bad} is out of range: this model has {self.num_classes} classes (0..{self.num_classes - 1}"
                f"{', and ' + str(self.num_classes) + ' = unconditional' if allow_null else ''})"
            )

    def cond(self, cond_BD: torch.Tensor) -> torch.Tensor:
        """Per-block AdaLN input: the class embedding, or its shared projection (B, 1, 6, C)."""
        return self.shared_ada_lin(cond_BD)

    def get_logits(self, h_BLC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        """Logits (B, L, V) float32 from the trunk's output and the class embedding. The head's input is in the
        head's own dtype: fp32 as published (autocast then picks the matmul's), bf16 for a bf16-true model."""
        z_BLC = self.head_nm(h_BLC.float(), cond_BD).to(self.head.weight.dtype)
        return self.head(z_BLC).float()

    def embed_inputs(
        self, label_B: torch.Tensor, x_BLCv: torch.Tensor, end: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings (B, L, C) of [start tokens; word_embed(teacher-forcing input)] plus level and
        position embeddings, and the class embedding ``cond_BD``.

        Outside autocast, as published; the input is cast to ``word_embed``'s own dtype (fp32 normally, bf16
        when a sharding or precision wrapper holds the weights in bf16)."""
        end = self.L if end is None else end
        B = label_B.shape[0]
        with torch.autocast(device_type=x_BLCv.device.type, enabled=False):
            sos_BD = cond_BD = self.class_emb(label_B)
            sos = sos_BD.unsqueeze(1).expand(B, self.first_l, -1) + self.pos_start.expand(B, self.first_l, -1)
            x_in = x_BLCv[:, : end - self.first_l].to(self.word_embed.weight.dtype)
            x_BLC = torch.cat((sos, self.word_embed(x_in).to(sos.dtype)), dim=1)
            x_BLC = x_BLC + self.lvl_embed(self.lvl_1L[:, :end].expand(B, -1)) + self.pos_1LC[:, :end]
        return x_BLC, cond_BD

    # ------------------------------------------------------------------ teacher-forced forward
    def attention_masks(self, end: int, device: torch.device) -> tuple[torch.Tensor | None, Any]:
        """The block-causal mask over the first ``end`` tokens: ``(None, BlockMask)`` for FlexAttention
        (``attn_impl="flex"``, CUDA, no attention dropout), else ``(dense additive mask, None)``."""
        if self.cfg.attn_impl == "flex" and device.type == "cuda":
            if self.cfg.attn_drop > 0 and self.training:
                log.warning(
                    "attn_impl='flex' has no attention dropout: dense mask used (attn_drop=%g)",
                    self.cfg.attn_drop,
                )
            else:
                # lazy: optional dependency; FlexAttention needs torch >= 2.5 and attn_impl='flex'
                from var_lightning.transformer.flex import get_block_mask

                return None, get_block_mask(self, end, device)
        return self.attn_bias_for_masking[:, :, :end, :end], None

    def forward_hidden(
        self, label_B: torch.Tensor, x_BLCv: torch.Tensor, compile: bool | str = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The trunk's output (B, L, C) before ``head_nm`` and the class embedding ``cond_BD`` (B, D).

        ``compile``: run the blocks through ``torch.compile`` (True, or a compile mode such as
        ``"max-autotune-no-cudagraphs"``); the numbers equal the eager ones up to kernel rounding.
        """
        end = self.first_l + x_BLCv.shape[1]
        x_BLC, cond_BD = self.embed_inputs(label_B, x_BLCv, end)
        attn_bias, block_mask = self.attention_masks(end, x_BLC.device)
        trunk = run_blocks if not compile else compiled_run_blocks(None if compile is True else compile)
        return trunk(self.blocks, x_BLC, self.cond(cond_BD), attn_bias, block_mask), cond_BD

    def forward(self, label_B: torch.Tensor, x_BLCv: torch.Tensor) -> torch.Tensor:
        """Logits (B, L, V) float32 for next-scale prediction.

        label_B: (B,) class ids, ``num_classes`` = null class (classifier-free guidance dropout is the
        caller's job). x_BLCv: (B, L - l_1, Cv) teacher-forcing input from the tokenizer; fewer tokens
        (a prefix of scales) give logits for that prefix only.
        """
        h_BLC, cond_BD = self.forward_hidden(label_B, x_BLCv)
        return self.get_logits(h_BLC, cond_BD)

    def num_params(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= (
                self.pos_1LC.numel()
                + self.pos_start.numel()
                + self.class_emb.weight.numel()
                + self.lvl_embed.weight.numel()
            )
        return n
