"""The web app's callbacks without a browser: the same images as var-sample / var-edit for the same settings,
the coarse-to-fine progression streamed scale by scale, brush and box regions, and a message (never a
traceback) for every bad input."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import tiny_vae_cfg
from tests.integration.test_sample_cli import compose_sample
from var_lightning.checkpoints.load import load_models
from var_lightning.inference.webapp import AppError, VarApp
from var_lightning.training.var_module import VARModule

NAMES = ["red", "green", "blue", "cyan", "pink"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    module = VARModule(
        transformer=dict(
            depth=2, width=64, num_heads=2, num_classes=5, drop_path_rate=0.0, init_adaln_gamma=0.5
        ),
        tokenizer=asdict(tiny_vae_cfg()),
        sampling=dict(cfg=2.0, top_k=0, top_p=0.0),
    )
    path = tmp_path_factory.mktemp("app") / "var.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "var_lightning": {"stage": "var", "class_names": NAMES}}, path)  # fmt: skip
    return path


@pytest.fixture()
def app(ckpt, tmp_path) -> VarApp:
    return VarApp(load_models(ckpt), tmp_path / "app")


def png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_sampling_streams_every_scale_then_gives_var_samples_images(app, ckpt, tmp_path):
    from var_lightning.cli.sample import run

    d = app.defaults()
    assert d == {"cfg": 2.0, "top_k": 0, "top_p": 0.0, "more_smooth": False}  # the checkpoint's, as stored
    updates = list(app.sample(["1: green", "3"], 2, d["cfg"], d["top_k"], d["top_p"], False, 5))
    scales = len(app.var.patch_nums)
    assert [len(u["progression"]) for u in updates[:-1]] == list(range(1, scales + 1)) and updates[-1]["done"]
    assert updates[0]["progression"][0][1] == "scale 1/4: 1x1 tokens"
    final = updates[-1]
    meta = json.loads(Path(final["files"][1]).read_text())
    assert meta["classes"] == [1, 3] and meta["seed"] == 5 and meta["top_p"] == 0.0
    # the command the page prints gives byte-identical images
    cli = run(compose_sample([f"ckpt_path={ckpt}", "classes=[1,3]", "num_per_class=2", "seed=5", "device=cpu"]),
              tmp_path / "cli")  # fmt: skip
    for ours in final["images"]:
        assert np.array_equal(png(ours), png(Path(cli["samples"]) / Path(ours).name))
    assert final["settings"]["same as"].startswith(
        f"var-sample ckpt_path={ckpt} classes=[1,3] num_per_class=2"
    )


def test_a_box_edit_equals_var_edit_and_a_brush_region_works(app, ckpt, tmp_path):
    from tests.integration.test_edit_cli import compose_edit
    from var_lightning.cli.edit import run

    rng = np.random.default_rng(0)
    photo = Image.fromarray((rng.random((18, 30, 3)) * 255).astype(np.uint8))
    photo.save(tmp_path / "photo.png")
    d = app.defaults()
    out = app.edit(
        photo, "box", [0.25, 0.25, 0.75, 0.75], "class-edit", "blue", 3.0, d["top_k"], 1.0, True, 7, 2
    )
    assert len(out["results"]) == 2 and out["settings"]["class"] == 2
    meta = run(compose_edit([f"ckpt_path={ckpt}", f"image={tmp_path / 'photo.png'}", "box=[0.25,0.25,0.75,0.75]",
                             "mode=class-edit", "class=blue", "cfg=3", "seed=7", "num_variations=2", "device=cpu"]),
               tmp_path / "cli")  # fmt: skip
    for i, img in enumerate(out["results"]):
        assert np.array_equal(np.asarray(img), png(meta["results"][i]))
    # the panel shows the tokenizer's reconstruction, and the 30x18 photo's crop is said
    assert np.array_equal(np.asarray(out["reconstruction"]), png(tmp_path / "cli" / "reconstruction.png"))
    assert "the 30x18 input is resized" in out["settings"]["input_crop"] == meta["input_crop"]
    # brush: the painted layer is the region (drawn on the photo at its own size)
    layer = np.zeros((18, 30, 4), np.uint8)
    layer[:, :15, 3] = 255  # the left half
    brushed = app.edit({"background": photo, "layers": [Image.fromarray(layer)], "composite": photo}, "brush",
                       [0, 0, 1, 1], "inpaint", None, 1.5, 0, 1.0, False, 0, 1)  # fmt: skip
    assert brushed["settings"]["kept_token_fraction"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda a: a.edit(None, "box", [0.2, 0.2, 0.8, 0.8], "inpaint", None, 1, 0, 1, False, 0, 1), "upload an image first"),
        (lambda a: a.edit({"background": Image.new("RGB", (8, 8)), "layers": []}, "brush", [0, 0, 1, 1], "inpaint", None,
                          1, 0, 1, False, 0, 1), "the brushed region is empty"),
        (lambda a: a.edit(Image.new("RGB", (8, 8)), "box", [0.5, 0.5, 0.55, 0.55], "inpaint", None, 1, 0, 1, False, 0, 1),
         "region is empty at the model's 4x4 token grid"),
        (lambda a: a.edit(Image.new("RGB", (8, 8)), "box", [0.8, 0.2, 0.2, 0.8], "inpaint", None, 1, 0, 1, False, 0, 1),
         "is not a box inside the image"),
        (lambda a: a.edit(Image.new("RGB", (8, 8)), "box", [0.2, 0.2, 0.8, 0.8], "class-edit", "9", 1, 0, 1, False, 0, 1),
         "class to paint 9 is out of range: this model has 5 classes"),
        (lambda a: a.edit(Image.new("RGB", (8, 8)), "box", [0.2, 0.2, 0.8, 0.8], "class-edit", None, 1, 0, 1, False, 0, 1),
         "pick a class to paint"),
        (lambda a: list(a.sample(["7"], 1, 1.5, 0, 1, False, 0)), "class 7 is out of range"),
        (lambda a: list(a.sample(["zebra"], 1, 1.5, 0, 1, False, 0)), "'zebra' is neither a class id nor one of"),
        (lambda a: list(a.sample([], 1, 1.5, 0, 1, False, 0)), "pick at least one class"),
        (lambda a: list(a.sample(["1"], 1, -1, 0, 1, False, 0)), "cfg=-1.0 is negative"),
        (lambda a: list(a.sample(["1"], 1, 1.5, 0, 1.5, False, 0)), "top_p=1.5 is outside [0, 1] (top-p keeps"),
        (lambda a: list(a.sample(["1"], 1, float("nan"), 0, 1, False, 0)), "cfg must be a finite number, got nan"),
        (lambda a: list(a.sample(["1"], 1, 1.5, float("inf"), 1, False, 0)), "top-k must be a whole number"),
        (lambda a: list(a.sample(["1"], 1, 1.5, 0, 1, False, float("nan"))), "seed must be a whole number"),
        (lambda a: list(a.sample(["1"], 1, 1.5, 0, 1, False, 2**70)), "seed must be in 0..4294967295"),
        (lambda a: list(a.sample(["1"], 1, 1.5, 999, 1, False, 0)), "top_k=999 is outside 0..64"),
        (lambda a: list(a.sample(["1"], 100, 1.5, 0, 1, False, 0)), "at most 64 per request"),
        (lambda a: list(a.sample(["1"], 1.5, 1.5, 0, 1, False, 0)), "images per class must be a whole number"),
    ],
)  # fmt: skip
def test_bad_inputs_give_a_message(app, call, message):
    with pytest.raises(AppError) as err:
        call(app)
    assert message in str(err.value)
