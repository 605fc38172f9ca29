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
    cfg = compose_train(
        [f"experiment={name}", "model.tokenizer_ckpt=/nonexistent.ckpt"]
        if name.startswith("var")
        else [f"experiment={name}"],
        tmp_path,
    )
    assert cfg.task_name == name
    assert cfg.model._target_.startswith("var_lightning.training.")
    assert list(cfg.schedule.patch_nums) == sorted(cfg.schedule.patch_nums)


@pytest.mark.parametrize("debug", ["fdr", "overfit", "limit", "profiler"])
def test_debug_configs_compose(debug, tmp_path):
    cfg = compose_train(["experiment=tokenizer_tiny", f"debug={debug}"], tmp_path)
    assert cfg.task_name == "debug"


RELEASED_TOKENIZER = dict(vocab_size=4096, z_channels=32, ch=160, share_quant_resi=4)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_instantiates(name, tmp_path):
    """Data, model (on the meta device for the published sizes), callbacks, loggers and trainer build."""
    import torch
    from hydra.utils import instantiate

    from var_lightning.cli.common import instantiate_callbacks, instantiate_loggers

    overrides = [f"experiment={name}"]
    if name.startswith("tokenizer"):
        overrides.append("++model.loss.perceptual_random_backbone=true")
    cfg = compose_train(overrides, tmp_path)
    dm = instantiate(cfg.data)
    assert dm.image_size > 0
    patch_nums = list(cfg.schedule.patch_nums)
    if name.startswith("tokenizer"):
        model = instantiate(cfg.model, patch_nums=patch_nums, _convert_="all")
        assert model.vae.cfg.image_size == cfg.data.image_size
    else:
        tok = {**RELEASED_TOKENIZER, "patch_nums": patch_nums}
        if name in TINY or name.startswith("scaling"):
            tok = dict(
                vocab_size=256,
                z_channels=16,
                ch=32,
                ch_mult=[1, 2, 2],
                num_res_blocks=1,
                norm_groups=8,
                patch_nums=patch_nums,
            )
        with torch.device("meta"):
            model = instantiate(
                cfg.model, tokenizer_ckpt=None, tokenizer=tok, patch_nums=patch_nums, _convert_="all"
            )
        assert model.var.cfg.num_classes == (10 if name in TINY or name.startswith("scaling") else 1000)
        assert model.vae.cfg.image_size == cfg.data.image_size
    callbacks = instantiate_callbacks(cfg.callbacks)
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer_cfg = dict(cfg.trainer)
    if not torch.cuda.is_available():  # GPU/multi-node recipes: check the rest of the trainer config on CPU
        trainer_cfg.update(accelerator="cpu", devices=1, num_nodes=1, strategy="auto", precision="32-true")
    trainer = instantiate(trainer_cfg, callbacks=callbacks, logger=loggers or False)
    assert trainer.max_epochs == cfg.trainer.max_epochs


def test_entry_points_find_their_configs_from_any_directory(tmp_path):
    """Console scripts resolve the packaged configs, not files relative to the working directory."""
    import shutil
    import subprocess
    import sys

    exe = shutil.which("var-train") or str(Path(sys.executable).parent / "var-train")
    out = subprocess.run(
        [exe, "experiment=var_tiny", "model.tokenizer_ckpt=x.ckpt", "--cfg", "job"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "task_name: var_tiny" in out.stdout


@pytest.mark.parametrize("sweep", ["scaling_cpu", "scaling_paper"])
def test_sweeps_compose_as_multiruns_over_depth(sweep, tmp_path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=["experiment=scaling_tiny", f"sweep={sweep}", "model.tokenizer_ckpt=x.ckpt"],
            return_hydra_config=True,
        )
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    depths = [int(d) for d in str(cfg.hydra.sweeper.params["model.transformer.depth"]).split(",")]
    assert len(depths) >= 4 and depths == sorted(depths)
