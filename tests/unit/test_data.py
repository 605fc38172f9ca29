"""Data layer: synthetic shapes, VAR transforms, the corruption-tolerant image folder, the datamodules."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms.functional import to_tensor

from var_lightning.data import (
    ImageFolderDataModule,
    SafeImageFolder,
    SyntheticDataModule,
    SyntheticShapes,
    build_transform,
    to_uint8_image,
)

# ---------------------------------------------------------------- synthetic shapes


def _stack(ds: SyntheticShapes) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([ds[i][0] for i in range(len(ds))]), ds.labels_N.clone()


def test_synthetic_is_deterministic_and_splits_differ():
    ds = SyntheticShapes(64, image_size=32, num_classes=10, split="train", seed=3)
    again = SyntheticShapes(64, image_size=32, num_classes=10, split="train", seed=3)
    for i in (0, 17, 63):
        assert torch.equal(ds[i][0], ds[i][0])
        assert torch.equal(ds[i][0], again[i][0]) and ds[i][1] == again[i][1]
    x_train, y_train = _stack(ds)
    x_val, y_val = _stack(SyntheticShapes(64, 32, 10, split="val", seed=3))
    x_seed, _ = _stack(SyntheticShapes(64, 32, 10, split="train", seed=4))
    assert not torch.equal(y_train, y_val)
    assert (x_train - x_val).abs().flatten(1).amax(1).min() > 0.1  # every item differs, not just a few
    assert (x_train - x_seed).abs().flatten(1).amax(1).min() > 0.1


@pytest.mark.parametrize("image_size", [8, 32, 64])
@pytest.mark.parametrize("num_classes", [1, 3, 10, 25])
def test_synthetic_shape_range_and_names(image_size, num_classes):
    ds = SyntheticShapes(2 * num_classes, image_size=image_size, num_classes=num_classes)
    for i in range(len(ds)):
        img_3HW, label = ds[i]
        assert img_3HW.shape == (3, image_size, image_size) and img_3HW.dtype == torch.float32
        assert img_3HW.min() >= -1.0 and img_3HW.max() <= 1.0
        assert isinstance(label, int) and 0 <= label < num_classes
    assert len(ds.class_names) == num_classes == len(set(ds.class_names))


def test_synthetic_class_names_read_as_colour_and_shape():
    names = SyntheticShapes(0, num_classes=10).class_names
    assert names[0] == "red circle" and names[1].endswith("square")


@pytest.mark.parametrize(("num_samples", "num_classes"), [(1000, 10), (100, 3), (7, 25)])
def test_synthetic_classes_are_balanced(num_samples, num_classes):
    counts_C = torch.bincount(SyntheticShapes(num_samples, 8, num_classes).labels_N, minlength=num_classes)
    assert counts_C.sum() == num_samples and counts_C.max() - counts_C.min() <= 1


def _translation_invariant_features(x_B3HW: torch.Tensor) -> torch.Tensor:
    """|FFT| low frequencies per channel: colour (DC) and shape/pattern, blind to the per-sample position."""
    return (torch.fft.fft2(x_B3HW).abs() / x_B3HW.shape[-1])[..., :8, :8].flatten(1)


# Margins measured over seeds 0-3: ratio >= 2.0 / 0.99 and accuracy >= 0.95 / 0.89 for 10 / 25 classes;
# with shuffled labels (indistinct classes) the ratio is ~0.15 and the accuracy chance.
@pytest.mark.parametrize(("num_classes", "min_ratio", "min_acc"), [(10, 1.4, 0.9), (25, 0.8, 0.8)])
def test_synthetic_classes_are_distinct(num_classes, min_ratio, min_acc):
    """Class means stand clear of sampling noise, and a nearest-centroid rule recognises the classes.

    Raw pixel means are blurred by the position jitter, so the comparison is made on translation-invariant
    features. With 25 classes, those sharing a shape family differ in hue only, so the margin is smaller.
    """
    x, y = _stack(SyntheticShapes(60 * num_classes, 32, num_classes, split="train"))
    f_BD = _translation_invariant_features(x)
    per_class = [f_BD[y == c][:50] for c in range(num_classes)]
    half_a_CD = torch.stack([f[:25].mean(0) for f in per_class])
    half_b_CD = torch.stack([f[25:].mean(0) for f in per_class])
    within = (half_a_CD - half_b_CD).norm(dim=1).max()
    centroid_CD = torch.stack([f.mean(0) for f in per_class])
    between_CC = torch.cdist(centroid_CD, centroid_CD).fill_diagonal_(float("inf"))
    assert between_CC.min() > min_ratio * within

    xv, yv = _stack(SyntheticShapes(20 * num_classes, 32, num_classes, split="val"))
    pred = torch.cdist(_translation_invariant_features(xv), centroid_CD).argmin(1)
    assert (pred == yv).float().mean() >= min_acc


def test_synthetic_generation_is_fast():
    ds = SyntheticShapes(500, 32, 10)
    start = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    assert time.perf_counter() - start < 1.5  # ~0.2 ms each; 2,000 take well under a second


# ---------------------------------------------------------------- transforms


def _gradient_image(width: int, height: int) -> Image.Image:
    xs = torch.linspace(0, 255, width).expand(height, width)
    ys = torch.linspace(0, 255, height)[:, None].expand(height, width)
    arr = torch.stack([xs, ys, 255 - xs], dim=-1).to(torch.uint8).numpy()
    return Image.fromarray(arr)


def test_transform_resizes_shorter_side_by_mid_reso_then_crops():
    img = _gradient_image(300, 200)  # W x H; shorter side 200 -> round(1.125 * 64) = 72, long side 108
    resized = img.resize((108, 72), Image.LANCZOS)
    expected_3HW = to_tensor(resized.crop((22, 4, 86, 68))) * 2 - 1

    val = build_transform(64, mid_reso=1.125, train=False)(img)
    assert val.shape == (3, 64, 64) and val.dtype == torch.float32
    assert torch.allclose(val, expected_3HW, atol=1e-6)

    full_3HW = to_tensor(resized) * 2 - 1
    train = build_transform(64, mid_reso=1.125, train=True)(img)
    assert train.shape == (3, 64, 64) and train.min() >= -1 and train.max() <= 1
    crops = [
        full_3HW[:, t : t + 64, left : left + 64] for t in range(72 - 64 + 1) for left in range(108 - 64 + 1)
    ]
    assert any(torch.allclose(train, c, atol=1e-6) for c in crops)  # a crop of the mid_reso-resized image


def test_transform_hflip_only_in_training():
    img = _gradient_image(40, 40)
    assert torch.equal(
        build_transform(32, train=False, hflip=True)(img), build_transform(32, train=False)(img)
    )
    torch.manual_seed(0)
    outs = [build_transform(32, mid_reso=1.0, train=True, hflip=True)(img) for _ in range(20)]
    flipped = [bool(o[0, :, 0].mean() > o[0, :, -1].mean()) for o in outs]  # red rises left -> right
    assert any(flipped) and not all(flipped)


def test_to_uint8_image_round_trip():
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 1, 2, 2)
    assert to_uint8_image(x).flatten().tolist() == [0, 128, 255, 255]


# ---------------------------------------------------------------- image folder


def _write_tree(root, classes=("cat", "ant", "dog"), per_class=3, size=(24, 20)):
    colours = {"ant": (200, 10, 10), "cat": (10, 200, 10), "dog": (10, 10, 200)}
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for k in range(per_class):
            img = Image.new("RGB", size, colours.get(cls, (90, 90, 90)))
            ext = ("png", "jpg", "JPEG")[k % 3]
            img.save(root / cls / f"{k}.{ext}", format="PNG" if ext == "png" else "JPEG", quality=95)
    return root


def test_imagefolder_class_mapping_sorted_and_pinned(tmp_path):
    root = _write_tree(tmp_path / "train")
    (root / "ant" / "notes.txt").write_text("not an image")
    ds = SafeImageFolder(root)
    assert ds.classes == ["ant", "cat", "dog"] and ds.class_to_idx["dog"] == 2
    assert len(ds) == 9 and sorted(set(ds.targets)) == [0, 1, 2]
    img, label = ds[0]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and label == 0
    pinned = SafeImageFolder(root, classes=["dog", "cat", "ant"])
    assert pinned.class_to_idx == {"dog": 0, "cat": 1, "ant": 2} and pinned[0][1] == 0
    with pytest.raises(ValueError, match="data.root"):
        SafeImageFolder(root, classes=["ant", "zebra"])


def _add_corrupt_files(root):
    (root / "ant" / "0_garbage.jpg").write_bytes(b"this is not a jpeg" * 20)
    good = (root / "ant" / "0.png").read_bytes()
    buf = root / "cat" / "0_truncated.jpg"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, format="JPEG")
    buf.write_bytes(buf.read_bytes()[:200])
    return good


def test_imagefolder_skips_and_counts_corrupt_files(tmp_path, caplog):
    root = _write_tree(tmp_path / "train")
    _add_corrupt_files(root)
    ds = SafeImageFolder(root, transform=build_transform(16, train=False))
    assert len(ds) == 11
    bad = [i for i, (p, _) in enumerate(ds.samples) if "garbage" in p or "truncated" in p]
    with caplog.at_level(logging.WARNING, logger="var_lightning.data.imagefolder"):
        items = [ds[i] for i in range(len(ds))]
        assert ds.num_skipped == 2
        for i in bad:  # the replacement is the next index's sample, deterministically; bad files read again
            assert torch.equal(items[i][0], ds[i][0]) and torch.equal(items[i][0], ds[i + 1][0])
            assert items[i][1] == ds.samples[i + 1][1]
        ds.log_summary()
    warned = [r.getMessage() for r in caplog.records if "skipping unreadable image" in r.getMessage()]
    assert len(warned) == 2  # once per file, although each was read twice
    assert any("garbage" in m for m in warned) and any("truncated" in m for m in warned)
    # files, not reads: two bad files read twice each are two, and the summary names them
    summary = [r.getMessage() for r in caplog.records if "unreadable files" in r.getMessage()]
    assert ds.num_skipped == 2 and len(summary) == 1 and "skipped 2 unreadable files out of 11" in summary[0]
    assert "0_garbage.jpg" in summary[0] and "0_truncated.jpg" in summary[0]
    assert [Path(p).name for p in ds.corrupt_files()] == ["0_garbage.jpg", "0_truncated.jpg"]
    assert all(x.shape == (3, 16, 16) for x, _ in items)


@pytest.mark.process
def test_imagefolder_skip_count_includes_dataloader_workers(tmp_path):
    root = _write_tree(tmp_path / "train")
    _add_corrupt_files(root)
    ds = SafeImageFolder(root, transform=build_transform(16, train=False))
    batches = list(DataLoader(ds, batch_size=3, num_workers=2))
    assert sum(len(y) for _, y in batches) == 11
    assert ds.num_skipped == 2


def test_imagefolder_errors_name_path_and_config_key(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="data.root") as err:
        SafeImageFolder(missing)
    assert str(missing) in str(err.value) and "<class_name>" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="data.root") as err:
        SafeImageFolder(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(err.value) and "class sub-folders" in str(err.value)
    (tmp_path / "noimg" / "a").mkdir(parents=True)
    (tmp_path / "noimg" / "a" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="no images") as err:
        SafeImageFolder(tmp_path / "noimg")
    assert "data.root" in str(err.value) and str(tmp_path / "noimg") in str(err.value)


# ---------------------------------------------------------------- datamodules


def _check_batch(batch, batch_size, image_size, num_classes):
    img_B3HW, label_B = batch
    assert img_B3HW.shape == (batch_size, 3, image_size, image_size) and img_B3HW.dtype == torch.float32
    assert img_B3HW.min() >= -1 and img_B3HW.max() <= 1
    assert label_B.dtype == torch.long and label_B.shape == (batch_size,)
    assert label_B.min() >= 0 and label_B.max() < num_classes


def test_synthetic_datamodule_batches():
    dm = SyntheticDataModule(
        image_size=16, num_classes=4, train_size=40, val_size=10, test_size=6, batch_size=8
    )
    assert dm.num_classes == 4 and dm.image_size == 16 and len(dm.class_names) == 4
    dm.setup("fit")
    train = list(dm.train_dataloader())
    assert len(train) == 5
    _check_batch(train[0], 8, 16, 4)
    assert [len(y) for _, y in dm.val_dataloader()] == [8, 2]  # no drop_last outside training
    assert sum(len(y) for _, y in dm.test_dataloader()) == 6
    assert not dm.train_dataloader().persistent_workers


def test_train_order_is_reproducible_per_seed():
    def first_epoch(seed):
        dm = SyntheticDataModule(image_size=8, train_size=64, batch_size=16, seed=seed)
        dm.setup("fit")
        return torch.cat([y for _, y in dm.train_dataloader()])

    assert torch.equal(first_epoch(1), first_epoch(1))
    assert not torch.equal(first_epoch(1), first_epoch(2))
    dm = SyntheticDataModule(image_size=8, train_size=64, batch_size=64)
    dm.setup("fit")
    val_a = torch.cat([y for _, y in dm.val_dataloader()])
    assert torch.equal(val_a, torch.cat([y for _, y in dm.val_dataloader()]))
    assert torch.equal(val_a, dm.datasets["val"].labels_N)  # val is not shuffled


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"image_size": 0}, "data.image_size"),
        ({"batch_size": 0}, "data.batch_size"),
        ({"val_batch_size": -2}, "data.val_batch_size"),
    ],
)
def test_datamodules_validate_config(tmp_path, kwargs, key):
    with pytest.raises(ValueError, match=key):
        SyntheticDataModule(**kwargs)
    with pytest.raises(ValueError, match=key):
        ImageFolderDataModule(root=str(tmp_path), **kwargs)


def test_imagefolder_datamodule_batches(tmp_path):
    _write_tree(tmp_path / "train", per_class=4)
    _write_tree(tmp_path / "val", per_class=2)
    dm = ImageFolderDataModule(
        str(tmp_path), image_size=16, batch_size=4, num_workers=0, persistent_workers=True
    )
    assert dm.num_classes == 3 and dm.class_names == ["ant", "cat", "dog"]
    dm.setup("fit")
    train_loader = dm.train_dataloader()
    assert not train_loader.persistent_workers and train_loader.drop_last
    train = list(train_loader)
    assert len(train) == 3
    _check_batch(train[0], 4, 16, 3)
    val = list(dm.val_dataloader())
    assert [len(y) for _, y in val] == [4, 2]
    assert torch.equal(torch.cat([y for _, y in val]), torch.tensor([0, 0, 1, 1, 2, 2]))
    assert torch.equal(torch.cat([y for _, y in dm.test_dataloader()]), torch.tensor([0, 0, 1, 1, 2, 2]))
    dm.teardown("fit")


def test_imagefolder_datamodule_missing_root_names_config_key(tmp_path):
    dm = ImageFolderDataModule(str(tmp_path / "imagenet"), image_size=16)  # nothing read yet
    with pytest.raises(FileNotFoundError, match="data.root") as err:
        dm.setup("fit")
    assert str(tmp_path / "imagenet" / "train") in str(err.value)
