"""Tiny models shared by tests (fast on 2 CPU cores)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

import var_lightning
from var_lightning.tokenizer.autoencoder import MultiScaleVQVAE
from var_lightning.tokenizer.config import VQVAEConfig
from var_lightning.transformer.config import VARConfig
from var_lightning.transformer.var import VAR

CONF = Path(var_lightning.__file__).parent / "conf"
TINY_PN = (1, 2, 3, 4)


def compose_config(
    name: str,
    overrides: Sequence[str] = (),
    run_dir: str | Path | None = None,
    hydra: bool = False,
    **paths: Path,
) -> DictConfig:
    """The one way tests compose a shipped config (``train``, ``sample``, ``eval`` ...) with overrides, as the
    command would. ``run_dir``: the run's output and log directory (what Hydra's run dir gives a command);
    ``paths``: other ``paths.*`` to point at test folders (``data_dir=``, ``cache_dir=``); ``hydra``: keep
    the ``hydra`` node (launchers, sweeps). The ``compose`` fixture in conftest.py returns this function."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=name, overrides=list(overrides), return_hydra_config=hydra)
    if run_dir is not None or paths:
        with open_dict(cfg):
            if run_dir is not None:
                cfg.paths.output_dir = cfg.paths.log_dir = str(run_dir)
            for key, value in paths.items():
                cfg.paths[key] = str(value)
    return cfg


def tiny_vae_cfg(**kw) -> VQVAEConfig:
    base = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, vocab_size=64, z_channels=8, patch_nums=TINY_PN)
    base.update(kw)
    return VQVAEConfig(**base)


def tiny_vae(**kw) -> MultiScaleVQVAE:
    return MultiScaleVQVAE(tiny_vae_cfg(**kw))


def tiny_var_cfg(**kw) -> VARConfig:
    base = dict(
        depth=2,
        width=64,
        num_heads=2,
        num_classes=5,
        vocab_size=64,
        cvae=8,
        patch_nums=TINY_PN,
        drop_path_rate=0.0,
        init_adaln_gamma=0.5,
    )
    base.update(kw)
    return VARConfig(**base)


def tiny_var(**kw) -> VAR:
    return VAR(tiny_var_cfg(**kw))


def run_command(config_name: str, args: list[str], cwd: str | None = None) -> tuple[int, str, str]:
    """``var-<command> <args>`` in this process, as its console script runs it (:mod:`var_lightning.cli.entry`):
    (exit status, stdout, stderr). Errors print as the user sees them (``HYDRA_FULL_ERROR`` is unset while it
    runs); the working directory, ``sys.argv``, the environment and the root logger are restored after."""
    import contextlib
    import io
    import logging
    import sys

    from var_lightning.cli import command_line, entry

    root = logging.getLogger()
    saved = (sys.argv, os.getcwd(), root.handlers[:], root.level, os.environ.pop("HYDRA_FULL_ERROR", None))
    out, err, code = io.StringIO(), io.StringIO(), 0
    try:
        if cwd is not None:
            os.chdir(cwd)
        sys.argv = [entry.COMMANDS[config_name][0], *args]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                entry.run(config_name)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv, cwd_before, root.handlers[:], level, full = saved
        os.chdir(cwd_before)
        root.setLevel(level)
        if full is not None:
            os.environ["HYDRA_FULL_ERROR"] = full
        command_line._PRECHECKED_ARGV.clear()
    return code, out.getvalue(), err.getvalue()
