"""Trained models shared by the integration tests, built once per test run (session scope): a fixture
imported into several modules re-ran once per module."""

from __future__ import annotations

from pathlib import Path

import pytest

from var_lightning.cli.train import train


@pytest.fixture(scope="session")
def tokenizer_ckpt(tmp_path_factory) -> Path:
    """The tiny tokenizer (tokenizer_tiny, 2 epochs) of the training tests, trackers, LoRA and sharing."""
    from tests.integration.test_training import tokenizer_cfg

    tmp = tmp_path_factory.mktemp("tok")
    cfg = tokenizer_cfg(tmp, "trainer.max_epochs=2", "logger=none")
    train(cfg)
    ckpt = tmp / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    return ckpt


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory) -> Path:
    """The micro tokenizer (cpu_micro schedule, 8 px) of the sharded, launcher and multi-rank tests."""
    from tests.integration.test_configs import compose_train
    from tests.integration.test_sharded import DATA

    out = tmp_path_factory.mktemp("tokenizer")
    cfg = compose_train(
        ["experiment=tokenizer_tiny", "schedule=cpu_micro", "model.tokenizer.ch=16", "model.tokenizer.vocab_size=64",
         "model.tokenizer.z_channels=8", "model.tokenizer.norm_groups=8", "model.tokenizer.ch_mult=[1,2]",
         "model.loss.disc_start=2", "model.loss.disc_ch=8", "model.loss.disc_layers=1", "trainer.max_epochs=1",
         "logger=none", "~callbacks.image_logger", "~callbacks.progress_bar", "data.batch_size=8", *DATA],
        out,
    )  # fmt: skip
    train(cfg)
    return out / "checkpoints" / "last.ckpt"
