"""The generation- and reconstruction-metric callbacks inside real (tiny) Lightning runs."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as L
import torch
from omegaconf import open_dict

from tests.integration.test_configs import compose_train
from tests.integration.test_eval_cli import save_tokenizer_checkpoint
from tests.integration.test_training import TINY_DATA, TINY_TOKENIZER
from var_lightning.callbacks.generation_metrics import GenerationMetrics
from var_lightning.callbacks.recon_metrics import ReconMetrics
from var_lightning.cli.train import build, train
from var_lightning.evaluation import psnr
from var_lightning.training.var_module import VARModule

GM = "callbacks.generation_metrics"


class AfterTrainBatch(L.Callback):
    def __init__(self, fn) -> None:
        self.fn = fn

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.fn()


@pytest.fixture(scope="module")
def tokenizer_ckpt(tmp_path_factory) -> Path:
    return save_tokenizer_checkpoint(tmp_path_factory.mktemp("tok") / "tok.ckpt")[0]


def var_cfg(
    tmp_path: Path, tokenizer_ckpt: Path, callbacks: str = "[default,generation_metrics]", *extra: str
):
    cfg = compose_train(
        [
            "experiment=var_tiny",
            "schedule=cpu_micro",
            f"model.tokenizer_ckpt={tokenizer_ckpt}",
            "++model.transformer.depth=2",
            "++model.transformer.width=32",
            "++model.transformer.num_heads=2",
            f"callbacks={callbacks}",
            "~callbacks.progress_bar",
            "~callbacks.image_logger",
            f"{GM}.extractor.name=tiny-random",
            f"{GM}.num_samples=12",
            f"{GM}.batch_size=5",
            f"{GM}.cache_dir={tmp_path / 'cache'}",
            "logger=none",
            *TINY_DATA,
            *extra,
        ],
        tmp_path,
    )
    with open_dict(cfg):
        cfg.trainer.enable_progress_bar = False
    return cfg


def test_generation_metrics_in_fast_dev_run(tmp_path, tokenizer_ckpt):
    metrics = train(var_cfg(tmp_path, tokenizer_ckpt, "[default,generation_metrics]", "debug=fdr"))
    for key in ("val/fid", "val/fid_best", "val/is", "val/precision", "val/recall", "val/loss"):
        assert key in metrics, key
    assert metrics["val/fid"] > 0 and metrics["val/fid_best"] == metrics["val/fid"]
    assert 0 <= metrics["val/precision"] <= 1 and metrics["val/is"] >= 1 - 1e-6
    assert list((tmp_path / "cache").glob("ref-tiny-random-*.npz")), "reference statistics were not cached"


def test_checkpoint_holds_no_feature_network_and_the_callback_state_is_small(tmp_path, tokenizer_ckpt):
    cfg = var_cfg(
        tmp_path,
        tokenizer_ckpt,
        "[default,generation_metrics]",
        "trainer.max_epochs=2",
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1",
        f"{GM}.every_n_epochs=2",
    )
    dm, model, trainer = build(cfg)
    trainer.fit(model, datamodule=dm)
    cb = next(c for c in trainer.callbacks if isinstance(c, GenerationMetrics))
    history = [json.loads(line) for line in (tmp_path / "metrics_history.jsonl").read_text().splitlines()]
    assert "val/fid" not in history[0] and "val/fid" in history[1]  # every_n_epochs=2: epoch 1 only
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert all(k.startswith(("var.", "vae.")) for k in ckpt["state_dict"]), "a metric network leaked in"
    state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("GenerationMetrics"))
    assert set(state) == {"best_fid", "best_step", "best_epoch", "last_bucket"}
    assert state["best_fid"] == pytest.approx(history[1]["val/fid_best"]) and state["best_epoch"] == 1

    restored = GenerationMetrics(extractor="tiny-random")
    restored.load_state_dict(state)
    assert restored.best_fid == cb.best_fid and restored.best_step == cb.best_step


@pytest.mark.parametrize("order", ["[ema,generation_metrics]", "[generation_metrics,ema]"])
def test_samples_come_from_the_weights_validation_uses_under_ema(
    tmp_path, tokenizer_ckpt, monkeypatch, order
):
    """Whichever of the two callbacks runs its epoch-end hook first, sampling sees the EMA weights."""
    cfg = var_cfg(
        tmp_path,
        tokenizer_ckpt,
        order,
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=3",
        "+trainer.limit_val_batches=1",
        "callbacks.ema.decay=0.5",
        "model.optim.base_lr=0.5",
        "~callbacks.model_checkpoint",
    )
    dm, model, trainer = build(cfg)
    checksum = lambda m: sum(p.double().sum().item() for p in m.var.parameters())
    seen: dict[str, list[float]] = {"validation": [], "sampling": [], "raw": []}
    validation_step, generate = model.validation_step, VARModule.generate

    def spy_validation_step(batch, batch_idx):
        seen["validation"].append(checksum(model))
        return validation_step(batch, batch_idx)

    def spy_generate(self, labels, **kw):
        seen["sampling"].append(checksum(self))
        return generate(self, labels, **kw)

    monkeypatch.setattr(model, "validation_step", spy_validation_step)
    monkeypatch.setattr(VARModule, "generate", spy_generate)
    trainer.callbacks.append(AfterTrainBatch(lambda: seen["raw"].append(checksum(model))))
    trainer.fit(model, datamodule=dm)
    assert len(seen["sampling"]) == 3  # 12 samples in batches of 5
    # validation[0] is the sanity check before training; [-1] the validation after the 3 steps
    assert seen["sampling"][0] == pytest.approx(seen["validation"][-1], rel=1e-12)
    assert abs(seen["validation"][-1] - seen["raw"][-1]) > 1e-6  # EMA differs from the raw weights


def test_every_n_steps_schedule_and_argument_errors():
    cb = GenerationMetrics(every_n_epochs=None, every_n_steps=100, extractor="tiny-random")
    trainer = SimpleNamespace(sanity_checking=False, fast_dev_run=False, global_step=50, current_epoch=0)
    assert not cb._due(trainer)
    trainer.global_step = 130
    assert cb._due(trainer)
    cb._last_bucket = 1  # evaluated at step 130
    trainer.global_step = 180
    assert not cb._due(trainer)
    trainer.global_step = 200
    assert cb._due(trainer)
    trainer.sanity_checking = True
    assert not cb._due(trainer)

    with pytest.raises(ValueError, match=f"{GM}.every_n_steps"):
        GenerationMetrics(every_n_steps=0)
    with pytest.raises(ValueError, match=f"{GM}.sampling has unknown keys"):
        GenerationMetrics(sampling={"temperature": 1.0})
    with pytest.raises(TypeError, match="needs a VAR-stage module"):
        GenerationMetrics(extractor="tiny-random").setup(SimpleNamespace(), torch.nn.Linear(1, 1), "fit")


def test_recon_metrics_in_fast_dev_run(tmp_path, caplog):
    cfg = compose_train(
        [
            *TINY_TOKENIZER,
            "callbacks=[default,recon_metrics]",
            "callbacks.recon_metrics.extractor.name=tiny-random",
            "callbacks.recon_metrics.lpips.random_backbone=true",
            "debug=fdr",
        ],
        tmp_path,
    )
    with open_dict(cfg):
        cfg.trainer.enable_progress_bar = False
    dm, model, trainer = build(cfg)
    trainer.fit(model, datamodule=dm)
    cb = next(c for c in trainer.callbacks if isinstance(c, ReconMetrics))
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for key in ("psnr", "ssim", "lpips", "rfid"):
        assert logged[f"val/{key}"] == pytest.approx(cb.last_metrics[key]), key
    assert logged["val/rfid_best"] == logged["val/rfid"] >= 0 and "NOT LPIPS" in caplog.text
    img = next(iter(dm.val_dataloader()))[0]
    with torch.no_grad():
        expected = psnr(model.vae.img_to_reconstruction(img), img).item()
    assert cb.last_metrics["psnr"] == pytest.approx(expected, rel=1e-5)
    assert not any("extractor" in k or "lpips" in k for k in model.state_dict())


@pytest.mark.slow
@pytest.mark.process
def test_two_ddp_ranks_give_the_single_process_metrics(tmp_path, tokenizer_ckpt):
    """Real process group (gloo, 2 spawned CPU ranks): sharded sampling, gathers and the broadcast give
    the numbers of one process, because every sample has the same label and seed in both runs."""
    results = {}
    for devices in (1, 2):
        cfg = var_cfg(
            tmp_path / str(devices),
            tokenizer_ckpt,
            "[default,generation_metrics]",
            "+trainer.limit_val_batches=1",
            "trainer.accelerator=cpu",
            f"trainer.devices={devices}",
            f"+trainer.strategy={'ddp_spawn' if devices > 1 else 'auto'}",
        )
        L.seed_everything(0)
        dm, model, trainer = build(cfg)
        trainer.validate(model, datamodule=dm)
        results[devices] = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    for key in ("val/fid", "val/is", "val/precision", "val/recall"):
        assert results[2][key] == pytest.approx(results[1][key], rel=1e-6), key


def test_fd_dinov2_is_logged_next_to_fid_during_training(tmp_path, tokenizer_ckpt, monkeypatch):
    """callbacks.generation_metrics.extra_fd=[fd_dinov2]: val/fd_dinov2 beside val/fid, its reference cached
    (DINOv2's torch hub network replaced by a stand-in: no download)."""
    from tests.integration.test_eval_cli import TinyDino

    monkeypatch.setattr(torch.hub, "load", lambda *a, **k: TinyDino())
    metrics = train(var_cfg(tmp_path, tokenizer_ckpt, "[default,generation_metrics]", "debug=fdr",
                            f"{GM}.extra_fd=[fd_dinov2]"))  # fmt: skip
    assert metrics["val/fd_dinov2"] > 0 and "val/fid" in metrics
    assert list((tmp_path / "cache").glob("ref-dinov2-vit-l-14-*.npz"))
