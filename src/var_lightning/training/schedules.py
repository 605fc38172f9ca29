"""Learning-rate and weight-decay schedules of the VAR recipe, as pure functions of the step.

``lr_factor`` multiplies the peak learning rate: a linear warm-up from ``warmup_start`` to 1, then
``lin0`` (the paper's default: flat for the first 5% after warm-up, then linear down to
``final_ratio``), ``lin`` (flat for 15%), ``cos`` (cosine to ``final_ratio``) or ``const``.
``weight_decay_at`` anneals the weight decay from ``wd`` to ``wd_end`` with a cosine over the run.
"""

from __future__ import annotations

import math

SCHEDULES = ("lin0", "lin", "cos", "const")


def lr_factor(
    step: int,
    warmup_steps: int,
    max_steps: int,
    kind: str = "lin0",
    warmup_start: float = 0.005,
    final_ratio: float = 0.01,
) -> float:
    if kind not in SCHEDULES:
        raise ValueError(
            f"unknown lr schedule {kind!r}; choose one of {SCHEDULES} (key model.optim.schedule)"
        )
    if step < warmup_steps:
        return warmup_start + (1 - warmup_start) * step / warmup_steps
    if kind == "const":
        return 1.0
    progress = (step - warmup_steps) / max(max_steps - 1 - warmup_steps, 1)
    progress = min(max(progress, 0.0), 1.0)
    if kind == "cos":
        return final_ratio + (1 - final_ratio) * (0.5 + 0.5 * math.cos(math.pi * progress))
    flat = 0.05 if kind == "lin0" else 0.15
    if progress < flat:
        return 1.0
    return final_ratio + (1 - final_ratio) * (1 - progress) / (1 - flat)


def weight_decay_at(step: int, max_steps: int, wd: float, wd_end: float | None) -> float:
    if wd_end is None or wd_end == wd:
        return wd
    return wd_end + (wd - wd_end) * (0.5 + 0.5 * math.cos(math.pi * step / max(max_steps - 1, 1)))
