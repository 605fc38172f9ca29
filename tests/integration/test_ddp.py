"""Multi-process training: both stages on 2 CPU ranks (gloo) in a subprocess; the logged validation metrics
and codebook statistics must equal a single-process evaluation of the whole validation set with the final
weights, i.e. be reduced over ranks (not one rank's share). Plus the tokenizer's single backward."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from tests.helpers import tiny_vae_cfg
from var_lightning.checkpoints.load import load_models
from var_lightning.data.synthetic import SyntheticShapes
from var_lightning.objectives.losses import next_scale_losses
from var_lightning.tokenizer.usage import CodebookUsage
from var_lightning.training.tokenizer_module import TokenizerModule

SCRIPT = Path(__file__).with_name("ddp_run.py")
VAL_SIZE, IMAGE, CLASSES = 32, 8, 4  # as in ddp_run.py


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    env = {
        k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_PORT")
    }
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(out)], capture_output=True, text=True, timeout=900, env=env, cwd=out
    )
    log = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, log
    assert "terminate called" not in proc.stderr, log  # the process group is destroyed at teardown
    assert sorted(p.name for p in out.glob("done_rank*.json")) == ["done_rank0.json", "done_rank1.json"], log
    return out


def _val_set() -> tuple[torch.Tensor, torch.Tensor]:
    ds = SyntheticShapes(VAL_SIZE, image_size=IMAGE, num_classes=CLASSES, split="val", seed=0)
    return torch.stack([ds[i][0] for i in range(VAL_SIZE)]), ds.labels_N.clone()


def _usage(module: TokenizerModule, img: torch.Tensor) -> dict[str, torch.Tensor]:
    usage = CodebookUsage(len(module.cfg.patch_nums), module.cfg.vocab_size)
    with torch.no_grad():
        usage.update(module.vae(img)[1].hits_KV)
    return usage.compute()


@pytest.mark.process
def test_tokenizer_metrics_and_codebook_usage_are_reduced_over_ranks(ddp_runs):
    run = ddp_runs / "tokenizer"
    logged = json.loads((run / "metrics.json").read_text())
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    module = TokenizerModule(**ckpt["hyper_parameters"])
    module.load_state_dict(ckpt["state_dict"])
    module.eval()
    img, _ = _val_set()
    with torch.no_grad():
        rec, _ = module.vae(img)
    assert logged["val/rec_l1"] == pytest.approx(F.l1_loss(rec, img).item(), abs=1e-5)
    full = _usage(module, img)
    halves = [_usage(module, img[r::2]) for r in range(2)]  # what each rank saw (DistributedSampler split)
    assert logged["val/perplexity_last"] == pytest.approx(full["perplexity"][-1].item(), rel=1e-5)
    assert logged["val/usage_last"] == pytest.approx(full["usage"][-1].item() * 100, rel=1e-6)
    # the comparison can tell the sum over ranks from one rank's counts
    assert all(abs(h["perplexity"][-1] - full["perplexity"][-1]) > 1e-3 for h in halves)


@pytest.mark.process
def test_var_metrics_are_reduced_over_ranks(ddp_runs):
    run = ddp_runs / "var"
    logged = json.loads((run / "metrics.json").read_text())
    var, vae, _ = load_models(run / "checkpoints" / "last.ckpt")
    img, labels = _val_set()
    with torch.no_grad():
        per_rank = [next_scale_losses(var, vae, (img[r::2], labels[r::2]))["loss"].item() for r in range(2)]
        full = next_scale_losses(var, vae, (img, labels))["loss"].item()
    assert logged["val/loss"] == pytest.approx(full, abs=1e-5)
    assert logged["val/loss"] == pytest.approx(sum(per_rank) / 2, abs=1e-5)
    assert abs(per_rank[0] - per_rank[1]) > 1e-4  # one rank's value would not pass


def test_one_backward_gives_the_gradients_of_two():
    """The tokenizer's single backward of g_loss + d_loss (what DDP needs) equals two separate backwards."""
    torch.manual_seed(0)
    module = TokenizerModule(
        tokenizer=asdict(tiny_vae_cfg()),
        loss=dict(perceptual_weight=0.0, disc_ch=8, disc_layers=1, disc_start=0),
    )
    img = torch.rand(2, 3, 8, 8) * 2 - 1

    def grads(single: bool) -> dict[str, torch.Tensor]:
        module.zero_grad(set_to_none=True)
        rec, q = module.vae(img)
        g, _ = module.loss.generator_loss(img, rec, q.vq_loss, 10, last_layer=module.vae.decoder.last_layer)
        d, _ = module.loss.discriminator_loss(img, rec.detach(), 10)
        if single:
            (g + d).backward()
        else:
            g.backward()
            d.backward()
        return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}

    one, two = grads(True), grads(False)
    assert one.keys() == two.keys() and any(k.startswith("loss.discriminator") for k in one)
    for k in one:
        torch.testing.assert_close(one[k], two[k], rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("name", ["ddp", "ddp_cpu", "slurm"])
def test_data_parallel_trainer_configs_build_a_trainer(name, tmp_path, monkeypatch):
    import pytorch_lightning as L
    from hydra.utils import instantiate
    from pytorch_lightning.strategies import DDPStrategy

    from tests.integration.test_configs import compose_train
    from var_lightning.cli.validate import OUR_TRAINER_KEYS

    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "4")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "2")
    cfg = compose_train(["experiment=var_tiny", "model.tokenizer_ckpt=x.ckpt", f"trainer={name}"], tmp_path)
    trainer_cfg = dict(cfg.trainer)
    for key in OUR_TRAINER_KEYS:  # var-train's own keys (removed before the Trainer is built)
        trainer_cfg.pop(key)
    if name == "slurm":
        assert (cfg.trainer.devices, cfg.trainer.num_nodes) == (4, 2)  # taken from the allocation
        env = instantiate(cfg.trainer.plugins[0])
        assert env.auto_requeue and env.requeue_signal.name == "SIGUSR1"
        trainer_cfg.pop("plugins")  # SLURMEnvironment needs a real allocation
    if name != "ddp_cpu":
        trainer_cfg.update(accelerator="cpu", devices=2, num_nodes=1, precision="32-true")
    trainer = instantiate(trainer_cfg, logger=False)
    assert isinstance(trainer, L.Trainer) and isinstance(trainer.strategy, DDPStrategy)
    assert trainer.world_size == 2


@pytest.mark.parametrize(
    ("name", "reshard", "replicas"),
    [
        ("fsdp", True, None),
        ("fsdp_grad_op", False, None),
        ("fsdp_hybrid", True, "nodes"),
        ("fsdp_cpu", True, None),
    ],
)
def test_sharded_configs_build_the_fsdp2_strategy(name, reshard, replicas, tmp_path):
    """Construction only; tests/integration/test_sharded.py trains with each of them on CPU processes."""
    from tests.integration.test_configs import compose_train
    from var_lightning.cli.train import strategy_for
    from var_lightning.training.sharding import ShardedStrategy
    from var_lightning.training.var_module import VARModule

    cfg = compose_train(
        ["experiment=var_tiny", "model.tokenizer_ckpt=x.ckpt", f"trainer={name}", "trainer.num_nodes=1"],
        tmp_path,
    )
    module = VARModule(
        transformer=dict(depth=2, width=32, num_heads=2, num_classes=3), tokenizer=asdict(tiny_vae_cfg())
    )
    assert strategy_for(cfg.trainer, module) == (None, [])  # built by the trainer config as it stands
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, ShardedStrategy)
    assert strategy.plan.reshard_after_forward is reshard and strategy.plan.replicas == replicas
    assert strategy.plan.resolved("bf16-mixed").param_dtype == "bfloat16"
    assert strategy.plan.resolved("32-true").param_dtype is None


def test_sharded_strategy_refuses_the_tokenizer_stage(tmp_path):
    from tests.integration.test_configs import compose_train
    from var_lightning.cli.train import strategy_for

    cfg = compose_train(["experiment=tokenizer_tiny", "trainer=fsdp_cpu"], tmp_path)
    module = TokenizerModule(tokenizer=asdict(tiny_vae_cfg()), loss=dict(perceptual_weight=0.0, disc_ch=8))
    with pytest.raises(ValueError, match="trainer=ddp"):
        strategy_for(cfg.trainer, module)


def test_ddp_skips_buffer_broadcast_and_finds_unused_parameters_for_the_tokenizer(tmp_path):
    """The frozen tokenizer's buffers and the mask never change: no broadcast every step (as published)."""
    from pytorch_lightning.strategies import DDPStrategy

    from tests.integration.test_configs import compose_train
    from var_lightning.cli.train import strategy_for
    from var_lightning.training.var_module import VARModule

    cfg = compose_train(["experiment=tokenizer_tiny", "trainer=ddp_cpu"], tmp_path)
    tok = TokenizerModule(tokenizer=asdict(tiny_vae_cfg()), loss=dict(perceptual_weight=0.0, disc_ch=8))
    var = VARModule(
        transformer=dict(depth=2, width=32, num_heads=2, num_classes=3), tokenizer=asdict(tiny_vae_cfg())
    )
    for module, unused in ((tok, True), (var, False)):
        strategy, extra = strategy_for(cfg.trainer, module)
        assert isinstance(strategy, DDPStrategy) and extra == []
        assert strategy._ddp_kwargs == {"broadcast_buffers": False, "find_unused_parameters": unused}


def test_submitit_launcher_config_composes(tmp_path, compose):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install hydra-submitit-launcher")
    cfg = compose(
        "train", ["hydra/launcher=slurm", "trainer=slurm", "hydra.launcher.partition=gpu"], hydra=True
    )
    launcher = cfg.hydra.launcher
    assert (
        launcher._target_.endswith("SlurmLauncher") and launcher.tasks_per_node == launcher.gpus_per_node == 8
    )
    assert launcher.max_num_timeout > 0 and launcher.additional_parameters.requeue is True
    assert launcher.partition == "gpu"


def test_published_d30_recipe_composes_with_sharding_and_its_clipping(tmp_path):
    """The README's `experiment=var_d30_imagenet256 trainer=fsdp`: the recipe's clip value (2.0) stays and the
    trainer builds (FSDP1's precision plugin refused norm clipping; FSDP2 clips like every other strategy)."""
    import pytorch_lightning as L

    from tests.integration.test_configs import compose_train
    from var_lightning.cli.validate import OUR_TRAINER_KEYS
    from var_lightning.training.sharding import ShardedStrategy

    cfg = compose_train(
        ["experiment=var_d30_imagenet256", "model.tokenizer_ckpt=x.pth", "trainer=fsdp", "trainer.devices=2",
         "trainer.accelerator=cpu", "trainer.precision=32-true"],
        tmp_path,
    )  # fmt: skip
    assert cfg.trainer.gradient_clip_val == 2.0
    trainer = instantiate({k: v for k, v in cfg.trainer.items() if k not in OUR_TRAINER_KEYS}, logger=False)
    assert isinstance(trainer, L.Trainer) and isinstance(trainer.strategy, ShardedStrategy)
    assert trainer.gradient_clip_val == 2.0
