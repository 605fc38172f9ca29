"""Progressive (coarse-to-fine) training of the VAR transformer, as the published trainer does it.

The published flags are ``pg`` (here ``until``), ``pg0`` (``start_scale``) and ``pgwp`` (``warmup_epochs``).
With ``until > 0`` the trained prefix of the scale schedule grows during the first ``until`` of training:

* **stage** (:func:`stage_at`): the index ``s`` of the newest trained scale at optimizer step ``t`` of ``T``,
  with ``w`` learning-rate warm-up steps. ``s = start_scale`` while ``t <= w``; ``s = K - 1`` (the last
  scale: the whole sequence, as without progressive training) once ``t >= until * T``; in between
  ``s = start_scale + round(p * (K - 1 - start_scale))`` with ``p = (t - w) / (until * T - w)``, Python's
  ``round`` (half to even) as published.
* **forward**: the sequence is truncated to the end of scale ``s`` (the tokens of scales > s are not fed,
  not masked); the block-causal mask makes the prefix's outputs equal the full forward's.
* **loss**: the per-token weight stays ``1 / L`` for the *full* L, as published (so the loss of a prefix is
  smaller than the full loss, by construction); the newest scale's weights are multiplied by a **ramp**
  ``clip(i / (warmup_epochs * steps_per_epoch), 0.01, 1)`` where ``i`` counts the steps since the stage
  began. The first stage has no ramp (the learning-rate warm-up covers it), and neither does the last
  stage, which trains as without progressive training.

Validation and test always run the whole sequence (the model as it will be sampled), so their last-scale
numbers are measurements of the untrained scales, not placeholders; the training metrics that need the last
scale (``loss_last``, ``token_err_last``, per-scale metrics of untrained scales) are not logged until it trains.

:class:`ProgressiveSchedule` holds the counters (steps in the stage, the last stage, whether the first
stage is still running) that make the ramp depend on history; its ``state_dict`` goes into every
checkpoint so a resumed run continues the stage and ramp exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

RAMP_FLOOR = 0.01


def stage_at(
    step: float, warmup_steps: float, total_steps: int, until: float, start_scale: int, num_scales: int
) -> int:
    """The newest trained scale's index at ``step`` (the published rule; see the module docstring)."""
    last = num_scales - 1
    if until <= 0:
        return last
    if step <= warmup_steps:
        return start_scale
    end = total_steps * until
    if step >= end:
        return last
    progress = min(max((step - warmup_steps) / (end - warmup_steps), 0.0), 1.0)
    return start_scale + round(progress * (last - start_scale))


@dataclass
class Stage:
    """What one training step trains: scales ``0..scale`` (``end`` tokens), the newest with weight ``ramp``.
    ``full`` when it is the whole sequence (then the step is an ordinary one)."""

    scale: int
    end: int
    ramp: float
    full: bool


class ProgressiveSchedule:
    """Stage and ramp per optimizer step, with the published trainer's counters.

    until / start_scale: the settings; num_scales and ``begin_ends`` (per-scale token ranges) from the model;
    ``ramp_steps``: the per-stage warm-up in optimizer steps (warmup_epochs x steps per epoch).
    """

    def __init__(
        self, until: float, start_scale: int, begin_ends: list[tuple[int, int]], ramp_steps: float
    ) -> None:
        K = len(begin_ends)
        if until > 0 and not 0 <= start_scale < K:
            raise ValueError(
                f"model.train.progressive.start_scale={start_scale} is not a scale of this schedule "
                f"({K} scales: 0..{K - 1}); choose 0..{K - 1} (key model.train.progressive.start_scale)"
            )
        self.until, self.start_scale, self.begin_ends = float(until), int(start_scale), list(begin_ends)
        self.ramp_steps = max(float(ramp_steps), 1e-12)
        self.steps_in_stage = 0
        self.last_stage = -1
        self.first_stage = True

    @property
    def enabled(self) -> bool:
        return self.until > 0

    def advance(self, step: float, warmup_steps: float, total_steps: int) -> Stage:
        """The stage of the step about to be taken (call once per optimizer step, before its forward)."""
        K = len(self.begin_ends)
        s = stage_at(step, warmup_steps, total_steps, self.until, self.start_scale, K)
        if s != self.last_stage:
            if self.last_stage != -1:
                self.first_stage = False
            self.last_stage, self.steps_in_stage = s, 0
        self.steps_in_stage += 1
        ramp = 1.0 if self.first_stage else max(min(self.steps_in_stage / self.ramp_steps, 1.0), RAMP_FLOOR)
        full = s == K - 1
        return Stage(scale=s, end=self.begin_ends[s][1], ramp=1.0 if full else ramp, full=full)

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps_in_stage": self.steps_in_stage,
            "last_stage": self.last_stage,
            "first_stage": self.first_stage,
        }

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state:
            self.steps_in_stage = int(state["steps_in_stage"])
            self.last_stage = int(state["last_stage"])
            self.first_stage = bool(state["first_stage"])
