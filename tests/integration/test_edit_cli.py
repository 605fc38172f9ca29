"""`var-edit` end to end: files written, settings recorded, bad input, the released-weights path, the
console entry point, and (slow) class-edit on trained tiny models turning the region toward the class."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import var_lightning
from tests.helpers import compose_config, tiny_vae, tiny_vae_cfg, tiny_var
from var_lightning.cli.edit import run
from var_lightning.data.synthetic import SyntheticShapes, class_hue
from var_lightning.inference.edit_images import mask_to_pixels, synthetic_image
from var_lightning.training.var_module import VARModule
from var_lightning.transformer.editing import EditRequest, edit_region

CONF = Path(var_lightning.__file__).parent / "conf"
NAMES = ["red circle", "yellow square", "green triangle", "blue ring", "magenta cross"]
BOX = "box=[0.25,0.25,0.75,0.75]"


def compose_edit(overrides: list[str]):
    return compose_config("edit", overrides)


def save_var_checkpoint(module: VARModule, path: Path, class_names: list[str] | None) -> Path:
    """The layout ``var-train`` writes, without running a Trainer."""
    meta = {"stage": "var", **({"class_names": class_names} if class_names else {})}
    torch.save(
        {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "var_lightning": meta},
        path,
    )
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    module = VARModule(
        transformer=dict(
            depth=2, width=64, num_heads=2, num_classes=5, drop_path_rate=0.0, init_adaln_gamma=0.5
        ),
        tokenizer=asdict(tiny_vae_cfg()),
    )
    return save_var_checkpoint(module, tmp_path_factory.mktemp("edit") / "var.ckpt", NAMES)


def edit_run(ckpt: Path, out: Path, *overrides: str) -> dict:
    cfg = compose_edit(
        [f"ckpt_path={ckpt}", "device=cpu", "top_k=0", "top_p=0", "num_variations=2", *overrides]
    )
    out.mkdir(parents=True, exist_ok=True)
    return run(cfg, out)


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_inpaint_writes_results_panel_and_settings(ckpt, tmp_path):
    meta = edit_run(ckpt, tmp_path, "image=synthetic:1:0", BOX, "mode=inpaint", "num_variations=3")
    for name in (
        "result_0.png",
        "result_1.png",
        "result_2.png",
        "original.png",
        "reconstruction.png",
        "panel.png",
    ):
        assert (tmp_path / name).is_file(), name
    assert not (tmp_path / "result_3.png").exists()
    assert png(tmp_path / "result_0.png").shape == (8, 8, 3)
    saved = json.loads((tmp_path / "edit.json").read_text())
    assert saved == json.loads(json.dumps(meta))
    assert saved["mode"] == "inpaint" and saved["class"] is None and saved["token_grid"] == 4
    assert saved["kept_token_fraction"] == pytest.approx(12 / 16)  # the central 2x2 of 4x4 tokens regenerated
    assert saved["box"] == [0.25, 0.25, 0.75, 0.75] and saved["seed"] == 0 and len(saved["results"]) == 3
    w, h = Image.open(tmp_path / "panel.png").size
    assert w == 6 * (128 + 4) + 4 and h == 16 + 128 + 4  # original | reconstruction | mask | 3 results
    # the second cell is the tokenizer's reconstruction (what kept regions are compared with), upscaled 16x
    recon_cell = png(tmp_path / "panel.png")[16 : 16 + 128, 4 + 128 + 4 : 4 + 2 * 128 + 4]
    assert np.array_equal(recon_cell[::16, ::16], png(tmp_path / "reconstruction.png"))
    assert saved["input_crop"] is None  # a square input
    # the same settings give the same files
    again = tmp_path / "again"
    edit_run(ckpt, again, "image=synthetic:1:0", BOX, "mode=inpaint", "num_variations=3")
    assert np.array_equal(png(tmp_path / "result_2.png"), png(again / "result_2.png"))


def test_class_edit_by_name_with_a_mask_png_and_outpaint(ckpt, tmp_path):
    mask = np.zeros((8, 8), np.uint8)
    mask[0:4, 0:8] = 255  # the top half
    Image.fromarray(mask).save(tmp_path / "mask.png")
    Image.fromarray((np.random.default_rng(0).random((12, 20, 3)) * 255).astype(np.uint8)).save(
        tmp_path / "in.png"
    )
    meta = edit_run(
        ckpt,
        tmp_path / "ce",
        f"image={tmp_path / 'in.png'}",
        f"mask={tmp_path / 'mask.png'}",
        "mode=class-edit",
        "class='blue ring'",
        "cfg=2.0",
    )
    assert meta["class"] == 3 and meta["class_name"] == "blue ring" and meta["kept_token_fraction"] == 0.5
    # a 20x12 input loses its sides to the centre crop: said in the log and edit.json
    assert meta["input_crop"].startswith(
        "the 20x12 input is resized (shorter side to 8) and centre-cropped to 8x8"
    )
    assert "20.0% of the image on each of the left and right (40% in all) is not edited" in meta["input_crop"]
    out = edit_run(
        ckpt, tmp_path / "op", "image=synthetic:0:0", "box=[2,2,6,6]", "mode=outpaint", "class=null"
    )
    assert out["kept_token_fraction"] == pytest.approx(4 / 16)  # pixels 2..6 of 8 = tokens 1..3 of 4
    panel = png(tmp_path / "op" / "panel.png")
    mask_cell = panel[16 : 16 + 128, 4 + 2 * (128 + 4) : 4 + 2 * (128 + 4) + 128]
    assert (mask_cell[32:96, 32:96] == 0).all() and (mask_cell[:32] == 255).all()  # black = kept box


def test_mask_of_another_size_is_resized_with_a_warning(ckpt, tmp_path, caplog):
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    Image.fromarray(mask).save(tmp_path / "big_mask.png")
    with caplog.at_level(logging.WARNING, logger="var_lightning.inference.edit_images"):
        meta = edit_run(ckpt, tmp_path, "image=synthetic:2:0", f"mask={tmp_path / 'big_mask.png'}")
    assert "resizing the mask" in caplog.text
    assert meta["kept_token_fraction"] == pytest.approx(12 / 16)


@pytest.mark.parametrize(
    "overrides,error,match",
    [
        (
            ["image=synthetic:1:0", BOX, "mode=class-edit", "class=5"],
            ValueError,
            r"class=5 is out of range.*0\.\.4",
        ),
        (
            ["image=synthetic:1:0", BOX, "mode=class-edit", "class=purple"],
            ValueError,
            "neither a class id nor one of this model's class names",
        ),
        (["image=synthetic:1:0", BOX, "mode=class-edit"], ValueError, "needs the class"),
        (
            ["image=synthetic:1:0", "box=[0.2,0.2,1.5,0.8]", "mode=inpaint"],
            ValueError,
            r"box=\[0.2, 0.2, 1.5, 0.8\]: 1.5 is out of range for fractions of the side \(0..1\)",
        ),
        (["image=synthetic:1:0", BOX, "class=2"], ValueError, "only with mode=class-edit"),
        (["image=synthetic:1:0", "box=[0.5,0.5,0.55,0.55]"], ValueError, "region is empty"),
        (["image=synthetic:1:0", "box=[0.7,0.1,0.2,0.9]"], ValueError, "key box"),
        (["image=synthetic:1:0"], ValueError, "exactly one of mask"),
        (["image=synthetic:1:0", BOX, "mode=erase"], ValueError, "key mode"),
        (["image=/nonexistent/photo.png", BOX], FileNotFoundError, "no such file"),
    ],
)
def test_bad_input_gives_clear_errors(ckpt, tmp_path, overrides, error, match):
    with pytest.raises(error, match=match):
        edit_run(ckpt, tmp_path, *overrides)


def test_unreadable_image_and_empty_mask(ckpt, tmp_path):
    (tmp_path / "photo.jpg").write_text("this is text, not a JPEG")
    with pytest.raises(ValueError, match=r"cannot be read as an image.*key image"):
        edit_run(ckpt, tmp_path, f"image={tmp_path / 'photo.jpg'}", BOX)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "black.png")
    for mode in ("inpaint", "outpaint"):
        with pytest.raises(ValueError, match="region is empty"):
            edit_run(ckpt, tmp_path, "image=synthetic:0:0", f"mask={tmp_path / 'black.png'}", f"mode={mode}")


def test_released_layout_weights_give_the_same_edit(ckpt, tmp_path):
    from var_lightning.checkpoints.load import load_models
    from var_lightning.checkpoints.published import export_official_vae, export_official_var

    var, vae, _ = load_models(ckpt)
    torch.save(export_official_var(var), tmp_path / "var_d2.pth")
    torch.save(export_official_vae(vae), tmp_path / "vae.pth")
    common = ["image=synthetic:1:0", BOX, "mode=class-edit", "class=2", "cfg=1.5"]
    edit_run(ckpt, tmp_path / "ours", *common)
    meta = edit_run(
        tmp_path / "var_d2.pth", tmp_path / "released", f"vae_path={tmp_path / 'vae.pth'}", *common
    )
    assert meta["class_name"] is None  # the released weights carry no names
    for i in range(2):
        assert np.array_equal(
            png(tmp_path / "ours" / f"result_{i}.png"), png(tmp_path / "released" / f"result_{i}.png")
        )


@pytest.mark.process
def test_entry_point_runs_from_another_directory(ckpt, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "var_lightning.cli.edit",
        f"ckpt_path={ckpt}",
        "image=synthetic:3:1",
        BOX,
        "mode=class-edit",
        "class=1",
        "top_k=0",
        "top_p=0",
        "num_variations=2",
        "device=cpu",
        f"hydra.run.dir={run_dir}",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run_dir / "panel.png").is_file() and (run_dir / "result_1.png").is_file()
    assert json.loads((run_dir / "edit.json").read_text())["class_name"] == "yellow square"
    assert (run_dir / "edit.log").is_file() and "panel" in (run_dir / "edit.log").read_text()


# ---------------------------------------------------------------- trained tiny models (slow)
NUM_CLASSES, SCHEDULE = 4, (1, 2, 3, 4, 6, 8)  # 16 px images, 8x8 tokens


def train_tiny_models(steps_tokenizer: int = 300, steps_var: int = 400):
    """A tokenizer and a VAR on the synthetic shapes, trained with plain loops (the Lightning path is
    covered by test_training.py; here only trained weights matter, and plain loops are ~2x cheaper)."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    data = SyntheticShapes(512, image_size=16, num_classes=NUM_CLASSES, split="train", seed=0)
    imgs = torch.stack([data[i][0] for i in range(len(data))])
    labels = data.labels_N.clone()
    vae = tiny_vae(
        patch_nums=SCHEDULE, ch=16, ch_mult=(1, 2), norm_groups=8, attn_mid=False, attn_lowest=False
    )
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    for _ in range(steps_tokenizer):
        x = imgs[torch.randint(0, len(imgs), (32,), generator=g)]
        rec, q = vae(x)
        loss = (rec - x).abs().mean() + F.mse_loss(rec, x) + q.vq_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        idx, x_BLCv = vae.img_to_var_input(imgs)
    gt_BL = torch.cat(idx, 1)
    var = tiny_var(patch_nums=SCHEDULE, num_classes=NUM_CLASSES, width=64, init_adaln_gamma=1e-3)
    opt = torch.optim.AdamW(var.parameters(), lr=3e-3, weight_decay=0.01)
    for _ in range(steps_var):
        b = torch.randint(0, len(imgs), (64,), generator=g)
        lab = torch.where(torch.rand(64, generator=g) < 0.1, NUM_CLASSES, labels[b])  # label dropout for CFG
        loss = F.cross_entropy(var(lab, x_BLCv[b]).flatten(0, 1), gt_BL[b].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return vae, var.eval()


def region_hue(images_N3HW: torch.Tensor, region_HW: torch.Tensor) -> torch.Tensor:
    """Circular mean hue angle (N,) of the bright, saturated (shape) pixels inside the region."""
    hi, lo = images_N3HW.max(1).values, images_N3HW.min(1).values
    r, g, b = images_N3HW.unbind(1)
    angle = torch.atan2(math.sqrt(3) * (g - b), 2 * r - g - b)
    w = ((hi > 0.45) & ((hi - lo) / hi.clamp(min=1e-6) > 0.35)).float() * region_HW
    return torch.atan2((w * angle.sin()).sum((1, 2)), (w * angle.cos()).sum((1, 2)))


def hue_distance(angle: torch.Tensor, label: int) -> torch.Tensor:
    """Angle on the colour wheel between a hue and the class's hue, in [0, pi]."""
    d = (angle - 2 * math.pi * class_hue(label, NUM_CLASSES)).abs() % (2 * math.pi)
    return torch.minimum(d, 2 * math.pi - d)


@pytest.fixture(scope="module")
def trained():
    return train_tiny_models()


@pytest.mark.slow
def test_trained_inpainting_keeps_the_outside_close_to_the_reconstruction(trained):
    vae, var = trained
    for src in range(NUM_CLASSES):
        img, _ = synthetic_image(f"synthetic:{src}:0", 16, NUM_CLASSES)
        request = EditRequest.of(var, vae, img, (0.25, 0.25, 0.75, 0.75), mode="inpaint")
        out = edit_region(var, vae, request, num_variations=4, seed=0)
        keep_HW = mask_to_pixels(out.keep_mask[0], 16)
        err_N = ((out.images - out.reconstruction).abs().mean(1) * keep_HW).sum((1, 2)) / keep_HW.sum()
        assert err_N.max() < 0.06, (src, err_N)  # mean |difference| in [0, 1] units, outside the box


@pytest.mark.slow
def test_class_edit_turns_the_region_toward_the_requested_class(trained):
    # Each held-out image (2 per class) is class-edited to every class over (nearly) the whole shape. The
    # shapes' hue identifies the class, so (a) the region's hue should move toward the requested class's
    # hue (a no-op edit never "moves"; unconditional regeneration would about half the time), and (b) for
    # each image the region should be nearest to hue k when k is requested (chance: 1 in 4).
    vae, var = trained
    box, moved, pairs, wins, cells = (0.15, 0.15, 0.85, 0.85), 0, 0, 0, 0
    for src in range(NUM_CLASSES):
        for index in range(2):
            img, _ = synthetic_image(f"synthetic:{src}:{index}", 16, NUM_CLASSES)
            dist_TK = torch.zeros(NUM_CLASSES, NUM_CLASSES)  # requested class x hue of class
            for tgt in range(NUM_CLASSES):
                request = EditRequest.of(var, vae, img, box, mode="class-edit", label=tgt)
                out = edit_region(var, vae, request, cfg=3.0, num_variations=4, seed=0)
                region_HW = 1 - mask_to_pixels(out.keep_mask[0], 16)
                hue_N = region_hue(out.images, region_HW)
                dist_TK[tgt] = torch.stack([hue_distance(hue_N, k).mean() for k in range(NUM_CLASSES)])
                if tgt != src:
                    before = hue_distance(region_hue(img.add(1).mul(0.5), region_HW), tgt).item()
                    moved, pairs = moved + int(dist_TK[tgt, tgt] < before), pairs + 1
            for k in range(NUM_CLASSES):
                others = torch.cat([dist_TK[:k, k], dist_TK[k + 1 :, k]])
                wins, cells = wins + int(dist_TK[k, k] < others.min()), cells + 1
    assert moved >= 2 / 3 * pairs, (
        f"the region's hue moved toward the requested class in {moved} of {pairs} edits"
    )
    assert wins >= 0.6 * cells, f"the region was nearest the requested hue in {wins} of {cells} cases"
