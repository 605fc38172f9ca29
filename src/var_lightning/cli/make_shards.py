"""`var-make-shards`: an ImageFolder tree -> WebDataset tar shards (images, or pre-tokenized token pyramids).

    var-make-shards /data/imagenet/train /data/imagenet-wds/train --max-count 1000 --workers 16
    var-make-shards /data/imagenet/val /data/imagenet-wds/val --classes-from /data/imagenet-wds/train
    # pre-tokenized (VAR stage skips the tokenizer's encoder): token pyramids of the centre crop + its mirror
    var-make-shards /data/imagenet/train /data/imagenet-wds/train-tok --tokenizer vae_ch160v4096z32.pth \
        --patch-nums 1,2,3,4,5,6,8,10,13,16 --image-size 256 --device cuda --batch-size 256

Plain argparse rather than Hydra: it is a one-shot conversion with a handful of flags, run from shell
scripts, and it writes nothing but the shards and their manifest. Rerunning the same command after an
interruption continues at the first unfinished shard; different settings on a non-empty output directory
are refused unless ``--overwrite``. Unreadable images are skipped, counted and listed in the manifest.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from functools import partial
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path

import numpy as np

from var_lightning.checkpoints.load import load_tokenizer
from var_lightning.data.imagefolder import SafeImageFolder
from var_lightning.data.shard_reader import tokenizer_fingerprint
from var_lightning.data.shard_writer import prepare_output, shuffled_order, write_shards
from var_lightning.data.shards import (
    IMAGE_EXTS,
    TOKENS_EXT,
    Manifest,
    encode_tokens,
    read_manifest,
    tokens_dtype,
)
from var_lightning.data.transforms import build_transform, to_rgb

log = logging.getLogger("var_lightning.make_shards")


def parse_size(text: str) -> int:
    """'1GB', '500MB', '64k', '123' -> bytes."""
    t = text.strip().upper().removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    if t and t[-1] in mult:
        return int(float(t[:-1]) * mult[t[-1]])
    return int(t)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="var-make-shards",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", help="image folder laid out as <source>/<class>/<image>")
    p.add_argument("out", help="output directory for the shards and manifest.json")
    p.add_argument(
        "--split", default=None, help="split name used as shard prefix (default: the source folder name)"
    )
    p.add_argument("--max-count", type=int, default=1000, help="samples per shard (default 1000)")
    p.add_argument(
        "--max-size", type=parse_size, default=parse_size("1GB"), help="bytes per shard (default 1GB)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the sample order (default 0)")
    p.add_argument(
        "--workers", type=int, default=min(8, os.cpu_count() or 1), help="processes that read images"
    )
    p.add_argument(
        "--classes-from",
        default=None,
        help="manifest (or shard dir) whose class list pins the labels, e.g. train's when writing val",
    )
    p.add_argument(
        "--resize-short",
        type=int,
        default=None,
        help="store images resized so the shorter side is this many pixels (JPEG q95); default: original bytes",
    )
    p.add_argument("--overwrite", action="store_true", help="replace shards written with other settings")
    p.add_argument("--no-progress", action="store_true")
    tok = p.add_argument_group("pre-tokenized shards")
    tok.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer checkpoint (var-train tokenizer run or vae_ch160v4096z32.pth)",
    )
    tok.add_argument(
        "--patch-nums",
        default=None,
        help="scale schedule, e.g. 1,2,3,4,5,6,8,10,13,16 (default: the tokenizer's)",
    )
    tok.add_argument(
        "--image-size", type=int, default=None, help="crop size (default: the tokenizer's image size)"
    )
    tok.add_argument(
        "--mid-reso",
        type=float,
        default=1.125,
        help="resize the shorter side to mid_reso x size, then centre-crop",
    )
    tok.add_argument("--no-flip", action="store_true", help="do not store the mirrored image's tokens")
    tok.add_argument("--device", default="cpu")
    tok.add_argument("--batch-size", type=int, default=64)
    tok.add_argument(
        "--trust-pickle",
        action="store_true",
        help="load a --tokenizer file that needs full unpickling (can execute code; never needed for our files)",
    )
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------- images
def encode_image_file(path: str, resize_short: int | None) -> tuple[str, bytes] | None:
    """(extension, bytes) of a decodable image, or None. Original bytes are kept for jpg/png/webp."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            fmt = (img.format or "").lower()
            if resize_short is None and fmt in ("jpeg", "png", "webp"):
                return ("jpg" if fmt == "jpeg" else fmt), Path(path).read_bytes()
            rgb = to_rgb(img)
    except Exception as e:  # noqa: BLE001 - any decode failure means "skip this file"
        log.warning("skipping unreadable image %s (%s: %s)", path, type(e).__name__, e)
        return None
    buf = io.BytesIO()
    if resize_short is not None:
        w, h = rgb.size
        scale = resize_short / min(w, h)
        rgb = rgb.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS)
        rgb.save(buf, format="JPEG", quality=95)
        return "jpg", buf.getvalue()
    rgb.save(buf, format="PNG")
    return "png", buf.getvalue()


def _encode_one(
    item: tuple[int, str, int, str], root: str, resize_short: int | None
) -> tuple[int, str, dict | None]:
    pos, path, label, cls = item
    key = f"s{pos:09d}"
    enc = encode_image_file(path, resize_short)
    if enc is None:
        return pos, os.path.relpath(path, root), None
    ext, data = enc
    assert ext in IMAGE_EXTS
    meta = {"key": key, "path": os.path.relpath(path, root), "class": cls, "label": label}
    return pos, key, {ext: data, "cls": str(label).encode(), "json": json.dumps(meta).encode()}


def image_samples(
    samples: list[tuple[str, int]],
    order: list[int],
    classes: list[str],
    root: str,
    resize_short: int | None,
    workers: int,
):
    def encoded(start: int) -> Iterator[tuple[int, str, dict | None]]:
        items = [
            (pos, *samples[order[pos]], classes[samples[order[pos]][1]]) for pos in range(start, len(order))
        ]
        fn = partial(_encode_one, root=root, resize_short=resize_short)
        if workers <= 1:
            yield from map(fn, items)
            return
        # fork: the workers only decode with PIL, and spawn would re-import torch in each (~3 s apiece)
        with get_context("fork" if "fork" in get_all_start_methods() else "spawn").Pool(workers) as pool:
            yield from pool.imap(fn, items, chunksize=16)

    return encoded


# ---------------------------------------------------------------------------------------------- tokens
class _CropDataset:
    """Centre crops (3, S, S) in [-1, 1] of the listed files in the given order; unreadable -> None."""

    def __init__(self, items: list[tuple[int, str, int]], image_size: int, mid_reso: float) -> None:

        self.items, self.tf = items, build_transform(image_size, mid_reso, train=False)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        from PIL import Image

        pos, path, label = self.items[i]
        try:
            with Image.open(path) as img:
                img.load()
                return pos, path, label, self.tf(to_rgb(img))
        except Exception as e:  # noqa: BLE001
            log.warning("skipping unreadable image %s (%s: %s)", path, type(e).__name__, e)
            return pos, path, label, None


def _collate(batch):
    return batch


def token_samples(samples, order, classes, root, vae, args, image_size: int):
    import torch
    from torch.utils.data import DataLoader

    device = torch.device(args.device)
    vae = vae.to(device).eval()
    dtype = tokens_dtype(vae.cfg.vocab_size)

    def encoded(start: int) -> Iterator[tuple[int, str, dict | None]]:
        items = [(pos, *samples[order[pos]]) for pos in range(start, len(order))]
        ds = _CropDataset(items, image_size, args.mid_reso)
        loader = DataLoader(ds, batch_size=args.batch_size, num_workers=args.workers, collate_fn=_collate)
        for batch in loader:
            good = [b for b in batch if b[3] is not None]
            tokens = {}
            if good:
                img = torch.stack([b[3] for b in good]).to(device)
                views = [img] if args.no_flip else [img, img.flip(-1)]
                with torch.no_grad():
                    per_view = [torch.cat(vae.img_to_idx(v), dim=1).cpu().numpy() for v in views]
                stacked = np.stack(per_view, axis=1).astype(dtype)  # (B, variants, L)
                tokens = {b[0]: stacked[i] for i, b in enumerate(good)}
            for pos, path, label, img in batch:
                if img is None:
                    yield pos, os.path.relpath(path, root), None
                    continue
                key = f"s{pos:09d}"
                meta = {
                    "key": key,
                    "path": os.path.relpath(path, root),
                    "class": classes[label],
                    "label": label,
                }
                yield (
                    pos,
                    key,
                    {
                        TOKENS_EXT: encode_tokens(tokens[pos]),
                        "cls": str(label).encode(),
                        "json": json.dumps(meta).encode(),
                    },
                )

    return encoded


def load_tokenizer_for_shards(args: argparse.Namespace):

    patch_nums = tuple(int(x) for x in args.patch_nums.split(",")) if args.patch_nums else None
    vae = load_tokenizer(
        args.tokenizer, patch_nums=patch_nums, trust_pickle=args.trust_pickle, key="--tokenizer"
    )
    size = args.image_size or vae.cfg.image_size
    if size != vae.cfg.image_size:
        raise SystemExit(
            f"--image-size {size} does not fit the tokenizer: schedule {vae.patch_nums} needs {vae.cfg.image_size}"
        )
    return vae, size


# ---------------------------------------------------------------------------------------------- main
def make_shards(args: argparse.Namespace) -> Manifest:
    """Write (or finish writing) the shards described by ``args``; returns the complete manifest."""

    root = str(Path(args.source).expanduser())
    classes = read_manifest(args.classes_from, "--classes-from").classes if args.classes_from else None
    folder = SafeImageFolder(root, classes=classes, config_key="source")
    split = args.split or Path(root).name
    order = shuffled_order(len(folder.samples), args.seed)
    settings = {
        "prefix": split,
        "max_count": args.max_count,
        "max_bytes": args.max_size,
        "seed": args.seed,
        "resize_short": args.resize_short,
    }
    tok_meta = None
    if args.tokenizer:
        vae, size = load_tokenizer_for_shards(args)
        tok_meta = {
            "patch_nums": list(vae.patch_nums),
            "vocab_size": vae.cfg.vocab_size,
            "image_size": size,
            "mid_reso": args.mid_reso,
            "crop": "center",
            "variants": ["original"] + ([] if args.no_flip else ["hflip"]),
            "dtype": str(tokens_dtype(vae.cfg.vocab_size)),
            "fingerprint": tokenizer_fingerprint(vae),
            "source": str(args.tokenizer),
        }
        settings.update(tokenizer=tok_meta["fingerprint"], mid_reso=args.mid_reso, flip=not args.no_flip)
    manifest = Manifest(
        kind="tokens" if tok_meta else "images",
        split=split,
        classes=list(folder.classes),
        source=root,
        num_sources=len(order),
        settings=settings,
        tokenizer=tok_meta,
    )
    manifest = prepare_output(args.out, manifest, args.overwrite)
    if manifest.complete:
        return manifest
    if tok_meta:
        encoded = token_samples(
            folder.samples, order, folder.classes, root, vae, args, tok_meta["image_size"]
        )
    else:
        encoded = image_samples(folder.samples, order, folder.classes, root, args.resize_short, args.workers)
    return write_shards(
        args.out,
        manifest,
        encoded,
        prefix=split,
        max_count=args.max_count,
        max_bytes=args.max_size,
        progress=not args.no_progress,
    )


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        man = make_shards(args)
    except (FileNotFoundError, ValueError) as e:
        log.error("%s", e)
        sys.exit(2)
    log.info(
        "manifest: %s (%d samples, %d classes, %d shards)",
        Path(args.out) / "manifest.json",
        man.num_samples,
        man.num_classes,
        len(man.shards),
    )


if __name__ == "__main__":
    main()
