"""Read a model configuration off the tensors of a state_dict in the published VAR layout.

The released files carry no configuration, but almost all of it is written in the tensor shapes and key
names. What the tensors cannot tell is taken from the published defaults (norm groups 32, phi ratio 0.5,
dropout 0) or from an argument: the tokenizer's scale schedule (``patch_nums``; its weights do not depend
on it) and, for transformers without L2-normalised attention, the number of heads.

Shapes: K scales, L tokens of all scales, C width, V vocabulary, Cvae codebook dim.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import torch

from var_lightning.tokenizer.config import SCHEDULE_256, VQVAEConfig
from var_lightning.transformer.config import SCHEDULE_512, SCHEDULE_1024, VARConfig
from var_lightning.transformer.masks import level_index

StateDict = Mapping[str, torch.Tensor]


def _require(state_dict: StateDict, keys: Sequence[str], what: str) -> None:
    missing = [k for k in keys if k not in state_dict]
    if missing:
        raise ValueError(
            f"cannot infer the {what} configuration: the state_dict lacks {', '.join(missing)} "
            f"(is it a {what} state_dict in the published VAR layout?)"
        )


def _indices(state_dict: StateDict, pattern: str) -> list[int]:
    """Sorted distinct integers captured by ``pattern`` (one group) over the keys."""
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in state_dict if (m := rx.fullmatch(k))})


def _first(state_dict: StateDict, suffix: str) -> torch.Tensor | None:
    """The tensor of the first block key ending in ``suffix`` (any block: one may be missing)."""
    return next((v for k, v in state_dict.items() if k.startswith("blocks.") and k.endswith(suffix)), None)


def _count(state_dict: StateDict, pattern: str) -> int:
    """1 + the largest index captured by ``pattern`` (gaps are left to the strict key check, which names
    the missing keys)."""
    idx = _indices(state_dict, pattern)
    return idx[-1] + 1 if idx else 0


def infer_vae_config(state_dict: StateDict, patch_nums: Sequence[int] | None = None) -> VQVAEConfig:
    """Tokenizer configuration of a published-layout VQVAE state_dict.

    From the tensors: ``ch`` and input channels (``encoder.conv_in``), ``ch_mult`` (each level's width /
    ch), ``num_res_blocks``, ``vocab_size`` and ``z_channels`` (the codebook), attention presence,
    ``quant_conv_ks`` and the phi sharing mode and count (key names: ``quant_resi.qresi`` = one shared,
    ``quant_resi.qresi_ls.{i}`` = n partially shared, ``quant_resi.{i}`` = one per scale; no phi keys =
    identity phis). ``patch_nums`` defaults to the 256px schedule.
    """
    _require(state_dict, ("encoder.conv_in.weight", "quantize.embedding.weight"), "tokenizer")
    ch, in_channels = (int(s) for s in state_dict["encoder.conv_in.weight"].shape[:2])
    n_levels = _count(state_dict, r"encoder\.down\.(\d+)\..+")
    _require(state_dict, [f"encoder.down.{i}.block.0.conv1.weight" for i in range(n_levels)], "tokenizer")
    if n_levels == 0:
        raise ValueError("cannot infer the tokenizer configuration: no encoder.down.{i}.* keys")
    widths = [int(state_dict[f"encoder.down.{i}.block.0.conv1.weight"].shape[0]) for i in range(n_levels)]
    if any(w % ch for w in widths):
        raise ValueError(
            f"encoder level widths {widths} are not multiples of ch={ch} (encoder.conv_in.weight)"
        )
    num_res_blocks = _count(state_dict, r"encoder\.down\.0\.block\.(\d+)\..+")
    vocab_size, z_channels = (int(s) for s in state_dict["quantize.embedding.weight"].shape)
    qc = state_dict.get("quant_conv.weight")
    quant_conv_ks = int(qc.shape[-1]) if qc is not None else 3

    shared = any(k.startswith("quantize.quant_resi.qresi.") for k in state_dict)
    partial = _count(state_dict, r"quantize\.quant_resi\.qresi_ls\.(\d+)\..+")
    per_scale = _count(state_dict, r"quantize\.quant_resi\.(\d+)\..+")
    if sum(map(bool, (shared, partial, per_scale))) > 1:
        raise ValueError(
            "the state_dict mixes phi layouts (quant_resi.qresi / quant_resi.qresi_ls.{i} / quant_resi.{i})"
        )
    patch_nums = tuple(patch_nums) if patch_nums is not None else SCHEDULE_256
    quant_resi, share, counts = 0.5, 4, 0
    if shared:
        share = 1
    elif partial:
        share = partial
    elif per_scale:
        share, counts = 0, (0 if per_scale == len(patch_nums) else per_scale)
    else:
        quant_resi = 0.0  # identity phis have no parameters
    return VQVAEConfig(
        vocab_size=vocab_size,
        z_channels=z_channels,
        ch=ch,
        ch_mult=tuple(w // ch for w in widths),
        num_res_blocks=num_res_blocks,
        attn_lowest=any(k.startswith(f"encoder.down.{n_levels - 1}.attn.") for k in state_dict),
        attn_mid=any(k.startswith("encoder.mid.attn_1.") for k in state_dict),
        in_channels=in_channels,
        patch_nums=patch_nums,
        quant_conv_ks=quant_conv_ks,
        quant_resi=quant_resi,
        share_quant_resi=share,
        default_qresi_counts=counts,
    )


def patch_nums_from_level_index(lvl_1L: torch.Tensor) -> tuple[int, ...]:
    """The scale schedule a ``lvl_1L`` buffer (1, L) encodes: tokens per level -> side = sqrt(count)."""
    if lvl_1L.is_meta:
        raise ValueError("lvl_1L is on the meta device; its values are needed to read the scale schedule")
    d_L = lvl_1L.reshape(-1).long().cpu()
    if d_L.numel() == 0 or int(d_L.min()) < 0:
        raise ValueError(
            f"lvl_1L must hold level indices 0..K-1, got min {int(d_L.min()) if d_L.numel() else None}"
        )
    counts = torch.bincount(d_L).tolist()
    sides = [math.isqrt(n) for n in counts]
    if any(s * s != n for s, n in zip(sides, counts, strict=True)):
        raise ValueError(f"lvl_1L has per-level token counts {counts}; each must be a square (pn * pn)")
    if not torch.equal(d_L, level_index(tuple(sides)).reshape(-1)):
        raise ValueError(
            "lvl_1L is not ordered coarse to fine (levels must be contiguous and non-decreasing)"
        )
    return tuple(sides)


def _schedule_from_length(L: int, K: int) -> tuple[int, ...]:
    for sched in (SCHEDULE_256, SCHEDULE_512, SCHEDULE_1024):
        if sum(p * p for p in sched) == L and len(sched) == K:
            return sched
    raise ValueError(
        f"cannot infer patch_nums: lvl_1L is missing and L={L} tokens over K={K} levels match no known schedule"
    )


def infer_var_config(state_dict: StateDict, num_heads: int | None = None) -> VARConfig:
    """Transformer configuration of a published-layout VAR state_dict.

    depth = number of blocks, width = ``pos_1LC``'s last dim, heads = ``scale_mul_1H11``'s second dim
    (without L2-normalised attention the weights do not tell: ``num_heads``, default depth as in the
    published build rule), shared AdaLN = ``shared_ada_lin.*`` present, attn_l2_norm = ``scale_mul_1H11``
    present, patch_nums from ``lvl_1L``, num_classes = ``class_emb`` rows - 1, vocab from ``head``, cvae from
    ``word_embed``, mlp ratio from ``ffn.fc1``.
    """
    _require(state_dict, ("pos_1LC", "class_emb.weight", "head.weight", "word_embed.weight"), "transformer")
    C = int(state_dict["pos_1LC"].shape[-1])
    L = int(state_dict["pos_1LC"].shape[1])
    depth = _count(state_dict, r"blocks\.(\d+)\..+")
    if depth == 0:
        raise ValueError("cannot infer the transformer configuration: no blocks.{i}.* keys")
    scale_mul = _first(state_dict, ".attn.scale_mul_1H11")
    attn_l2_norm = scale_mul is not None
    if attn_l2_norm:
        heads = int(scale_mul.shape[1])
        if num_heads is not None and num_heads != heads:
            raise ValueError(f"num_heads={num_heads} disagrees with attn.scale_mul_1H11 ({heads} heads)")
    else:
        heads = num_heads if num_heads is not None else depth
        if C % heads:
            raise ValueError(
                f"width {C} is not divisible by {heads} heads: without attn_l2_norm the heads are not stored; "
                "pass num_heads"
            )
    fc1 = _first(state_dict, ".ffn.fc1.weight")
    hidden = int(fc1.shape[0]) if fc1 is not None else 4 * C
    if "lvl_1L" in state_dict:
        patch_nums = patch_nums_from_level_index(state_dict["lvl_1L"])
    else:
        K = int(state_dict["lvl_embed.weight"].shape[0]) if "lvl_embed.weight" in state_dict else -1
        patch_nums = _schedule_from_length(L, K)
    return VARConfig(
        depth=depth,
        width=C,
        num_heads=heads,
        mlp_ratio=4.0 if hidden == 4 * C else hidden / C,
        shared_aln="shared_ada_lin.1.weight" in state_dict,
        attn_l2_norm=attn_l2_norm,
        num_classes=int(state_dict["class_emb.weight"].shape[0]) - 1,
        vocab_size=int(state_dict["head.weight"].shape[0]),
        cvae=int(state_dict["word_embed.weight"].shape[1]),
        patch_nums=patch_nums,
    )
