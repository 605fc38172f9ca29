"""``init_from``: weights from a checkpoint of the same stage or the released layout, with the class count and
the scale schedule adapted (what was kept, resized and freshly initialised), and clear errors otherwise."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from tests.helpers import tiny_vae_cfg
from var_lightning.checkpoints.published import export_official_vae, export_official_var
from var_lightning.training.finetune import adapt_positions, init_from_checkpoint
from var_lightning.training.tokenizer_module import TokenizerModule
from var_lightning.training.var_module import VARModule

TRANSFORMER = dict(depth=2, width=32, num_heads=2, drop_path_rate=0.0)


def var_module(num_classes: int = 5, patch_nums=(1, 2, 4), seed: int = 0) -> VARModule:
    torch.manual_seed(seed)
    return VARModule(
        transformer={**TRANSFORMER, "num_classes": num_classes},
        tokenizer=asdict(tiny_vae_cfg(patch_nums=patch_nums)),
    )


def save_lightning(module, path: Path, stage: str, class_names=None) -> Path:
    torch.save(
        {
            "var_lightning": {"stage": stage, **({"class_names": class_names} if class_names else {})},
            "hyper_parameters": dict(module.hparams),
            "state_dict": module.state_dict(),
            "optimizer_states": [],
            "loops": {},
        },
        path,
    )
    return path


def test_adapt_positions_keeps_matching_scales_and_resizes_the_others():
    old = torch.randn(1, 1 + 4 + 16, 8)
    same, how = adapt_positions(old, (1, 2, 4), (1, 2, 4))
    assert torch.equal(same, old) and how.count("kept") == 3
    new, how = adapt_positions(old, (1, 2, 4), (1, 2, 3, 4, 6))
    assert new.shape == (1, 1 + 4 + 9 + 16 + 36, 8)
    assert torch.equal(new[0, :5], old[0, :5]) and torch.equal(new[0, 14:30], old[0, 5:21])
    assert "3x3 from 4x4 (bicubic)" in how and "6x6 from 4x4 (bicubic)" in how
    const = torch.ones(1, 21, 8)  # a constant table stays constant under bicubic resizing
    assert torch.allclose(adapt_positions(const, (1, 2, 4), (1, 3))[0], torch.ones(1, 10, 8), atol=1e-5)


@pytest.mark.parametrize("new_classes", [3, 8])
def test_class_count_change_keeps_shared_classes_and_the_null_class(tmp_path, new_classes, caplog):
    src = var_module(num_classes=5, seed=1)
    path = save_lightning(src, tmp_path / "var.ckpt", "var")
    dst = var_module(num_classes=new_classes, seed=2)
    fresh = dst.var.class_emb.weight.detach().clone()
    with caplog.at_level("INFO"):
        report = init_from_checkpoint(dst, path)
    W_old, W_new = src.var.class_emb.weight, dst.var.class_emb.weight
    k = min(5, new_classes)
    assert torch.equal(W_new[:k], W_old[:k]) and torch.equal(W_new[-1], W_old[-1])
    if new_classes > 5:
        assert torch.equal(W_new[5:new_classes], fresh[5:new_classes])  # new classes keep their init
    assert "class_emb.weight" in report.resized and "null class" in caplog.text
    for name, p in src.var.named_parameters():
        if name != "class_emb.weight":
            assert torch.equal(dict(dst.var.named_parameters())[name], p), name


NINE = ["astronaut", "brick", "camera", "cat", "chelsea", "coffee", "coins", "horse", "rocket"]


def test_a_class_subset_keeps_rows_by_name_not_by_index(tmp_path, caplog):
    """Fine-tuning a 9-class model to 3 classes (two it knows, one new): 'chelsea' starts from the source's
    'chelsea' row (index 4), not from 'astronaut' (index 0); the new class starts from the mean class row."""
    src = var_module(num_classes=9, seed=1)
    path = save_lightning(src, tmp_path / "var.ckpt", "var", class_names=NINE)
    dst = var_module(num_classes=3, seed=2)
    fresh = dst.var.class_emb.weight.detach().clone()
    with caplog.at_level("INFO"):
        report = init_from_checkpoint(dst, path, class_names=["Chelsea", "coffee", "zebra"])
    W_old, W_new = src.var.class_emb.weight, dst.var.class_emb.weight
    assert torch.equal(W_new[0], W_old[4]) and torch.equal(W_new[1], W_old[5])
    assert torch.equal(W_new[2], W_old[:9].mean(0)) and not torch.equal(W_new[2], fresh[2])  # a new class
    assert torch.equal(W_new[3], W_old[9])  # the null row
    how = report.resized["class_emb.weight"]
    assert (
        "matched by class name: kept 2 (Chelsea, coffee)" in how
        and "new 1 (start from the mean of the source's class rows: zebra)" in how
    )
    assert "dropped 7 (astronaut, brick, camera, cat, coins, horse, rocket)" in how and how in caplog.text
    # the same count, other classes in another order: still by name
    same = var_module(num_classes=9, seed=3)
    init_from_checkpoint(same, path, class_names=list(reversed(NINE)))
    assert torch.equal(same.var.class_emb.weight[0], W_old[8])
    # no names on the source: by index, and the report says so
    bare = save_lightning(src, tmp_path / "bare.ckpt", "var")
    by_index = var_module(num_classes=3, seed=2)
    report = init_from_checkpoint(by_index, bare, class_names=["chelsea", "coffee", "zebra"])
    assert torch.equal(by_index.var.class_emb.weight[0], W_old[0])
    assert "BY INDEX (the source has no class names)" in report.resized["class_emb.weight"]


def test_a_mapped_class_samples_like_its_source_before_training(tmp_path):
    """The class-subset recipe's promise: right after init_from, the new model's 'coffee' (row 0) and
    'Chelsea' (row 1) draw the same tokens as the source's 'coffee' (5) and 'chelsea' (4) for a seed, with
    guidance (the null row moved too); the new class draws something else."""
    from var_lightning.transformer.sampling import sample

    src = var_module(num_classes=9, seed=1).eval()
    with torch.no_grad():  # a trained-looking model: confident logits that depend on the class
        src.var.class_emb.weight.mul_(40)
        src.var.head.weight.mul_(200)
    path = save_lightning(src, tmp_path / "var.ckpt", "var", class_names=NINE)
    dst = var_module(num_classes=3, seed=2).eval()
    init_from_checkpoint(dst, path, class_names=["coffee", "Chelsea", "zebra"])

    def tokens(module, labels):
        out = sample(module.var, src.vae, len(labels), labels=labels, cfg=2.0, top_k=0, top_p=0.0, seed=7)
        return torch.cat([t.flatten(1) for t in out.tokens], 1)

    assert torch.equal(tokens(dst, [0, 1]), tokens(src, [5, 4]))
    assert not torch.equal(tokens(src, [0, 1]), tokens(src, [5, 4]))  # rows by index would differ
    assert not torch.equal(tokens(dst, [2, 2]), tokens(src, [5, 5]))


def test_an_imagenet_folder_named_by_synset_keeps_the_released_rows(tmp_path):
    """A released-style source (the 1000 ImageNet classes, torchvision's names) fine-tuned on a folder in the
    ImageNet layout (class folders n02099601, n01440764, ...): rows match by WordNet id, and by name."""
    from var_lightning.checkpoints.hub import imagenet_class_names, imagenet_wnids

    wnids = imagenet_wnids()
    assert len(wnids) == 1000 and wnids == sorted(wnids) and wnids[207] == "n02099601"
    src = var_module(num_classes=1000, seed=1)
    path = save_lightning(src, tmp_path / "released.ckpt", "var", class_names=imagenet_class_names())
    dst = var_module(num_classes=3, seed=2)
    report = init_from_checkpoint(dst, path, class_names=["n02099601", "tench", "my_new_class"])
    W_old, W_new = src.var.class_emb.weight, dst.var.class_emb.weight
    assert torch.equal(W_new[0], W_old[207]) and torch.equal(W_new[1], W_old[0])  # golden retriever, tench
    assert torch.equal(W_new[2], W_old[:1000].mean(0)) and torch.equal(W_new[3], W_old[1000])
    assert "kept 2 (n02099601, tench)" in report.resized["class_emb.weight"]


def test_schedule_change_adapts_positions_and_levels(tmp_path):
    src = var_module(patch_nums=(1, 2, 4), seed=1)
    path = save_lightning(src, tmp_path / "var.ckpt", "var")
    dst = var_module(patch_nums=(1, 2, 3, 4), seed=2)
    report = init_from_checkpoint(dst, path)
    assert set(report.resized) == {"pos_1LC", "pos_start", "lvl_embed.weight"}
    pos_old, pos_new = src.var.pos_1LC[0], dst.var.pos_1LC[0]
    assert torch.equal(pos_new[:5], pos_old[:5]) and torch.equal(pos_new[14:30], pos_old[5:21])
    assert torch.equal(dst.var.lvl_embed.weight[:3], src.var.lvl_embed.weight)
    assert torch.equal(dst.var.lvl_embed.weight[3], src.var.lvl_embed.weight[2])
    assert torch.equal(
        dst.var.lvl_1L, var_module(patch_nums=(1, 2, 3, 4)).var.lvl_1L
    )  # buffers are the model's own
    assert "blocks.0.attn.mat_qkv.weight" in report.kept
    label = torch.tensor([0, 1])
    x = torch.randn(2, dst.var.L - 1, 8)
    assert torch.isfinite(dst.var(label, x)).all()


def test_init_from_released_layout_files(tmp_path):
    src = var_module(num_classes=5, seed=1)
    released = tmp_path / "var_d2.pth"
    torch.save(export_official_var(src.var), released)
    dst = var_module(num_classes=7, seed=3)
    report = init_from_checkpoint(dst, released)
    assert report.kind == "released VAR weights" and torch.equal(dst.var.head.weight, src.var.head.weight)

    torch.manual_seed(0)
    tok = TokenizerModule(tokenizer=asdict(tiny_vae_cfg()), loss=dict(perceptual_weight=0.0, disc_ch=8))
    vae_file = tmp_path / "vae.pth"
    torch.save(export_official_vae(tok.vae), vae_file)
    torch.manual_seed(1)
    tok2 = TokenizerModule(tokenizer=asdict(tiny_vae_cfg()), loss=dict(perceptual_weight=0.0, disc_ch=8))
    report = init_from_checkpoint(tok2, vae_file)
    assert report.kind == "released tokenizer weights" and "loss.discriminator" in report.fresh[0]
    for k, v in tok.vae.state_dict().items():
        assert torch.equal(tok2.vae.state_dict()[k], v), k


def test_init_from_a_released_name_resolves_through_the_hub_cache(tmp_path, monkeypatch):
    from tests.unit.test_pretrained import COMMIT_A, add_snapshot

    src = var_module(num_classes=5, seed=1)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    add_snapshot(tmp_path / "hub", COMMIT_A, {"var_d16.pth": export_official_var(src.var)})
    dst = var_module(num_classes=5, seed=3)
    report = init_from_checkpoint(dst, "var_d16")
    assert report.kind.startswith("released var_d16") and torch.equal(
        dst.var.head.weight, src.var.head.weight
    )
    with pytest.raises(FileNotFoundError, match="or a released model name"):
        init_from_checkpoint(dst, "var_d99")


def test_tokenizer_checkpoint_brings_the_discriminator(tmp_path):
    torch.manual_seed(0)
    tok = TokenizerModule(tokenizer=asdict(tiny_vae_cfg()), loss=dict(perceptual_weight=0.0, disc_ch=8))
    path = save_lightning(tok, tmp_path / "tok.ckpt", "tokenizer")
    torch.manual_seed(1)
    tok2 = TokenizerModule(tokenizer=asdict(tiny_vae_cfg()), loss=dict(perceptual_weight=0.0, disc_ch=8))
    report = init_from_checkpoint(tok2, path)
    assert not report.fresh and any(k.startswith("loss.discriminator.") for k in report.kept)
    for k, v in tok.state_dict().items():
        assert torch.equal(tok2.state_dict()[k], v), k


def test_errors_name_the_mismatch_and_the_fix(tmp_path):
    var_path = save_lightning(var_module(), tmp_path / "var.ckpt", "var")
    torch.manual_seed(0)
    tok = TokenizerModule(tokenizer=asdict(tiny_vae_cfg()), loss=dict(perceptual_weight=0.0, disc_weight=0.0))
    tok_path = save_lightning(tok, tmp_path / "tok.ckpt", "tokenizer")
    with pytest.raises(ValueError, match=r"'tokenizer' checkpoint.*VAR stage.*model.tokenizer_ckpt"):
        init_from_checkpoint(var_module(), tok_path)
    with pytest.raises(ValueError, match=r"'var' checkpoint.*tokenizer stage"):
        init_from_checkpoint(tok, var_path)
    deeper = VARModule(
        transformer={**TRANSFORMER, "depth": 3, "num_classes": 5},
        tokenizer=asdict(tiny_vae_cfg(patch_nums=(1, 2, 4))),
    )
    with pytest.raises(ValueError, match=r"architecture differs.*missing: blocks\.2\..*model.transformer"):
        init_from_checkpoint(deeper, var_path)
    with pytest.raises(FileNotFoundError, match="init_from=.*no such file"):
        init_from_checkpoint(tok, tmp_path / "missing.ckpt")
