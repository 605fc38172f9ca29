"""AdamW parameter groups: no weight decay on biases, norms, position/level embeddings, attention
temperatures and AdaLN gammas (the VAR recipe)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

NO_DECAY_NAME_PARTS = ("pos_start", "pos_1LC", "lvl_embed", "scale_mul", "ada_gss", "gamma", "beta")


def no_decay(name: str, param: torch.Tensor) -> bool:
    return param.ndim <= 1 or name.endswith("bias") or any(part in name for part in NO_DECAY_NAME_PARTS)


def decayed_names(named: Iterable[tuple[str, nn.Parameter]]) -> frozenset[str]:
    """Names of the parameters that get weight decay, decided on the plain (unwrapped) model.

    Taken once before any wrapping: a sharding wrapper may hand the optimizer flattened 1-D shards (FSDP1), on
    which the ``ndim`` rule would put every parameter in the no-decay group."""
    return frozenset(name for name, p in named if not no_decay(name, p))


def param_groups(
    named: Iterable[tuple[str, nn.Parameter]], weight_decay: float, decayed: frozenset[str] | None = None
) -> list[dict]:
    """Two groups (decay / no decay) over the trainable parameters; group names are kept for logging.

    ``decayed``: the names from :func:`decayed_names` of the unwrapped model (None: decide from ``named``)."""
    named = list(named)
    if decayed is None:
        decayed = decayed_names(named)
    decay, skip = [], []
    for name, p in named:
        if not p.requires_grad:
            continue
        (decay if name in decayed else skip).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "decay"}]
    if skip:
        groups.append({"params": skip, "weight_decay": 0.0, "name": "no_decay"})
    return groups


def adamw(
    groups: list[dict], lr: float, betas: tuple[float, float], fused: bool | None = None
) -> torch.optim.AdamW:
    """AdamW, fused on CUDA when available (``fused=None`` picks it automatically)."""
    if fused is None:
        fused = all(p.is_cuda for g in groups for p in g["params"]) and torch.cuda.is_available()
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=fused or None)
