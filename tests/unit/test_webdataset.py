"""WebDataset shards: writing (limits, manifest, resumable, corrupt files), the data module (epoch length, seeded
order, mid-epoch skip, rank split, corrupt samples), pre-tokenized shards, and the errors users hit."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from var_lightning.cli.make_shards import make_shards, parse_args
from var_lightning.data.shard_writer import ShardWriter
from var_lightning.data.shards import MANIFEST_NAME, Manifest, read_manifest
from var_lightning.data.synthetic import SyntheticShapes
from var_lightning.data.transforms import build_transform, to_uint8_image
from var_lightning.data.webdataset import EvalStream, WebDatasetDataModule


def write_tree(root: Path, n: int = 36, num_classes: int = 3, size: int = 12, seed: int = 1) -> Path:
    """An ImageFolder tree of synthetic PNGs: root/c<k>/<i>.png."""
    ds = SyntheticShapes(n, image_size=size, num_classes=num_classes, seed=seed)
    for i in range(n):
        x, y = ds[i]
        d = root / f"c{y}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(to_uint8_image(x[None])[0].permute(1, 2, 0).numpy()).save(d / f"{i:03d}.png")
    return root


def shard(tree: Path, out: Path, *extra: str) -> Manifest:
    return make_shards(parse_args([str(tree), str(out), "--workers", "0", "--no-progress", *extra]))


def tar_members(path: Path) -> list[str]:
    with tarfile.open(path) as t:
        return t.getnames()


def digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.tar"))}


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return write_tree(tmp_path_factory.mktemp("tree") / "train")


@pytest.fixture(scope="module")
def shards(tree, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wds") / "train"
    shard(tree, out, "--max-count", "5")
    return out


# ---------------------------------------------------------------------------------------------- writing
def test_shards_respect_limits_and_manifest_describes_them(tree, shards):
    man = read_manifest(shards)
    assert man.complete and man.kind == "images" and man.classes == ["c0", "c1", "c2"]
    assert man.num_samples == 36 and len(man.shards) == 8
    assert [r.num_samples for r in man.shards] == [5] * 7 + [1]
    seen = {}
    for rec in man.shards:
        names = tar_members(shards / rec.name)
        assert len(names) == 3 * rec.num_samples  # png + cls + json per sample
        with tarfile.open(shards / rec.name) as t:
            for name in names:
                if name.endswith(".json"):
                    meta = json.loads(t.extractfile(name).read())
                    seen[meta["path"]] = meta
                    assert meta["class"] == f"c{meta['label']}" and meta["path"].startswith(
                        meta["class"] + "/"
                    )
                    assert t.extractfile(name.replace(".json", ".cls")).read() == str(meta["label"]).encode()
    assert len(seen) == 36  # every source image exactly once
    # the order is shuffled: shards are not one class each
    assert len({m["label"] for m in list(seen.values())[:10]}) > 1


def test_byte_limit_closes_shards(tree, tmp_path):
    limit = 7000
    man = shard(tree, tmp_path / "out", "--max-size", str(limit))
    assert man.num_samples == 36 and len(man.shards) > 8
    for i, rec in enumerate(man.shards):
        with tarfile.open(tmp_path / "out" / rec.name) as t:
            sizes = [m.size + 512 for m in t.getmembers()]  # payload + header, in sample order
        per_sample = [sum(sizes[j : j + 3]) for j in range(0, len(sizes), 3)]
        assert sum(per_sample[:-1]) < limit  # it did not close early
        if i < len(man.shards) - 1:
            assert sum(per_sample) >= limit  # it closed as soon as the limit was reached


def test_interrupted_writing_resumes_to_identical_shards(tree, tmp_path, monkeypatch):
    ref = tmp_path / "ref"
    shard(tree, ref, "--max-count", "4")
    out = tmp_path / "out"
    calls = {"n": 0}
    original = ShardWriter.write

    def crash_after_14(self, *a, **k):
        calls["n"] += 1
        if calls["n"] > 14:
            raise KeyboardInterrupt("simulated kill")
        return original(self, *a, **k)

    monkeypatch.setattr(ShardWriter, "write", crash_after_14)
    with pytest.raises(KeyboardInterrupt):
        shard(tree, out, "--max-count", "4")
    partial = json.loads((out / MANIFEST_NAME).read_text())
    assert not partial["complete"] and len(partial["shards"]) == 3
    with pytest.raises(ValueError, match="incomplete.*rerun the same"):
        read_manifest(out)
    monkeypatch.setattr(ShardWriter, "write", original)
    man = shard(tree, out, "--max-count", "4")
    assert man.complete and digests(out) == digests(ref) and not list(out.glob("*.tmp"))
    with pytest.raises(ValueError, match="other settings.*--overwrite"):
        shard(tree, out, "--max-count", "5")
    assert len(shard(tree, out, "--max-count", "5", "--overwrite").shards) == 8


def test_unreadable_images_are_skipped_and_listed(tmp_path):
    root = write_tree(tmp_path / "tree", n=9)
    (root / "c0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    man = shard(root, tmp_path / "out")
    assert man.num_samples == 9 and man.skipped == ["c0/broken.png"]


# ---------------------------------------------------------------------------------------------- reading
def _collect(loader, limit=None):
    out = []
    for i, (x, y) in enumerate(loader):
        out.append((x, y))
        if limit is not None and i + 1 >= limit:
            break
    return out


def test_datamodule_epochs_are_fixed_length_seeded_and_differ(shards):
    dm = WebDatasetDataModule(
        str(shards), image_size=8, mid_reso=1.25, batch_size=4, num_workers=0, shuffle_buffer=8
    )
    dm.setup("fit")
    assert dm.num_classes == 3 and dm.class_names == ["c0", "c1", "c2"] and dm.image_size == 8
    loader = dm.train_dataloader()
    assert len(loader) == 36 // 4
    epoch0, epoch1 = _collect(loader), _collect(loader)
    assert len(epoch0) == len(epoch1) == 9
    x, y = epoch0[0]
    assert x.shape == (4, 3, 8, 8) and y.dtype == torch.int64 and x.min() >= -1 and x.max() <= 1
    again = WebDatasetDataModule(
        str(shards), image_size=8, mid_reso=1.25, batch_size=4, num_workers=0, shuffle_buffer=8
    )
    again.setup("fit")
    for (a, la), (b, lb) in zip(epoch0, _collect(again.train_dataloader()), strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)  # same seed, same epoch: same batches
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(epoch0, epoch1, strict=True))


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.process
def test_mid_epoch_resume_skips_exactly_the_consumed_batches(shards, workers):
    def stream(start: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        dm = WebDatasetDataModule(
            str(shards), image_size=8, batch_size=3, num_workers=workers, shuffle_buffer=6, hflip=True
        )
        dm.setup("fit")
        loader = dm.train_dataloader()
        return list(loader._start(epoch=1, consumed=start))

    full, resumed = stream(0), stream(5)
    assert len(full) == 12 and len(resumed) == 7
    for (a, la), (b, lb) in zip(full[5:], resumed, strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)  # random crops/flips included


def test_validation_splits_samples_exactly_across_ranks(shards):
    man = read_manifest(shards)
    urls = [str(shards / r.name) for r in man.shards]
    counts = [r.num_samples for r in man.shards]
    tf = WebDatasetDataModule(str(shards), image_size=8)._decoder(False)
    keys_per_rank = []
    for rank in range(3):
        s = EvalStream(urls, tf, batch_size=4, counts=counts)
        s.rank, s.world = rank, 3
        keys_per_rank.append([y for _, ys in s for y in ys.tolist()])
    assert [len(k) for k in keys_per_rank] == [12, 12, 12]
    single = EvalStream(urls, tf, batch_size=4, counts=counts)
    assert sorted(sum(keys_per_rank, [])) == sorted(y for _, ys in single for y in ys.tolist())


def test_corrupt_samples_are_skipped_and_counted(tmp_path, caplog):
    root = write_tree(tmp_path / "tree", n=12)
    out = tmp_path / "out"
    shard(root, out, "--max-count", "12")
    path = out / read_manifest(out).shards[0].name
    with tarfile.open(path) as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
    with tarfile.open(path, "w") as t:  # garble the 3rd image
        for i, (m, data) in enumerate(members):
            if i == 6:
                data = b"garbage" * 10
                m.size = len(data)
            t.addfile(m, io.BytesIO(data))
    dm = WebDatasetDataModule(
        str(out), val_shards=str(out), image_size=8, batch_size=2, num_workers=0, shuffle_buffer=1
    )
    dm.setup("fit")
    with caplog.at_level(logging.WARNING):
        val = [y for _, ys in dm.val_dataloader() for y in ys.tolist()]
    assert len(val) == 11 and dm.num_skipped == 1 and "cannot be decoded" in caplog.text
    assert len(_collect(dm.train_dataloader())) == 6


# ---------------------------------------------------------------------------------------------- errors
def test_errors_name_the_problem_the_key_and_the_fix(shards, tmp_path, caplog):
    with pytest.raises(FileNotFoundError, match=r"data.train_shards.*var-make-shards"):
        WebDatasetDataModule(str(tmp_path / "nowhere")).setup("fit")
    with pytest.raises(FileNotFoundError, match=r"data.train_shards: 1 of 2 shards are missing"):
        WebDatasetDataModule(
            [str(shards / "train-000000.tar"), str(tmp_path / "gone.tar")], num_classes=3
        ).setup("fit")
    with pytest.raises(ConnectionError, match=r"data.train_shards: cannot reach shard http://127.0.0.1:9/"):
        WebDatasetDataModule(
            "http://127.0.0.1:9/train-{000000..000003}.tar", train_samples=40, num_classes=3, image_size=8
        ).setup("fit")
    bare = tmp_path / "bare"  # shards without a manifest
    bare.mkdir()
    for i in range(2):
        (bare / f"train-{i:06d}.tar").write_bytes((shards / f"train-{i:06d}.tar").read_bytes())
    with pytest.raises(ValueError, match=r"data.train_samples is required"):
        WebDatasetDataModule(str(bare / "train-{000000..000001}.tar"), num_classes=3).setup("fit")
    with pytest.raises(ValueError, match=r"data.num_classes is required"):
        _ = WebDatasetDataModule(str(bare / "train-{000000..000001}.tar"), train_samples=10).num_classes
    dm = WebDatasetDataModule(
        str(bare / "train-{000000..000001}.tar"),
        train_samples=10,
        num_classes=3,
        image_size=8,
        batch_size=5,
        num_workers=0,
    )
    dm.setup("fit")
    assert len(dm.train_dataloader()) == 2 and dm.num_classes == 3
    with pytest.raises(ValueError, match=r"hold images but data.pretokenized=True.*--tokenizer"):
        WebDatasetDataModule(str(shards), pretokenized=True).setup("fit")
    with pytest.raises(ValueError, match=r"some readers would get no shard.*data.resampled=true"):
        WebDatasetDataModule(str(shards), num_workers=9, resampled=False).setup("fit")
    with caplog.at_level(logging.WARNING):
        WebDatasetDataModule(str(shards), num_workers=9, image_size=8).setup("fit")
    assert "8 shards for 1 ranks x 9 workers" in caplog.text
    with pytest.raises(ValueError, match=r"data.image_size is null and no model filled it in"):
        WebDatasetDataModule(str(shards), num_workers=0).setup("fit")


# ---------------------------------------------------------------------------------------------- tokens
@pytest.fixture(scope="module")
def tokenizer_ckpt(tokenizer_file) -> Path:
    return tokenizer_file  # the session's untrained tiny tokenizer (8 px images; tests/conftest.py)


def test_pretokenized_shards_hold_the_token_pyramids_and_skip_the_encoder(tree, tokenizer_ckpt, tmp_path):
    from var_lightning.checkpoints.load import load_tokenizer
    from var_lightning.training.var_module import VARModule

    out = tmp_path / "tok"
    man = shard(tree, out, "--tokenizer", str(tokenizer_ckpt), "--batch-size", "36", "--max-count", "10")
    assert (
        man.kind == "tokens"
        and man.tokenizer["patch_nums"] == [1, 2, 4]
        and man.tokenizer["dtype"] == "uint16"
    )
    vae = load_tokenizer(tokenizer_ckpt).eval()
    dm = WebDatasetDataModule(str(out), val_shards=str(out), pretokenized=True, batch_size=6, num_workers=0)
    dm.setup("fit")
    assert dm.image_size == 8 and dm.tokenizer_meta["fingerprint"] == man.tokenizer["fingerprint"]
    tokens_BL, labels = next(iter(dm.val_dataloader()))
    assert tokens_BL.shape == (6, 21) and tokens_BL.dtype == torch.int64
    # the stored pyramid is the tokenizer's tokens of the centre crop (val order = shard order)
    with tarfile.open(out / man.shards[0].name) as t:
        metas = [json.loads(t.extractfile(n).read()) for n in t.getnames() if n.endswith(".json")][:6]
        raw = [np.load(io.BytesIO(t.extractfile(n).read())) for n in t.getnames() if n.endswith(".tok.npy")][
            :6
        ]
    tf = build_transform(8, 1.125, train=False)
    imgs = torch.stack([tf(Image.open(tree / m["path"]).convert("RGB")) for m in metas])
    assert torch.equal(torch.cat(vae.img_to_idx(imgs), 1), tokens_BL)
    assert torch.equal(
        torch.cat(vae.img_to_idx(imgs.flip(-1)), 1), torch.from_numpy(np.stack(raw)[:, 1].astype(np.int64))
    )
    # VARModule builds the same teacher-forcing input from tokens as from images
    module = VARModule(
        transformer=dict(depth=1, width=32, num_heads=2, num_classes=3), tokenizer_ckpt=str(tokenizer_ckpt)
    )
    gt_img, x_img = module.tokenize(imgs)
    gt_tok, x_tok = module.tokenize(tokens_BL)
    assert torch.equal(gt_img, gt_tok) and torch.allclose(x_img, x_tok, atol=1e-6)
    with pytest.raises(ValueError, match="does not fit the tokenizer.*var-make-shards --tokenizer"):
        module.tokenize(tokens_BL[:, :10])


def test_training_refuses_shards_of_another_tokenizer(tree, tokenizer_ckpt, tmp_path):
    from var_lightning.cli.train import check_pretokenized
    from var_lightning.training.var_module import VARModule

    out = tmp_path / "tok"
    shard(tree, out, "--tokenizer", str(tokenizer_ckpt), "--batch-size", "36")
    dm = WebDatasetDataModule(str(out), pretokenized=True)
    module = VARModule(
        transformer=dict(depth=1, width=32, num_heads=2, num_classes=3), tokenizer_ckpt=str(tokenizer_ckpt)
    )
    check_pretokenized(module, dm)  # the same tokenizer passes
    with torch.no_grad():
        module.vae.quantize.embedding.weight.add_(1.0)
    with pytest.raises(ValueError, match=r"not by model.tokenizer_ckpt.*re-tokenize"):
        check_pretokenized(module, dm)


def test_a_stream_of_unreadable_shards_stops_with_an_error(tmp_path):
    for i in range(3):
        (tmp_path / f"bad-{i:06d}.tar").write_bytes(b"not a tar file" * 100)
    dm = WebDatasetDataModule(
        str(tmp_path / "bad-{000000..000002}.tar"),
        train_samples=8,
        num_classes=2,
        image_size=8,
        batch_size=2,
        num_workers=0,
    )
    dm.setup("fit")
    with pytest.raises(RuntimeError, match="no readable sample in 64 consecutive shards"):
        next(iter(dm.train_dataloader()))
    assert dm.num_skipped >= 64


# ---------------------------------------------------------------------------------------------- lost samples
def _truncate_after(path: Path, samples: int) -> None:
    """Cut a shard in the middle of sample ``samples``'s image: the first ``samples`` stay readable."""
    with tarfile.open(path) as t:
        members = t.getmembers()
    cut = members[3 * samples].offset_data + 5  # 3 members per sample (png, cls, json)
    path.write_bytes(path.read_bytes()[:cut])


def test_a_damaged_validation_shard_shrinks_the_slices_at_setup(tmp_path, caplog):
    root = write_tree(tmp_path / "tree", n=24, num_classes=2)
    out = tmp_path / "wds"
    shard(root, out, "--max-count", "12")
    man = read_manifest(out)
    _truncate_after(out / man.shards[1].name, 4)
    with caplog.at_level(logging.WARNING):
        dm = WebDatasetDataModule(str(out), val_shards=str(out), image_size=8, batch_size=4, num_workers=0)
        dm.setup("fit")
    assert (
        f"validation shard {out / man.shards[1].name}: 4 of the manifest's 12 samples are readable"
        in caplog.text
    )
    assert dm.samples_per_rank("val", 1) == [16]
    assert sum(len(y) for _, y in dm.val_dataloader()) == 16
