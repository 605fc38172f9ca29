"""What a user sees during a run and what a crash or a relaunch cannot take: log-line progress when the output
is not a terminal, a time-based checkpoint, no silent restart beside an earlier run's checkpoints, and a
resumed run whose length changed continuing its learning-rate schedule."""

from __future__ import annotations

import logging
import math
import re

import pytest
import pytorch_lightning as L
import torch
from omegaconf import open_dict

from tests.integration.test_configs import compose_train
from tests.unit.test_resume import KillAt, Preempted
from var_lightning.callbacks.progress import LogProgress, progress_bar

TINY = [
    "experiment=tokenizer_tiny",
    "schedule=cpu_micro",
    "model.tokenizer.ch=16",
    "model.tokenizer.vocab_size=64",
    "model.tokenizer.z_channels=8",
    "model.tokenizer.norm_groups=8",
    "model.tokenizer.ch_mult=[1,2]",
    "model.loss.disc_start=100",
    "model.optim.warmup_steps=0",
    "~callbacks.image_logger",
    "logger=none",
]
TINY_DATA = ["data.train_size=32", "data.val_size=8", "data.batch_size=8"]


def cfg_for(run_dir, *extra, data=TINY_DATA):
    cfg = compose_train([*TINY, *data, *extra], run_dir)
    with open_dict(cfg):
        cfg.trainer.num_sanity_val_steps = 0
    return cfg


def test_progress_is_log_lines_when_the_output_is_not_a_terminal(tmp_path, caplog):
    from var_lightning.cli.train import train

    assert isinstance(progress_bar(), LogProgress)  # pytest captures stdout: not a terminal
    assert not isinstance(progress_bar(terminal=True), LogProgress)
    with caplog.at_level(logging.INFO, logger="var_lightning.progress"):
        train(cfg_for(tmp_path, "trainer.max_epochs=2", "callbacks.progress_bar.every_n_steps=2"))
    lines = [r.getMessage() for r in caplog.records if r.name == "var_lightning.progress"]
    steps = [ln for ln in lines if ln.startswith("epoch")]
    assert steps and all(re.fullmatch(r"epoch \d/2 \| step \d+/8 \| loss \d+\.\d{4} \| [\d.]+ img/s \| ETA \d+:\d\d:\d\d", ln)
                         for ln in steps), steps  # fmt: skip
    assert [int(re.search(r"step (\d+)", ln).group(1)) for ln in steps] == [2, 4, 6, 8]
    assert any(ln.startswith("validation after step 4: ") and "val/rec_l1" in ln for ln in lines)
    assert lines[-1].startswith("training done: step 8")
    with pytest.raises(ValueError, match="every_n_steps=0"):
        LogProgress(every_n_steps=0)


def test_a_time_based_checkpoint_is_written_during_training(tmp_path):
    from var_lightning.cli.train import train

    # the tokenizer stage trains with manual optimisation, which Lightning's own time-based checkpoint
    # ignores; minutes=0 saves at every step, so the file holds the run's last step
    train(cfg_for(tmp_path, "trainer.max_epochs=1", "callbacks.periodic_checkpoint.minutes=0"))
    periodic = torch.load(tmp_path / "checkpoints" / "periodic.ckpt", weights_only=True)
    assert periodic["global_step"] == 4 and "optimizer_states" in periodic
    steps = tmp_path / "steps"
    train(cfg_for(steps, "trainer.max_epochs=1", "callbacks.periodic_checkpoint.minutes=null",
                  "callbacks.periodic_checkpoint.every_n_steps=3"))  # fmt: skip
    assert torch.load(steps / "checkpoints" / "periodic.ckpt", weights_only=True)["global_step"] == 3


def test_a_second_launch_into_a_run_directory_does_not_silently_start_over(tmp_path):
    from var_lightning.cli.train import train

    train(cfg_for(tmp_path, "trainer.max_epochs=1"))
    with pytest.raises(ValueError) as err:
        train(cfg_for(tmp_path, "trainer.max_epochs=1"))
    msg = str(err.value)
    assert str(tmp_path) in msg and "last.ckpt" in msg and "resume=auto" in msg and "overwrite=true" in msg
    train(cfg_for(tmp_path, "trainer.max_epochs=2", "resume=auto"))  # continues: epoch 2 only
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 8
    train(cfg_for(tmp_path, "trainer.max_epochs=1", "overwrite=true"))  # on purpose: from scratch
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4


class LrRecorder(L.Callback):
    def __init__(self) -> None:
        self.lr: dict[int, float] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lr[trainer.global_step] = trainer.optimizers[0].param_groups[0]["lr"]


def test_a_resumed_run_with_more_epochs_continues_the_learning_rate(tmp_path, caplog):
    from var_lightning.cli import train as train_mod

    original_build = train_mod.build
    recorders = []

    def build_with(*extra_callbacks):
        def build(c):
            dm, model, trainer = original_build(c)
            rec = LrRecorder()
            recorders.append(rec)
            trainer.callbacks.extend([rec, *extra_callbacks])
            return dm, model, trainer

        return build

    common = ["model.optim.schedule=cos", "model.optim.final_ratio=0.1"]
    train_mod.build = build_with(KillAt(step=3, path=tmp_path / "checkpoints" / "preempt.ckpt"))
    try:
        with pytest.raises(Preempted):
            train_mod.train(cfg_for(tmp_path, "trainer.max_epochs=2", *common))  # 8 steps planned
        train_mod.build = build_with()
        with caplog.at_level(logging.WARNING):
            train_mod.train(cfg_for(tmp_path, "trainer.max_epochs=4", "resume=auto", *common))  # now 16
    finally:
        train_mod.build = original_build
    first, second = recorders
    assert "planned for 8 optimizer steps; it now has 16" in caplog.text
    lr = {**first.lr, **second.lr}
    peak = first.lr[0]
    steps = sorted(lr)
    assert steps == list(range(16))
    # the cosine continues from where the interrupted run was: no jump at the resume (step 3) ...
    assert abs(lr[3] - lr[2]) < 2 * abs(lr[2] - lr[1])
    # ... at step 3 the rate is the interrupted plan's own value there, not a restarted 16-step cosine's ...
    cos = lambda s, n: 0.1 + 0.9 * (0.5 + 0.5 * math.cos(math.pi * s / (n - 1)))  # noqa: E731
    assert lr[3] == pytest.approx(peak * cos(3, 8)) and abs(lr[3] - peak * cos(3, 16)) > 0.2 * peak
    # ... it keeps falling and reaches the final ratio at the new end
    assert all(lr[s + 1] <= lr[s] for s in range(3, 15)) and lr[15] == pytest.approx(0.1 * peak, rel=1e-6)
