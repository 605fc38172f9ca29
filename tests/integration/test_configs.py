"""Every shipped config composes and instantiates (data, model, trainer, callbacks, loggers)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

import var_lightning

CONF = Path(var_lightning.__file__).parent / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
TINY = {"tokenizer_tiny", "var_tiny"}


def compose_train(overrides: list[str], tmp_path: Path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=False)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
        cfg.paths.log_dir = str(tmp_path)
    return cfg


def test_configs_are_shipped_inside_the_package():
    assert (CONF / "train.yaml").is_file() and (CONF / "sample.yaml").is_file()
    assert {"tokenizer_tiny", "tokenizer_imagenet256", "var_tiny"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes(name, tmp_path):
    cfg = compose_train([f"experiment={name}", "model.tokenizer_ckpt=/nonexistent.ckpt"] if name.startswith("var") else [f"experiment={name}"], tmp_path)
    assert cfg.task_name == name
    assert cfg.model._target_.startswith("var_lightning.training.")
    assert list(cfg.schedule.patch_nums) == sorted(cfg.schedule.patch_nums)


@pytest.mark.parametrize("debug", ["fdr", "overfit", "limit", "profiler"])
def test_debug_configs_compose(debug, tmp_path):
    cfg = compose_train(["experiment=tokenizer_tiny", f"debug={debug}"], tmp_path)
    assert cfg.task_name == "debug"
