"""Our per-step callbacks take no collective (and so no host sync) at every optimizer step: with several
processes the pre-emption flag and the periodic checkpoint's clock are compared every N steps, on the same
steps on every rank; with one process nothing is collective at all. Counted on a stand-in trainer."""

from __future__ import annotations

import signal
from types import SimpleNamespace

import pytest
import torch

from var_lightning.callbacks.periodic_checkpoint import PeriodicCheckpoint
from var_lightning.callbacks.preemption import Preempted, PreemptionCheckpoint


class CountingStrategy:
    """The collectives a callback can call, counted (a 2-rank world where rank 0 decides)."""

    root_device = torch.device("cpu")

    def __init__(self) -> None:
        self.calls: list[str] = []

    def broadcast(self, obj):  # noqa: ANN001, ANN201
        self.calls.append("broadcast")
        return obj

    def reduce(self, t, reduce_op=None):  # noqa: ANN001, ANN201
        self.calls.append("reduce")
        return t


def _trainer(world_size: int, tmp_path) -> SimpleNamespace:  # noqa: ANN001
    saved: list[int] = []
    t = SimpleNamespace(
        world_size=world_size, strategy=CountingStrategy(), global_step=0, sanity_checking=False,
        is_global_zero=True, default_root_dir=str(tmp_path), saved=saved,
        fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=SimpleNamespace(is_last_batch=False))),
    )  # fmt: skip
    t.save_checkpoint = lambda path, weights_only=False: saved.append(t.global_step)
    return t


def _steps(callback, trainer, first: int, last: int) -> None:  # noqa: ANN001
    """Optimizer steps ``first..last`` as Lightning reports them to a callback."""
    for step in range(first, last + 1):
        trainer.global_step = step
        callback.on_train_batch_end(trainer, None, None, None, step - 1)


@pytest.mark.parametrize("world_size", [1, 2])
def test_preemption_compares_flags_every_n_steps_only(tmp_path, world_size):
    cb, trainer = PreemptionCheckpoint(check_every_n_steps=5), _trainer(world_size, tmp_path)
    _steps(cb, trainer, 1, 100)
    assert trainer.strategy.calls == (["reduce"] * 20 if world_size > 1 else [])
    cb.received = int(signal.SIGTERM)  # a signal after step 101: acted on at step 105 (several ranks) or 102
    with pytest.raises(Preempted) as stop:
        _steps(cb, trainer, 102, 110)
    assert stop.value.step == (105 if world_size > 1 else 102) and trainer.saved == [stop.value.step]


@pytest.mark.parametrize("world_size", [1, 2])
def test_periodic_checkpoint_reads_the_clock_without_a_collective_per_step(tmp_path, world_size):
    cb, trainer = PeriodicCheckpoint(minutes=0.0, check_every_n_steps=20), _trainer(world_size, tmp_path)
    _steps(cb, trainer, 1, 100)  # a zero interval: due whenever the clock is looked at
    assert trainer.strategy.calls == (["broadcast"] * 5 if world_size > 1 else [])
    assert trainer.saved == (list(range(20, 101, 20)) if world_size > 1 else list(range(1, 101)))


def test_periodic_checkpoint_on_steps_needs_no_collective(tmp_path):
    cb, trainer = PeriodicCheckpoint(minutes=None, every_n_steps=7), _trainer(2, tmp_path)
    _steps(cb, trainer, 1, 50)
    assert trainer.strategy.calls == [] and trainer.saved == [7, 14, 21, 28, 35, 42, 49]


@pytest.mark.parametrize("cls", [PreemptionCheckpoint, PeriodicCheckpoint])
def test_a_zero_cadence_is_refused_with_its_key(cls):
    with pytest.raises(ValueError, match="check_every_n_steps=0 must be >= 1"):
        cls(check_every_n_steps=0)
