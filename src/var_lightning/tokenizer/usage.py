"""Codebook usage statistics per scale: fraction of codes used and perplexity.

Hit counts are accumulated locally and summed over ranks only when read, through the guarded
all-reduce (a no-op without a process group), so the numbers are the same in one process and under DDP.
Shapes: K scales, V codebook size.
"""

from __future__ import annotations

import torch

from var_lightning.distributed import all_reduce_sum


class CodebookUsage:
    """Accumulates per-scale code hit counts (K, V) over a window (an epoch, a validation run)."""

    def __init__(self, num_scales: int, vocab_size: int) -> None:
        self.num_scales, self.vocab_size = num_scales, vocab_size
        self.hits_KV = torch.zeros(num_scales, vocab_size, dtype=torch.float64)

    def reset(self) -> None:
        self.hits_KV.zero_()

    def update(self, hits_KV: torch.Tensor) -> None:
        """Add already rank-summed or local hit counts of one batch."""
        self.hits_KV += hits_KV.detach().to(device="cpu", dtype=torch.float64)

    def compute(self, sync: bool = False, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """``usage`` (K,) fraction of codes hit at least once and ``perplexity`` (K,) = exp(entropy) of
        the hit distribution (V when uniform, 1 when a single code is used). ``sync`` sums over ranks first."""
        hits_KV = self.hits_KV.to(device)
        if sync:
            hits_KV = all_reduce_sum(hits_KV.clone())
        total_K1 = hits_KV.sum(dim=1, keepdim=True).clamp_min(1e-12)
        p_KV = hits_KV / total_K1
        entropy_K = -(p_KV * torch.log(p_KV.clamp_min(1e-30))).sum(dim=1)
        return {"usage": (hits_KV > 0).double().mean(dim=1).cpu(), "perplexity": entropy_K.exp().cpu()}
