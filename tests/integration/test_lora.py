"""LoRA fine-tuning (model.train.lora) with peft: only the adapters and class_emb train, the base stays
frozen bit for bit, the checkpoint holds the adapters plus a reference to the base, every reader gets the
merged model (whose logits equal the adapted model's), var-convert to-hub exports it merged, and a LoRA run
resumes with its base reloaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tests.integration.test_training import var_cfg
from var_lightning.checkpoints.load import load_models
from var_lightning.cli.train import build, train

RANK = 4
TARGETS = ("mat_qkv", "proj", "fc1", "fc2")


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory, tokenizer_ckpt) -> Path:
    run = tmp_path_factory.mktemp("base")
    train(var_cfg(run, tokenizer_ckpt, "trainer.max_epochs=1", "logger=none", "~callbacks.image_logger"))
    return run / "checkpoints" / "last.ckpt"


def lora_cfg(run: Path, tokenizer_ckpt: Path, base: Path, *extra: str):
    return var_cfg(run, tokenizer_ckpt, f"init_from={base}", f"model.train.lora.rank={RANK}",
                   "model.train.lora.alpha=8", "model.optim.base_lr=0.05", "logger=none", "~callbacks.image_logger",
                   *extra)  # fmt: skip


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tokenizer_ckpt, base_ckpt) -> Path:
    run = tmp_path_factory.mktemp("lora")
    train(lora_cfg(run, tokenizer_ckpt, base_ckpt, "trainer.max_epochs=1"))
    return run


def adapted_module(run: Path, tokenizer_ckpt: Path, base: Path):
    """The run's module as training had it: base weights from init_from, adapters injected, checkpoint loaded."""
    from var_lightning.training.finetune import init_from_checkpoint

    _, model, _ = build(lora_cfg(run / "rebuild", tokenizer_ckpt, base))
    init_from_checkpoint(model, str(base), class_names=None)
    model.init_from = str(base)
    model.configure_model()
    sd = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected
    return model.eval()


def test_only_the_adapters_and_class_emb_train(tmp_path, tokenizer_ckpt, base_ckpt):
    from var_lightning.training.finetune import init_from_checkpoint

    _, model, _ = build(lora_cfg(tmp_path, tokenizer_ckpt, base_ckpt))
    init_from_checkpoint(model, str(base_ckpt))
    model.init_from = str(base_ckpt)
    linears = {
        n: m for n, m in model.var.named_modules() if isinstance(m, nn.Linear) and n.split(".")[-1] in TARGETS
    }
    expected = sum(RANK * (m.in_features + m.out_features) for m in linears.values())
    expected += model.var.class_emb.weight.numel()
    model.configure_model()
    trainable = {n: p.numel() for n, p in model.var.named_parameters() if p.requires_grad}
    assert sum(trainable.values()) == expected and len(linears) == 4 * model.var.depth
    assert all("lora_" in n or n == "class_emb.weight" for n in trainable)
    frozen = sum(p.numel() for p in model.var.parameters() if not p.requires_grad)
    assert frozen > 5 * expected  # the point of LoRA


def test_the_checkpoint_holds_the_adapters_and_names_its_base(lora_run, base_ckpt):
    ckpt = torch.load(lora_run / "checkpoints" / "last.ckpt", weights_only=True)
    sd, meta = ckpt["state_dict"], ckpt["var_lightning"]["lora"]
    assert meta["base"] == str(base_ckpt.resolve()) and meta["rank"] == RANK and meta["alpha"] == 8.0
    assert "var.blocks.0.attn.mat_qkv.lora_A.default.weight" in sd and "var.class_emb.weight" in sd
    assert not any(k.endswith("base_layer.weight") for k in sd) and "var.head.weight" not in sd
    assert (lora_run / "checkpoints" / "last.ckpt").stat().st_size < base_ckpt.stat().st_size


def test_readers_get_the_merged_model_with_the_adapted_logits(lora_run, tokenizer_ckpt, base_ckpt, tmp_path):
    merged = load_models(lora_run / "checkpoints" / "last.ckpt")
    assert merged.info.stage == "var" and not any("lora" in k for k in merged.var.state_dict())
    adapted = adapted_module(lora_run, tokenizer_ckpt, base_ckpt)
    base = load_models(base_ckpt).var
    # the base under the adapters is untouched; the merged layer is not the base's (the adapters trained)
    assert torch.equal(
        adapted.var.blocks[0].attn.mat_qkv.base_layer.weight, base.blocks[0].attn.mat_qkv.weight
    )
    assert not torch.equal(merged.var.blocks[0].attn.mat_qkv.weight, base.blocks[0].attn.mat_qkv.weight)
    torch.manual_seed(0)
    img = torch.rand(3, 3, 16, 16) * 2 - 1
    x_BLCv = merged.vae.quantize.idx_to_var_input(merged.vae.img_to_idx(img))
    labels = torch.tensor([0, 3, 7])
    with torch.no_grad():
        want, got = adapted.var(labels, x_BLCv), merged.var(labels, x_BLCv)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    # var-convert to-hub exports the merged model
    from var_lightning.cli.convert import main as convert

    assert (
        convert(["to-hub", str(lora_run / "checkpoints" / "last.ckpt"), "--out-dir", str(tmp_path / "repo")])
        == 0
    )
    shared = load_models(pretrained=tmp_path / "repo").var.state_dict()
    assert all(torch.equal(v, shared[k]) for k, v in merged.var.state_dict().items())


def test_a_lora_run_resumes_with_its_base_reloaded(lora_run, tokenizer_ckpt, base_ckpt):
    before = torch.load(lora_run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    train(lora_cfg(lora_run, tokenizer_ckpt, base_ckpt, "trainer.max_epochs=2", "resume=auto"))
    after = torch.load(lora_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert after["global_step"] == 2 * before and "lora" in after["var_lightning"]


def test_lora_settings_that_cannot_work_are_named(tmp_path, tokenizer_ckpt, base_ckpt):
    cfg = var_cfg(tmp_path, tokenizer_ckpt, "model.train.lora.rank=4", "debug=fdr")
    with pytest.raises(ValueError, match="give the base with init_from="):
        train(cfg)
    cfg = lora_cfg(
        tmp_path / "b", tokenizer_ckpt, base_ckpt, "model.train.lora.targets=[mat_qkv,nope]", "debug=fdr"
    )
    with pytest.raises(ValueError, match=r"model.train.lora.targets: \['nope'\] name no linear layer"):
        train(cfg)
