"""A researcher's own folder: symlink loops, a split smaller than one batch, images in every mode PIL opens."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
from PIL import Image

from var_lightning.data import SafeImageFolder
from var_lightning.data.transforms import to_rgb


def _tree(root, classes=("a", "b"), per_class=3):
    for c in classes:
        (root / c).mkdir(parents=True)
        for k in range(per_class):
            Image.new("RGB", (12, 12), (40 * k, 90, 200)).save(root / c / f"{k}.png")
    return root


def test_directory_symlink_loops_and_duplicate_links_are_read_once(tmp_path, caplog):
    root = _tree(tmp_path / "train")
    os.symlink("..", root / "a" / "up")  # a loop: a/up -> train -> a -> up -> ...
    os.symlink(os.path.abspath(root / "a"), root / "b" / "same_as_a")  # a second link to a folder
    (tmp_path / "extra").mkdir()
    Image.new("RGB", (12, 12)).save(tmp_path / "extra" / "x.png")
    os.symlink(os.path.abspath(tmp_path / "extra"), root / "b" / "linked")  # a link to new images: followed
    with caplog.at_level(logging.WARNING, logger="var_lightning.data.imagefolder"):
        ds = SafeImageFolder(root)
    assert len(ds) == 7 and len({os.path.realpath(p) for p, _ in ds.samples}) == 7
    assert sorted(os.path.basename(p) for p in ds.skipped_links) == ["same_as_a", "up"]
    assert any("skipped 2 linked directories already read" in r.getMessage() for r in caplog.records)


def test_make_shards_input_with_a_symlink_loop(tmp_path):
    from var_lightning.cli.make_shards import make_shards, parse_args

    root = _tree(tmp_path / "train")
    os.symlink("..", root / "b" / "loop")
    man = make_shards(parse_args([str(root), str(tmp_path / "out"), "--workers", "0", "--no-progress"]))
    assert man.num_samples == 6


def _grey(mode: str, level: float):
    """A flat image of brightness ``level`` (0..1) in ``mode``, and the file format that stores it."""
    if mode in ("I;16", "I"):
        sixteen = Image.fromarray(np.full((8, 8), round(level * 65535), dtype=np.uint16))
        return (sixteen, "PNG") if mode == "I;16" else (sixteen.convert("I"), "TIFF")
    if mode == "F":
        return Image.fromarray(np.full((8, 8), level, dtype=np.float32), "F"), "TIFF"
    g = round(level * 255)
    rgb = Image.new("RGB", (8, 8), (g, g, g))
    if mode == "RGBA":
        return rgb.convert("RGBA"), "PNG"
    if mode == "LA":
        return rgb.convert("LA"), "PNG"
    if mode == "P":
        return rgb.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"
    if mode == "CMYK":
        return rgb.convert("CMYK"), "TIFF"
    if mode == "YCbCr":
        return rgb.convert("YCbCr"), None  # JPEG stores it but opens as RGB: tested in memory
    if mode == "LAB":
        from PIL import ImageCms

        t = ImageCms.buildTransformFromOpenProfiles(
            ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB"
        )
        return ImageCms.applyTransform(rgb, t), "TIFF"
    if mode == "HSV":
        return rgb.convert("HSV"), None  # no file format stores it: tested in memory
    return rgb.convert(mode), "PNG"


@pytest.mark.parametrize(
    "mode", ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr", "I;16", "I", "F", "LAB", "HSV"]
)
def test_every_image_mode_keeps_its_brightness(tmp_path, mode):
    """A mid-grey image in each mode loads as mid-grey RGB (16-bit ones used to saturate to white)."""
    level = 1.0 if mode == "1" else 0.5
    img, fmt = _grey(mode, level)
    if fmt is None:
        rgb = to_rgb(img)
    else:
        path = tmp_path / f"x.{fmt.lower()}"
        img.save(path, format=fmt)
        with Image.open(path) as opened:
            opened.load()
            assert opened.mode == img.mode
            rgb = to_rgb(opened)
    assert rgb.mode == "RGB"
    a = np.asarray(rgb, dtype=np.float64)
    assert abs(a.mean() - level * 255) < 4, (mode, a.mean())
    assert a.std() < 1.5


def test_transparency_is_composited_over_white():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))  # fully transparent black
    assert np.asarray(to_rgb(rgba)).min() == 255
    half = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    assert abs(float(np.asarray(to_rgb(half)).mean()) - 127) < 2
