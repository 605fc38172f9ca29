"""Cross-entropy through the output head, chunk by chunk, without the (B, L, V) float32 logits.

At d16, batch 64, the logits are 64 x 680 x 4096 floats (0.7 GB), and autograd keeps them, their softmax
and their gradient alive at the same time. Here the head (``head_nm`` then ``head``) is applied to
``chunk_tokens`` rows at a time: the forward keeps only the per-token loss and error, and the backward
recomputes each chunk's logits (one extra head matmul, ~1.5% of a d16 step) and back-propagates through
them before moving to the next chunk. Per-token results are returned, so every metric the plain loss
logs (per-scale means, last-scale values) is computed from them exactly as before.

The arithmetic per chunk is the plain path's (``F.linear`` under the caller's autocast, then ``.float()``
and ``F.cross_entropy``), so losses and token errors equal the plain ones; the weight gradient is a sum
over chunks, which differs from one big matmul only by float summation order.

Shapes: B batch, L tokens, N = B * L rows, C width, D condition width, V vocabulary.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """(z_NC, weight_VC, bias_V, target_N) -> (loss_N, wrong_N) with logits never held for all N rows."""

    @staticmethod
    def forward(
        ctx: Any,
        z_NC: torch.Tensor,
        weight_VC: torch.Tensor,
        bias_V: torch.Tensor | None,
        target_N: torch.Tensor,
        label_smoothing: float,
        chunk: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        N = z_NC.shape[0]
        loss_N = z_NC.new_empty(N, dtype=torch.float32)
        wrong_N = torch.empty(N, dtype=torch.bool, device=z_NC.device)
        for a in range(0, N, chunk):
            b = min(a + chunk, N)
            logits_nV = F.linear(z_NC[a:b], weight_VC, bias_V).float()
            loss_N[a:b] = F.cross_entropy(
                logits_nV, target_N[a:b], reduction="none", label_smoothing=label_smoothing
            )
            wrong_N[a:b] = logits_nV.argmax(dim=-1) != target_N[a:b]
        device_type = z_NC.device.type
        ctx.amp = (device_type, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))
        ctx.label_smoothing, ctx.chunk = label_smoothing, chunk
        ctx.save_for_backward(z_NC, weight_VC, bias_V, target_N)
        ctx.mark_non_differentiable(wrong_N)
        return loss_N, wrong_N

    @staticmethod
    def backward(ctx: Any, grad_loss_N: torch.Tensor, _grad_wrong: Any) -> tuple[torch.Tensor | None, ...]:
        z_NC, weight_VC, bias_V, target_N = ctx.saved_tensors
        need_z, need_w, need_b = ctx.needs_input_grad[:3]
        w_leaf = weight_VC.detach().requires_grad_(need_w)
        b_leaf = None if bias_V is None else bias_V.detach().requires_grad_(need_b)
        grad_z = torch.empty_like(z_NC) if need_z else None
        grad_w = torch.zeros_like(weight_VC) if need_w else None
        grad_b = torch.zeros_like(bias_V) if need_b and bias_V is not None else None
        device_type, amp_enabled, amp_dtype = ctx.amp
        N = z_NC.shape[0]
        # the backward runs on autograd's thread: re-enter the forward's autocast state
        with torch.enable_grad(), torch.autocast(device_type, dtype=amp_dtype, enabled=amp_enabled):
            for a in range(0, N, ctx.chunk):
                b = min(a + ctx.chunk, N)
                z_nC = z_NC[a:b].detach().requires_grad_(need_z)
                logits_nV = F.linear(z_nC, w_leaf, b_leaf).float()
                loss_n = F.cross_entropy(
                    logits_nV, target_N[a:b], reduction="none", label_smoothing=ctx.label_smoothing
                )
                inputs = [
                    t
                    for t, need in ((z_nC, need_z), (w_leaf, need_w), (b_leaf, need_b))
                    if need and t is not None
                ]
                grads = iter(torch.autograd.grad(loss_n, inputs, grad_loss_N[a:b]))
                if need_z:
                    grad_z[a:b] = next(grads)
                if need_w:
                    grad_w += next(grads)
                if grad_b is not None:
                    grad_b += next(grads)
        return grad_z, grad_w, grad_b, None, None, None


def chunked_head_cross_entropy(
    h_BLC: torch.Tensor,
    cond_BD: torch.Tensor,
    head_nm: nn.Module,
    head: nn.Linear,
    target_BL: torch.Tensor,
    label_smoothing: float = 0.0,
    chunk_tokens: int = 8192,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token cross-entropy (B, L) float32 and token error (B, L) in {0., 1.} (argmax != target) of
    ``head(head_nm(h, cond))``, equal to computing them from :meth:`VAR.get_logits`.

    h_BLC: the trunk's output (:meth:`VAR.forward_hidden`); cond_BD: the class embedding; chunk_tokens:
    rows per chunk (memory ~ chunk_tokens x V x 4 bytes a few times over).
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens={chunk_tokens} must be >= 1 (key model.train.ce_chunk_tokens)")
    B, L, C = h_BLC.shape
    z_BLC = head_nm(h_BLC.float(), cond_BD).to(head.weight.dtype)  # fp32, or bf16 for a bf16-true model
    loss_N, wrong_N = _ChunkedLinearCrossEntropy.apply(
        z_BLC.reshape(B * L, C),
        head.weight,
        head.bias,
        target_BL.reshape(B * L),
        label_smoothing,
        chunk_tokens,
    )
    return loss_N.view(B, L), wrong_N.view(B, L).float()
