"""Learning-rate and weight-decay schedules of the VAR recipe, as pure functions of the step.

``lr_factor`` multiplies the peak learning rate: a linear warm-up from ``warmup_start`` to 1, then
``lin0`` (the paper's default: flat for the first 5% after warm-up, then linear down to
``final_ratio``), ``lin`` (flat for 15%), ``cos`` (cosine to ``final_ratio``), ``const``, or ``lin<T>``
(the published trainer's schedule with progressive training until T; see :func:`check_schedule`).
``weight_decay_at`` anneals the weight decay from ``wd`` to ``wd_end`` with a cosine over the run.
"""

from __future__ import annotations

import logging
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
    check_schedule(kind)
    if step < warmup_steps:
        return warmup_start + (1 - warmup_start) * step / warmup_steps
    if kind == "const":
        return 1.0
    progress = (step - warmup_steps) / max(max_steps - 1 - warmup_steps, 1)
    progress = min(max(progress, 0.0), 1.0)
    if kind == "cos":
        return final_ratio + (1 - final_ratio) * (0.5 + 0.5 * math.cos(math.pi * progress))
    if kind not in SCHEDULES:  # lin<T>: what the published trainer uses with progressive training (T = until)
        T = float(kind[3:])
        mid = (1 + final_ratio + (1 - final_ratio) * (1 - T)) / 2
        if progress < T:
            return 1 + (mid - 1) * progress / T
        return final_ratio + (mid - final_ratio) * (1 - progress) / (1 - T)
    flat = 0.05 if kind == "lin0" else 0.15
    if progress < flat:
        return 1.0
    return final_ratio + (1 - final_ratio) * (1 - progress) / (1 - flat)


def check_schedule(kind: str, key: str = "model.optim.schedule") -> None:
    """Accept the named schedules and ``lin<T>`` with 0 < T < 1 (e.g. ``lin0.8``: linear from 1 to half-way
    down over the first T after warm-up, then linear to ``final_ratio``; the published trainer's schedule
    with progressive training until T)."""
    if kind in SCHEDULES:
        return
    try:
        T = float(kind[3:]) if kind.startswith("lin") else None
    except ValueError:
        T = None
    if T is None or not 0 < T < 1:
        raise ValueError(
            f"{key}={kind!r}: unknown lr schedule; choose one of {', '.join(SCHEDULES)} or lin<T> with 0 < T < 1 "
            f"(e.g. lin0.8) (key {key})"
        )


def weight_decay_at(step: int, max_steps: int, wd: float, wd_end: float | None) -> float:
    if wd_end is None or wd_end == wd:
        return wd
    return wd_end + (wd - wd_end) * (0.5 + 0.5 * math.cos(math.pi * step / max(max_steps - 1, 1)))


class SchedulePlan:
    """Learning-rate and weight-decay schedules that survive a resume which changed the run's length.

    The schedules are functions of a *plan step* on the original plan of ``total`` optimizer steps. A fresh
    run's plan step is its step. Checkpoints record (step, plan step, total, warm-up); a resumed run whose
    length changed (a new ``max_epochs``, more data) maps its remaining steps linearly onto the plan's
    remaining steps, so the learning rate and weight decay stay continuous at the resume and still reach
    their final values at the new end (instead of jumping to where the new length would put them)."""

    def __init__(self) -> None:
        self.total: int = 1  # steps of the original plan (the schedules' formulas use this)
        self.warmup: int = 0
        self.warmup_exact: float = 0.0  # unrounded (warmup_fraction x steps): the progressive stages use it
        self.max_steps: int = 1  # this run's
        self._resumed: tuple[int, float] | None = None  # (step, plan step) at the resume
        self._loaded: dict | None = None

    def plan(self, max_steps: int, warmup: int, warmup_exact: float | None = None) -> tuple[int, int]:
        """(total, warmup) the schedules use; call from ``configure_optimizers`` with this run's numbers.
        ``warmup_exact``: the unrounded warm-up (the published trainer rounds it for the lr only)."""
        self.max_steps = max(int(max_steps), 1)
        if self._loaded is None:
            self.total, self.warmup, self._resumed = self.max_steps, int(warmup), None
            self.warmup_exact = float(warmup if warmup_exact is None else warmup_exact)
            return self.total, self.warmup
        m = self._loaded
        self.total, self.warmup = int(m["total_steps"]), int(m["warmup_steps"])
        self.warmup_exact = float(m.get("warmup_exact", self.warmup))
        step, plan_step = int(m["step"]), float(m["plan_step"])
        self._resumed = (step, plan_step)
        if self.max_steps != self.total or plan_step != step:
            logging.getLogger(__name__).warning(
                "resumed at step %d of a run planned for %d optimizer steps; it now has %d (max_epochs, max_steps "
                "or the data size changed): the learning-rate and weight-decay schedules continue from their "
                "current values (plan step %.0f) and reach their final values at the new end",
                step, self.total, self.max_steps, plan_step,
            )  # fmt: skip
        return self.total, self.warmup

    def step(self, step: float) -> float:
        """The plan step of this run's ``step``."""
        if self._resumed is None:
            return float(step)
        s0, p0 = self._resumed
        if step <= s0:
            return max(p0 - (s0 - step), 0.0)  # before the resume point (only a scheduler's init asks)
        return p0 + (step - s0) * max(self.total - 1 - p0, 0.0) / max(self.max_steps - 1 - s0, 1)

    def state(self, global_step: int) -> dict[str, float | int]:
        return {"total_steps": self.total, "warmup_steps": self.warmup, "warmup_exact": self.warmup_exact,
                "step": int(global_step), "plan_step": self.step(global_step)}  # fmt: skip

    def load(self, meta: dict | None) -> None:
        if meta and {"total_steps", "warmup_steps", "step", "plan_step"} <= set(meta):
            self._loaded = dict(meta)
