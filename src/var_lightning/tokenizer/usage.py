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


# a scale whose tokens span fewer effective codes than this carries (almost) no information
COLLAPSE_PERPLEXITY = 1.5
# a last scale that uses less than this fraction of the codebook wastes it (dead codes)
DEAD_CODEBOOK_USAGE = 0.05


def codebook_alarms(hits_KV: torch.Tensor, patch_nums: tuple[int, ...] | list[int]) -> list[str]:
    """Health warnings from a window's per-scale hit counts (K, V), each with its likely cause and fix:

    * a scale *collapsed*: its codes' perplexity is below ``COLLAPSE_PERPLEXITY`` although it saw enough
      tokens to use more (at least 8), i.e. nearly every image maps to one code there, so the coarse scales
      carry no content and the transformer's first steps learn nothing. The 1x1 scale is exempt: it is one
      global token, and on homogeneous data (the built-in shapes) a single code there is correct;
    * a *dead codebook*: the last scale hits less than ``DEAD_CODEBOOK_USAGE`` of the vocabulary.
    """
    hits_KV = hits_KV.detach().to("cpu", torch.float64)
    total_K = hits_KV.sum(dim=1)
    p_KV = hits_KV / total_K.clamp_min(1e-12)[:, None]
    perplexity_K = (-(p_KV * torch.log(p_KV.clamp_min(1e-30))).sum(dim=1)).exp()
    out = []
    # the 1x1 scale is one global token (the mean colour): on homogeneous data one code is right, not a collapse
    collapsed = [f"{pn}x{pn} (perplexity {float(perplexity_K[k]):.2f})" for k, pn in enumerate(patch_nums)
                 if pn > 1 and total_K[k] >= 8 and perplexity_K[k] < COLLAPSE_PERPLEXITY]  # fmt: skip
    if collapsed:
        out.append(
            f"codebook collapse at scale(s) {', '.join(collapsed)}: nearly every image gets the same code there, so "
            "those scales carry no content. Usual causes: a learning rate too high early on, a commitment weight "
            "(model.tokenizer.beta) too large, or too few training steps so far; watch val/perplexity_s* rise"
        )
    usage_last = float((hits_KV[-1] > 0).double().mean())
    if total_K[-1] >= hits_KV.shape[1] and usage_last < DEAD_CODEBOOK_USAGE:
        out.append(
            f"dead codebook: the last scale uses {100 * usage_last:.1f}% of the {hits_KV.shape[1]} codes. A smaller "
            "vocabulary (model.tokenizer.vocab_size) or a lower quantizer dimension helps; usage usually rises "
            "during the first epochs"
        )
    return out
