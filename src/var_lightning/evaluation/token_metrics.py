"""Test loss and token error rate of a VAR over a dataset: the numbers the scaling-law study fits.

``loss`` is the token cross-entropy in nats averaged over all L tokens of all scales (``loss_avg`` is the
same number under the name ``var-scaling`` reads), ``loss_last`` over the last scale's tokens;
``token_err_*`` the top-1 error rate likewise; ``scale/loss_s<k>``, ``scale/acc_s<k>`` per scale. Labels are
never dropped (no classifier-free-guidance dropout outside training). Every scale has a fixed number of
tokens per image, so batch means weighted by batch size and summed over ranks are exact means.

Shapes: B batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import torch

from var_lightning.distributed import all_reduce_sum

LossFn = Callable[[tuple[torch.Tensor, torch.Tensor]], dict[str, torch.Tensor]]


def accumulate_token_metrics(
    losses: LossFn,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    limit_batches: int | None = None,
    autocast: Callable[[], Any] = contextlib.nullcontext,
    prefix: str = "test",
) -> dict[str, float]:
    """Run ``losses((img, label))`` (a VARModule's per-batch means: loss, loss_last, token_err_avg,
    token_err_last, scale/...) over ``batches`` and return exact means over all images of all ranks,
    keyed ``<prefix>/<name>``; ``<prefix>/num_images`` says how many were seen."""
    names: list[str] | None = None
    sums: torch.Tensor | None = None
    with torch.no_grad():
        for i, (img_B3HW, label_B) in enumerate(batches):
            if limit_batches is not None and i >= limit_batches:
                break
            with autocast():
                out = losses((img_B3HW.to(device), torch.as_tensor(label_B).to(device)))
            if names is None:
                names = sorted(out)
                sums = torch.zeros(len(names) + 1, dtype=torch.float64, device=device)
            B = img_B3HW.shape[0]
            values = torch.stack([out[k].detach().double() for k in names])
            sums[:-1] += values * B
            sums[-1] += B
    if names is None:
        raise ValueError("no batches to evaluate: the split is empty (or limit_batches=0)")
    all_reduce_sum(sums)
    total = sums[-1].item()
    metrics = {f"{prefix}/{k}": (sums[j] / total).item() for j, k in enumerate(names)}
    metrics[f"{prefix}/loss_avg"] = metrics[f"{prefix}/loss"]
    metrics[f"{prefix}/num_images"] = int(total)
    return metrics
