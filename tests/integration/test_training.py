"""End-to-end training of both stages on tiny models (fast_dev_run, a short overfit, sampling CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from tests.integration.test_configs import compose_train
from var_lightning.checkpoints.load import load_models, load_tokenizer
from var_lightning.cli.train import train
from var_lightning.training.resume import stored_shapes
from var_lightning.transformer.sampling import sample

TINY_DATA = [
    "data.image_size=16",
    "data.train_size=64",
    "data.val_size=32",
    "data.test_size=32",
    "data.batch_size=16",
]
TINY_TOKENIZER = [
    "experiment=tokenizer_tiny",
    "schedule=cpu_micro",
    "model.tokenizer.ch=16",
    "model.tokenizer.vocab_size=64",
    "model.tokenizer.z_channels=8",
    "model.tokenizer.norm_groups=8",
    "model.loss.disc_start=2",
    "model.loss.disc_ch=8",
    "~callbacks.progress_bar",
    *TINY_DATA,
]


def tokenizer_cfg(tmp_path: Path, *extra: str):
    cfg = compose_train([*TINY_TOKENIZER, *extra], tmp_path)
    with open_dict(cfg):
        cfg.trainer.enable_progress_bar = False
    return cfg


def test_tokenizer_fast_dev_run(tmp_path):
    metrics = train(tokenizer_cfg(tmp_path, "debug=fdr"))
    assert "train/loss" in metrics and torch.isfinite(torch.tensor(metrics["train/loss"]))


def test_tokenizer_run_writes_checkpoints_images_metrics(tokenizer_ckpt):
    run = tokenizer_ckpt.parent.parent
    assert any(p.name.startswith("best-") for p in (run / "checkpoints").iterdir())
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("val/rec_l1", "val/psnr", "val/usage_last", "val/perplexity_last", "train/usage_s0_1x1"):
        assert key in metrics, key
    assert 0 < metrics["val/usage_last"] <= 100
    images = {p.name for p in (run / "images").iterdir()}
    assert any("progressive" in n for n in images) and any("reconstructions" in n for n in images)
    vae = load_tokenizer(tokenizer_ckpt, patch_nums=(1, 2, 4))
    assert vae.cfg.vocab_size == 64 and vae.patch_nums == (1, 2, 4)
    with pytest.raises(ValueError, match="scale schedule"):
        load_tokenizer(tokenizer_ckpt, patch_nums=(1, 2, 3, 4))


def test_tokenizer_overfit_loss_falls(tmp_path):
    cfg = tokenizer_cfg(
        tmp_path,
        "debug=overfit",
        "trainer.max_epochs=25",
        "model.loss.disc_weight=0",
        "logger=none",
        "~callbacks.image_logger",
    )
    with open_dict(cfg):
        cfg.trainer.log_every_n_steps = 1
    from var_lightning.cli.train import build

    dm, model, trainer = build(cfg)
    losses = []

    class Record(torch.nn.Module):
        pass

    import pytorch_lightning as L

    class LossRecorder(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]) if isinstance(outputs, dict) else float(outputs))

    trainer.callbacks.append(LossRecorder())
    trainer.fit(model, datamodule=dm)
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.6 * first, (first, last)


def var_cfg(tmp_path: Path, tokenizer_ckpt: Path, *extra: str):
    cfg = compose_train(
        [
            "experiment=var_tiny",
            "schedule=cpu_micro",
            f"model.tokenizer_ckpt={tokenizer_ckpt}",
            "++model.transformer.depth=2",
            "++model.transformer.width=32",
            "++model.transformer.num_heads=2",
            "~callbacks.progress_bar",
            *TINY_DATA,
            *extra,
        ],
        tmp_path,
    )
    with open_dict(cfg):
        cfg.trainer.enable_progress_bar = False
    return cfg


def test_var_fast_dev_run(tmp_path, tokenizer_ckpt):
    metrics = train(var_cfg(tmp_path, tokenizer_ckpt, "debug=fdr"))
    for key in (
        "train/loss",
        "train/loss_last",
        "train/token_err_avg",
        "val/loss",
        "val/token_err_last",
        "val/scale/acc_s2",
    ):
        assert key in metrics, key


def test_var_overfit_loss_falls_and_checkpoint_samples(tmp_path, tokenizer_ckpt):
    cfg = var_cfg(
        tmp_path,
        tokenizer_ckpt,
        "debug=overfit",
        "trainer.max_epochs=40",
        "model.optim.base_lr=0.05",
        "model.optim.warmup_fraction=0.0",
        "model.train.cond_drop_rate=0.0",
        "logger=csv",
    )
    with open_dict(cfg):
        cfg.trainer.log_every_n_steps = 1
    train(cfg)
    import csv

    (metrics_csv,) = (tmp_path / "csv").glob("version_*/metrics.csv")
    rows = list(csv.DictReader(metrics_csv.read_text().splitlines()))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) >= 20
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses
    var, vae, info = load_models(tmp_path / "checkpoints" / "last.ckpt")
    imgs = sample(var, vae, 2, labels=[0, 1], cfg=1.0, top_k=0, top_p=0.0).images
    assert imgs.shape == (2, 3, 16, 16) and info.class_names and len(info.class_names) == 10


def test_var_rejects_a_schedule_that_differs_from_the_tokenizer(tmp_path, tokenizer_ckpt):
    cfg = var_cfg(tmp_path, tokenizer_ckpt, "schedule=cpu_tiny", "debug=fdr")
    with pytest.raises(Exception, match="scale schedule"):
        train(cfg)


def test_var_rejects_a_tokenizer_checkpoint_of_the_wrong_stage(tmp_path, tokenizer_ckpt):
    cfg = var_cfg(tmp_path, tokenizer_ckpt, "trainer.max_epochs=1", "logger=none")
    train(cfg)
    # a VAR checkpoint serves as a tokenizer checkpoint (its frozen tokenizer is inside)...
    inner = load_tokenizer(tmp_path / "checkpoints" / "last.ckpt").state_dict()
    assert all(torch.equal(v, load_tokenizer(tokenizer_ckpt).state_dict()[k]) for k, v in inner.items())
    # ...but a tokenizer checkpoint cannot stand in for a transformer
    with pytest.raises(ValueError, match="is a tokenizer checkpoint, but a transformer"):
        load_models(tokenizer_ckpt)
    with pytest.raises(FileNotFoundError, match="model.tokenizer_ckpt"):
        load_tokenizer(tmp_path / "missing.ckpt")


@pytest.mark.parametrize("stage", ["tokenizer", "var"])
def test_bf16_mixed_precision_runs(stage, tmp_path, tokenizer_ckpt):
    extra = ("debug=fdr", "trainer.precision=bf16-mixed")
    cfg = (
        tokenizer_cfg(tmp_path, *extra) if stage == "tokenizer" else var_cfg(tmp_path, tokenizer_ckpt, *extra)
    )
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))


def test_wrong_image_size_stops_at_startup_naming_the_expected_size(tmp_path):
    with pytest.raises(ValueError, match=r"images must be 16x16 \(set data.image_size=16"):
        train(tokenizer_cfg(tmp_path, "debug=fdr", "data.image_size=32"))


def test_var_sample_cli_writes_pngs_grid_and_is_reproducible(tmp_path, tokenizer_ckpt, compose):
    from var_lightning.cli.sample import run

    cfg = var_cfg(tmp_path / "train", tokenizer_ckpt, "trainer.max_epochs=1", "logger=none")
    train(cfg)
    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"
    scfg = compose("sample", [f"ckpt_path={ckpt}", "num_per_class=2", "classes=[0,3]", "top_k=10", "top_p=0.9",
                              "batch_size=3"])  # fmt: skip
    meta = run(scfg, tmp_path / "a")
    run(scfg, tmp_path / "b")
    files = sorted(p.name for p in (tmp_path / "a" / "samples").iterdir())
    assert files == ["0000_0000.png", "0000_0001.png", "0003_0000.png", "0003_0001.png"]
    for name in files:
        assert (tmp_path / "a" / "samples" / name).read_bytes() == (
            tmp_path / "b" / "samples" / name
        ).read_bytes()
    assert (tmp_path / "a" / "grid.png").is_file() and meta["num_images"] == 4
    bad = compose("sample", [f"ckpt_path={ckpt}", "classes=[10]"])
    with pytest.raises(ValueError, match=r"classes=\[10\]: 10 is out of range.*10 classes.*\(key classes\)"):
        run(bad, tmp_path / "c")


def test_scaling_callback_writes_results_the_collector_reads(tmp_path, tokenizer_ckpt):
    from var_lightning.scaling import collect

    cfg = var_cfg(
        tmp_path,
        tokenizer_ckpt,
        "callbacks=scaling",
        "trainer.max_epochs=2",
        "logger=none",
    )
    train(cfg)
    found = collect(tmp_path)
    assert not found.failed and len(found.runs) == 1
    run = found.runs[0]
    assert run.params == sum(
        p.numel() for p in load_models(tmp_path / "checkpoints" / "last.ckpt").var.parameters()
    )
    assert [h["epoch"] for h in run.history] == [0, 1]
    assert run.history[-1]["images_seen"] == run.history[-1]["step"] * 16
    assert run.history[-1]["compute"] == pytest.approx(run.flops_per_image * run.history[-1]["images_seen"])
    assert set(run.final) >= {"val/loss_avg", "val/loss_last", "val/token_err_avg", "val/token_err_last"}


def test_an_image_folder_sets_the_class_count_names_and_size_and_reports_bad_files(tmp_path, tokenizer_ckpt):
    """A user's ImageFolder with 3 classes (one unreadable file): a 3-class VAR at the model's image size, the
    folder names in the checkpoint and on the grid rows, the bad file named in metrics.json."""
    from tests.unit.test_data import _add_corrupt_files, _write_tree

    for split in ("train", "val"):
        _write_tree(tmp_path / "photos" / split, classes=("ant", "bee", "cat"), per_class=6, size=(30, 22))
    _add_corrupt_files(tmp_path / "photos" / "train")
    run = tmp_path / "run"
    folder = ["data=imagenet", f"data.root={tmp_path / 'photos'}", "data.batch_size=4", "data.num_workers=0"]

    def cfg_with(path: Path, *extra: str):
        cfg = compose_train(["experiment=var_tiny", "schedule=cpu_micro", f"model.tokenizer_ckpt={tokenizer_ckpt}",
                             "++model.transformer.depth=1", "++model.transformer.width=32",
                             "++model.transformer.num_heads=1", "~callbacks.progress_bar", "logger=none",
                             "trainer.max_epochs=1", *folder, *extra], path)  # fmt: skip
        with open_dict(cfg):
            cfg.trainer.enable_progress_bar = False
        return cfg

    train(cfg_with(run))
    var, vae, info = load_models(run / "checkpoints" / "last.ckpt")
    assert var.num_classes == 3 and info.class_names == ["ant", "bee", "cat"] and info.image_size == 16
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["data/train/corrupt_files"] >= 1
    assert all(
        Path(p).parent.parent == tmp_path / "photos" / "train"
        for p in metrics["data/train/corrupt_file_names"]
    )
    grids = sorted((run / "images").glob("val_samples_*.png"))
    assert grids  # rows labelled with the class names (sample_io.labelled_grid)
    # a preset that fixes another count is an error naming both numbers
    bad = cfg_with(tmp_path / "bad", "model.transformer.num_classes=10")
    with pytest.raises(
        ValueError, match=r"the data has 3 classes .* but model.transformer.num_classes=10 has 10"
    ):
        train(bad)


def test_progressive_run_grows_the_prefix_skips_last_scale_metrics_and_its_prefix_loss_falls(
    tmp_path, tokenizer_ckpt
):
    cfg = var_cfg(
        tmp_path,
        tokenizer_ckpt,
        "debug=overfit",
        "trainer.max_epochs=30",  # 2 batches per epoch: 60 steps
        "model.optim.base_lr=0.05",
        "model.optim.warmup_steps=4",
        "model.train.cond_drop_rate=0.0",
        "model.train.progressive.until=0.6",  # scales 1 -> 2 (of 0, 1, 2) over steps 4..36
        "model.train.progressive.start_scale=1",
        "model.train.progressive.warmup_epochs=2",
        "logger=csv",
    )
    with open_dict(cfg):
        cfg.trainer.log_every_n_steps = 1
    train(cfg)
    import csv

    (metrics_csv,) = (tmp_path / "csv").glob("version_*/metrics.csv")
    rows = list(csv.DictReader(metrics_csv.read_text().splitlines()))
    steps = [r for r in rows if r.get("train/prog_stage")]
    stages = [int(float(r["train/prog_stage"])) for r in steps]
    assert stages[0] == 1 and stages[-1] == 2 and stages == sorted(stages)
    assert {float(r["train/prog_resolution"]) for r in steps} == {8.0, 16.0}  # 2 and 4 tokens x 4 px
    # the last scale's metrics only once it is trained; never a placeholder value
    assert all(not r.get("train/loss_last") for r in steps if r["train/prog_stage"] == "1.0")
    assert any(r.get("train/loss_last") for r in steps if r["train/prog_stage"] == "2.0")
    ramps = [float(r["train/prog_ramp"]) for r in steps if r["train/prog_stage"] == "1.0"]
    assert set(ramps) == {1.0}  # no ramp in the first stage
    # the trained prefix's loss falls: scale 0 and scale 1 are trained from the first step
    for key in ("train/scale/loss_s0", "train/scale/loss_s1"):
        per_epoch = [float(r[key]) for r in rows if r.get(key)]
        assert len(per_epoch) == 30 and per_epoch[-1] < 0.7 * per_epoch[0], (key, per_epoch)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["var_lightning"]["progressive"]["last_stage"] == 2


def test_ar_baseline_trains_and_var_sample_and_var_eval_take_its_checkpoint(
    tmp_path, tokenizer_ckpt, compose
):
    from var_lightning.cli.evaluate import run as run_eval
    from var_lightning.cli.sample import run as run_sample

    cfg = var_cfg(tmp_path / "train", tokenizer_ckpt, "model=ar_tiny", "trainer.max_epochs=1", "logger=none")
    with open_dict(cfg):
        cfg.model.transformer.update(depth=2, width=32, num_heads=2)
    metrics = train(cfg)
    assert metrics["val/loss"] == metrics["val/loss_last"] and "val/scale/loss_s0" not in metrics
    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"
    var, vae, info = load_models(ckpt)
    assert info.stage == "ar" and type(var).__name__ == "ARTransformer"
    scfg = compose("sample", [f"ckpt_path={ckpt}", "num_per_class=1", "classes=[0,3]"])
    ecfg = compose("eval", [f"ckpt_path={ckpt}", "mode=loss", "data=synthetic", "data.image_size=16",
                            "data.test_size=16", "batch_size=8"])  # fmt: skip
    meta = run_sample(scfg, tmp_path / "samples")
    assert meta["num_images"] == 2 and (tmp_path / "samples" / "samples" / "0003_0000.png").is_file()
    report = run_eval(ecfg, tmp_path / "eval")
    assert report["model"]["stage"] == "ar" and report["metrics"]["test/loss"] > 0


def test_var_runs_clip_gradients_at_the_published_2_unless_told(tmp_path, tokenizer_ckpt):
    from var_lightning.cli.train import build

    assert build(var_cfg(tmp_path, tokenizer_ckpt, "logger=none"))[2].gradient_clip_val == 2.0
    assert (
        build(var_cfg(tmp_path, tokenizer_ckpt, "logger=none", "trainer.gradient_clip_val=0"))[
            2
        ].gradient_clip_val
        == 0
    )
    assert (
        build(tokenizer_cfg(tmp_path, "logger=none"))[2].gradient_clip_val is None
    )  # the GAN clips its own way


def test_auto_batch_size_finds_what_fits_and_keeps_the_global_batch(tmp_path, tokenizer_ckpt, monkeypatch):
    """trainer.auto_batch_size=true: Lightning's finder (here with an out-of-memory error above 4 images)
    lowers the per-device batch to 4 and the accumulation rises to 4, so the global batch (16), the learning
    rate and the optimizer steps per epoch stay the recipe's."""
    from var_lightning.cli.train import build
    from var_lightning.training.var_module import VARModule

    real = VARModule.training_step

    def limited(self, batch, batch_idx):
        if batch[0].shape[0] > 4:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")  # what the finder looks for
        return real(self, batch, batch_idx)

    monkeypatch.setattr(VARModule, "training_step", limited)
    cfg = var_cfg(tmp_path, tokenizer_ckpt, "trainer.max_epochs=1", "logger=none", "trainer.auto_batch_size=true",
                  "~callbacks.image_logger")  # fmt: skip
    dm, model, trainer = build(cfg)
    trainer.fit(model, datamodule=dm)
    assert (dm.batch_size, trainer.accumulate_grad_batches) == (4, 4)
    assert model.global_batch_size() == 16 and trainer.global_step == 64 // 16
    with pytest.raises(Exception, match="one process only"):
        from var_lightning.callbacks.batch_size import GlobalBatchFinder

        class TwoRanks:
            world_size = 2

        GlobalBatchFinder().setup(TwoRanks(), model, "fit")


def test_a_sharded_checkpoint_resumes_with_the_ema_turned_on_or_off(tmp_path, tokenizer_ckpt):
    """DCP directories (trainer=fsdp_cpu, one rank in this process): a run without callbacks=ema resumed with
    it starts the average from the restored weights (DCP alone fails on the missing var_ema.*); a run with it
    resumed without it drops the average."""
    sharded = ["trainer=fsdp_cpu", "trainer.devices=1", "logger=none"]
    plain = tmp_path / "plain"
    train(var_cfg(plain, tokenizer_ckpt, *sharded, "trainer.max_epochs=1"))
    with_ema = tmp_path / "with_ema"
    probe = ["+callbacks.ema_start._target_=tests.integration.probes.EMAAtStart",
             f"+callbacks.ema_start.out_dir={with_ema}"]  # fmt: skip
    resumed = var_cfg(with_ema, tokenizer_ckpt, *sharded, "trainer.max_epochs=2", "callbacks=ema", *probe,
                      f"resume={plain / 'checkpoints' / 'last.ckpt'}")  # fmt: skip
    train(resumed)
    assert json.loads((with_ema / "ema_start.json").read_text())["max_diff"] == 0.0
    last = with_ema / "checkpoints" / "last.ckpt"
    assert any(k.startswith("var_ema.") for k in stored_shapes(last))
    without = tmp_path / "without_ema"
    train(var_cfg(without, tokenizer_ckpt, *sharded, "trainer.max_epochs=3", f"resume={last}"))
    assert not any(k.startswith("var_ema.") for k in stored_shapes(without / "checkpoints" / "last.ckpt"))


def test_bf16_true_trains_with_the_tokenizer_kept_in_fp32(tmp_path, tokenizer_ckpt):
    """trainer.precision=bf16-true converts the module and the batches; the frozen tokenizer's nearest-code
    search stays fp32 (it crashed on bf16 weights meeting fp32 images)."""
    metrics = train(var_cfg(tmp_path, tokenizer_ckpt, "debug=fdr", "trainer.precision=bf16-true"))
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert torch.isfinite(torch.tensor(metrics["val/loss"]))
