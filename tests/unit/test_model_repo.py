"""Model repositories (var-convert to-hub, save_pretrained / from_pretrained / push_to_hub): every stage round
trips through a folder and through a Hugging Face Hub cache laid out as huggingface_hub writes it; the card
states what the file holds; pickled weights are refused; uploads go through huggingface_hub's API and fail
offline with a message that says what to do. No network."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from tests.helpers import tiny_vae_cfg
from var_lightning.checkpoints.load import LoadedModels, load_models, load_tokenizer
from var_lightning.checkpoints.model_repo import REPO_FILES, push_to_hub
from var_lightning.checkpoints.safe_io import CheckpointError
from var_lightning.cli.convert import main as convert
from var_lightning.transformer.sampling import sample

NAMES = ["apple", "bee", "cat", "dog", "eel"]


def module_ckpt(path: Path, module, stage: str, ema: bool = False, **extra) -> Path:
    sd = dict(module.state_dict())
    if ema:  # what callbacks=ema writes: the average beside the raw weights
        torch.manual_seed(123)
        sd.update({f"var_ema.{k[4:]}": v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
                   for k, v in module.state_dict().items() if k.startswith("var.")})  # fmt: skip
    meta = {"stage": stage, "class_names": NAMES if stage != "tokenizer" else None}
    torch.save({"state_dict": sd, "hyper_parameters": dict(module.hparams), "var_lightning": meta,
                "global_step": 42, "epoch": 3, **extra}, path)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def var_ckpt(tmp_path_factory) -> Path:
    from var_lightning.training.var_module import VARModule

    torch.manual_seed(0)
    module = VARModule(transformer=dict(depth=2, width=32, num_heads=2, num_classes=5, drop_path_rate=0.0),
                       tokenizer=asdict(tiny_vae_cfg()), sampling=dict(cfg=2.0, top_k=0, top_p=0.0))  # fmt: skip
    return module_ckpt(tmp_path_factory.mktemp("run") / "var.ckpt", module, "var", ema=True)


def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def draw(models, seed: int = 3) -> torch.Tensor:
    s = models.info.sampling
    return sample(models.var, models.vae, 4, labels=[0, 1, 2, 4], cfg=s["cfg"], top_k=s["top_k"],
                  top_p=s["top_p"], seed=seed).images  # fmt: skip


def test_a_var_checkpoint_exports_and_loads_back_as_the_same_models(var_ckpt, tmp_path):
    out = tmp_path / "my-var"
    assert convert(["to-hub", str(var_ckpt), "--out-dir", str(out), "--license", "mit"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    direct, shared = load_models(var_ckpt), load_models(pretrained=out)
    assert same(direct.var, shared.var) and same(
        direct.vae, shared.vae
    )  # the EMA weights, as var-sample uses
    raw = torch.load(var_ckpt, weights_only=True)["state_dict"]
    assert not torch.equal(shared.var.state_dict()["head.weight"], raw["var.head.weight"])
    assert shared.info.class_names == NAMES and shared.info.sampling == direct.info.sampling
    assert shared.info.stage == "var" and shared.info.pretrained == str(out)
    assert torch.equal(draw(direct), draw(shared))
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "var_lightning/1" and config["stage"] == "var"
    assert config["class_names"] == NAMES and config["patch_nums"] == list(direct.info.patch_nums)
    assert config["image_size"] == direct.info.image_size and config["var_lightning"]["ema"] is True
    assert {"cfg": 2.0, "top_k": 0, "top_p": 0.0}.items() <= config["sampling"].items()
    # the same folder is a checkpoint everywhere one is taken
    assert same(load_models(out).var, direct.var) and same(load_tokenizer(out), direct.vae)


def test_the_card_states_what_the_repository_holds(var_ckpt, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = shutil.copy(var_ckpt, run / "checkpoints" / "last.ckpt")
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text(
        "- experiment=var_tiny\n- data=imagenet\n- hydra.run.dir=x\n- model.tokenizer_ckpt=/home/alice/tok/last.ckpt\n"
    )
    (run / ".hydra" / "config.yaml").write_text(
        "data:\n  _target_: var_lightning.data.datamodules.ImageFolderDataModule\n  root: /data/flowers\n"
    )
    (run / "metrics.json").write_text(
        json.dumps({"val/loss": 3.25, "val/token_err_last": 0.75, "step": 42, "epoch": 4})
    )
    (run / "images").mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8), (200, 10, 10)).save(run / "images" / "samples_step42.png")
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"metrics": {"fid": 12.5, "is": 3.0}, "extractor": {"name": "inception-v3-compat"},
                                  "reference": {"source": "imagenet-val", "count": 50000}, "samples": {"count": 5000},
                                  "sampling": {"cfg": 1.5, "top_k": 900, "top_p": 0.96}}))  # fmt: skip
    out = tmp_path / "repo"
    argv = ["to-hub", str(ckpt), "--out-dir", str(out), "--license", "apache-2.0", "--report", str(report)]
    assert convert(argv) == 0
    card = (out / "README.md").read_text()
    for text in ("license: apache-2.0", "library_name: var_lightning", "depth 2, width 32, 2 heads", "(EMA weights)",
                 "5: apple, bee, cat, dog, eel", "cfg 2.0, top-k 0", "steps: 42 (4 epochs completed)",
                 "`ImageFolderDataModule` from `<...>/flowers`",
                 "`var-train experiment=var_tiny data=imagenet model.tokenizer_ckpt=<...>/last.ckpt`",
                 "| val/loss | 3.25 |", "| val/token_err_last | 0.75 |", "| fid | 12.5 |", "5000 samples (cfg 1.5",
                 "`inception-v3-compat`", "reference `imagenet-val` (n=50000)", "![seeded samples, one row per class](grid.png)",
                 "var-sample pretrained=<user>/<name>", "init_from=<user>/<name>"):  # fmt: skip
        assert text in card, text
    assert "hydra.run.dir" not in card and (out / "grid.png").is_file()
    assert (
        "/home/alice" not in card and "/data/flowers" not in card and "pip install var_lightning" not in card
    )
    # a guidance sweep with sFID, a real-images baseline and a metric that could not be computed
    sweep = {"metrics": {"fid": 20.0, "sfid": 30.0}, "samples": {"count": 200}, "sampling": {"cfg": 1.0},
             "cfg_sweep": [{"cfg": 1.0, "metrics": {"fid": 20.0, "sfid": 30.0}},
                           {"cfg": 2.0, "metrics": {"fid": 10.0, "sfid": 25.0}}],
             "real_baseline": {"split": "test", "count": 200, "metrics": {"fid": 1.5}},
             "skipped_metrics": {"is": "no classifier layer"}}  # fmt: skip
    report.write_text(json.dumps(sweep))
    assert convert(["to-hub", str(ckpt), "--out-dir", str(tmp_path / "repo2"), "--report", str(report)]) == 0
    card = (tmp_path / "repo2" / "README.md").read_text()
    for text in ("| metric | cfg 1 | cfg 2 | real images (test, n=200) |", "| fid | 20 | 10 | 1.5 |",
                 "| sfid | 30 | 25 | - |", "Not computed: is: no classifier layer", "200 samples (cfg each value above"):  # fmt: skip
        assert text in card, text
    with pytest.raises(Exception, match="--report"):
        from var_lightning.cli.convert import to_hub

        to_hub(str(ckpt), str(tmp_path / "r2"), report=str(tmp_path / "missing.json"))


@pytest.mark.parametrize("stage", ["tokenizer", "ar"])
def test_the_tokenizer_and_the_ar_baseline_round_trip_too(stage, tmp_path):
    if stage == "tokenizer":
        from var_lightning.training.tokenizer_module import TokenizerModule

        module = TokenizerModule(
            tokenizer=asdict(tiny_vae_cfg()), loss=dict(perceptual_weight=0.0, disc_ch=8)
        )
    else:
        from var_lightning.training.ar_module import ARModule

        module = ARModule(transformer=dict(depth=1, width=32, num_heads=2, num_classes=5, drop_path_rate=0.0),
                          tokenizer=asdict(tiny_vae_cfg()))  # fmt: skip
    ckpt = module_ckpt(tmp_path / "m.ckpt", module, stage)
    direct = load_models(ckpt, require_var=False)
    out = direct.save_pretrained(tmp_path / "repo", repo_id="me/m")
    back = LoadedModels.from_pretrained(out)
    assert back.info.stage == stage and same(back.vae, direct.vae)
    assert (back.var is None) if stage == "tokenizer" else same(back.var, direct.var)
    assert f"stage-{stage}" in (out / "README.md").read_text()


def add_hub_snapshot(cache: Path, repo_id: str, folder: Path, commit: str = "c" * 40) -> None:
    """A repository in huggingface_hub's cache layout (blobs/, snapshots/<commit>/, refs/main)."""
    import hashlib

    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in folder.iterdir():
        blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copyfile(f, blob)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_a_hub_id_loads_from_the_cache_for_every_command(var_ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    folder = load_models(var_ckpt).save_pretrained(tmp_path / "folder", repo_id="someone/my-var")
    add_hub_snapshot(tmp_path / "hub", "someone/my-var", folder)
    shared = load_models(pretrained="someone/my-var")
    assert same(shared.var, load_models(var_ckpt).var) and shared.info.pretrained == "someone/my-var"
    assert same(load_tokenizer("someone/my-var"), shared.vae)  # model.tokenizer_ckpt=someone/my-var
    from var_lightning.training.finetune import init_from_checkpoint
    from var_lightning.training.var_module import VARModule

    torch.manual_seed(9)
    fresh = VARModule(transformer=dict(depth=2, width=32, num_heads=2, num_classes=5, drop_path_rate=0.0),
                      tokenizer=asdict(tiny_vae_cfg()))  # fmt: skip
    init_from_checkpoint(fresh, "someone/my-var", class_names=NAMES)  # init_from=someone/my-var
    theirs = dict(shared.var.named_parameters())
    assert all(torch.equal(p, theirs[n]) for n, p in fresh.var.named_parameters())
    with pytest.raises(
        FileNotFoundError, match=r"pretrained=someone/other: no such folder here.*hf download someone/other"
    ):
        load_models(pretrained="someone/other")
    with pytest.raises(
        FileNotFoundError, match=r"ckpt_path=someone/my-var: no such file or folder.*pretrained="
    ):
        load_models("someone/my-var")


def test_pickled_weights_and_other_formats_are_refused_by_name(var_ckpt, tmp_path):
    out = load_models(var_ckpt).save_pretrained(tmp_path / "repo")
    (out / "model.safetensors").rename(out / "pytorch_model.bin")
    with pytest.raises(
        CheckpointError, match=r"no model.safetensors \(it has pytorch_model.bin: pickled weights"
    ):
        load_models(pretrained=out)
    out2 = load_models(var_ckpt).save_pretrained(tmp_path / "repo2")
    config = json.loads((out2 / "config.json").read_text())
    (out2 / "config.json").write_text(json.dumps({**config, "format": "var_lightning/9"}))
    with pytest.raises(CheckpointError, match="repository format 'var_lightning/9'.*upgrade var_lightning"):
        load_models(pretrained=out2)


def test_a_repository_reads_nothing_outside_itself(var_ckpt, tmp_path, monkeypatch):
    """A config.json naming a LoRA base (here a file outside the repository) is refused before anything
    outside is opened; a damaged record is named, not a Python error."""
    out = load_models(var_ckpt).save_pretrained(tmp_path / "repo")
    config = json.loads((out / "config.json").read_text())
    secret = tmp_path / "outside.ckpt"
    shutil.copyfile(var_ckpt, secret)
    lora = {"base": "../outside.ckpt", "rank": 4, "alpha": 4}
    (out / "config.json").write_text(
        json.dumps({**config, "var_lightning": {**config["var_lightning"], "lora": lora}})
    )
    opened = []
    real_read = __import__("var_lightning.checkpoints.reader", fromlist=["x"]).read_checkpoint
    monkeypatch.setattr("var_lightning.checkpoints.reader.read_checkpoint",
                        lambda p, *a, **k: opened.append(str(p)) or real_read(p, *a, **k))  # fmt: skip
    monkeypatch.chdir(out)
    with pytest.raises(CheckpointError, match=r"names LoRA adapters.*reads no file outside itself"):
        load_models(pretrained=out)
    assert str(secret) not in opened
    (out / "config.json").write_text(json.dumps({**config, "hyper_parameters": "x"}))
    with pytest.raises(CheckpointError, match=r"hyper_parameters is a str, not a mapping"):
        load_models(pretrained=out)


def test_uploads_go_through_huggingface_hub_and_fail_offline_with_the_way_out(
    var_ckpt, tmp_path, monkeypatch, capsys
):
    from huggingface_hub import HfApi

    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw))
                        or f"https://huggingface.co/{repo_id}")  # fmt: skip
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(
        ("upload", kw["repo_id"], sorted(p.name for p in Path(kw["folder_path"]).iterdir()))))  # fmt: skip
    url = load_models(var_ckpt).push_to_hub("me/my-var", private=True)
    assert url == "https://huggingface.co/me/my-var"
    assert calls[0] == ("create", "me/my-var", {"private": True, "exist_ok": True})
    assert calls[1] == ("upload", "me/my-var", ["README.md", "config.json", "model.safetensors"])
    assert all(any(Path(n).match(p) for p in REPO_FILES) for n in calls[1][2])  # a download fetches them all
    monkeypatch.undo()

    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets
    out = tmp_path / "kept"
    rc = convert(["to-hub", str(var_ckpt), "--out-dir", str(out), "--repo-id", "me/my-var"])
    err = capsys.readouterr().err
    assert rc == 2 and "--repo-id me/my-var: the upload failed (OfflineModeIsEnabled" in err
    assert f"The repository is written in {out}" in err and f"hf upload me/my-var {out}" in err
    assert load_models(pretrained=out).info.stage == "var"  # nothing lost: upload it later
    with pytest.raises(ValueError, match="not a Hub repository id"):
        push_to_hub(out, "no-slash")


def test_a_damaged_config_json_is_named_not_taken_for_another_layout(var_ckpt, tmp_path, capsys):
    """Invalid JSON (was "holds no released transformer"), and a field this version does not know (was a
    TypeError), each named with the file and the way out; var-convert to-hub says the same."""
    from var_lightning.cli import convert

    out = load_models(var_ckpt).save_pretrained(tmp_path / "repo")
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match=r"config.json is not valid JSON \(.*\); the file is damaged"):
        load_models(pretrained=out)
    assert convert.main(["to-hub", str(out), "--out-dir", str(tmp_path / "again")]) == 2
    assert "config.json is not valid JSON" in capsys.readouterr().err
    for block, field in (("tokenizer", "chanels"), ("transformer", "dept")):
        hp = {**config["hyper_parameters"], block: {**config["hyper_parameters"][block], field: 3}}
        (out / "config.json").write_text(json.dumps({**config, "hyper_parameters": hp}))
        with pytest.raises(
            CheckpointError, match=rf"{block} config has unknown field\(s\) \['{field}'\].*export it again"
        ):
            load_models(pretrained=out)
