"""init_from= and resume= through var-train (a Trainer run): resume wins over init_from."""

from __future__ import annotations

from dataclasses import asdict

import torch
from omegaconf import open_dict

from tests.unit.test_finetune import save_lightning, var_module  # noqa: F401 - helpers and fixtures


def test_train_entry_point_applies_init_from_and_resume_wins(tmp_path, caplog):
    """Through ``train()``: a fresh run starts from init_from's weights; a relaunch that finds its own
    checkpoint resumes it and ignores init_from."""
    from tests.integration.test_configs import compose_train
    from var_lightning.cli.train import train

    src = var_module(num_classes=10, seed=4)
    tok_path = tmp_path / "tok.ckpt"
    torch.save(
        {
            "var_lightning": {"stage": "tokenizer"},
            "hyper_parameters": {"tokenizer": asdict(src.vae.cfg)},
            "state_dict": {f"vae.{k}": v for k, v in src.vae.state_dict().items()},
        },
        tok_path,
    )
    var_path = save_lightning(src, tmp_path / "var.ckpt", "var")
    run = tmp_path / "run"

    def cfg(*extra):
        c = compose_train(
            [
                "experiment=var_tiny",
                "schedule=cpu_micro",
                f"model.tokenizer_ckpt={tok_path}",
                "++model.transformer.depth=2",
                "++model.transformer.width=32",
                "++model.transformer.num_heads=2",
                "++model.transformer.drop_path_rate=0.0",
                "data.image_size=8",
                "data.train_size=8",
                "data.val_size=8",
                "data.batch_size=8",
                "trainer.max_epochs=1",
                "model.optim.base_lr=0.0",
                "logger=none",
                "~callbacks.progress_bar",
                "~callbacks.image_logger",
                f"init_from={var_path}",
                *extra,
            ],
            run,
        )
        with open_dict(c):
            c.trainer.enable_progress_bar = False
        return c

    with caplog.at_level("INFO"):
        train(cfg())
    assert f"init_from {var_path} (var_lightning VAR checkpoint): kept" in caplog.text
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert torch.equal(last["var.head.weight"], src.var.head.weight)  # lr 0: still the source weights
    caplog.clear()
    with caplog.at_level("INFO"):
        train(cfg("resume=auto"))
    assert "ignored: resuming" in caplog.text and "kept" not in caplog.text
