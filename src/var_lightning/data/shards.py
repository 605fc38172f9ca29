"""WebDataset shards: the manifest, writing an ImageFolder tree into tar shards, reading and decoding them.

Why shards: a 1.28M-file ImageFolder on shared storage costs one metadata lookup and one small random read
per image, which is what stalls 16-GPU jobs; tar shards are read sequentially, ~1 GB at a time.

Layout of a shard directory (one per split)::

    <out>/train-000000.tar ... train-000127.tar     # samples: <key>.jpg|png (or <key>.tok.npy), .cls, .json
    <out>/manifest.json                             # the Manifest below

Samples are written in a seeded random order (an ImageFolder lists files class by class, so unshuffled
shards would each hold one class and batches would be class-correlated even behind a shuffle buffer). A
shard closes when it reaches ``max_count`` samples or ``max_bytes``. Each shard is written to ``.tmp`` and
renamed, and the manifest is rewritten after every shard, so an interrupted run resumes at the first
unfinished shard with identical results. Pre-tokenized shards hold, per image, the tokenizer's token
pyramid of the centre crop and of its mirror image as a (2, L) uint16/int32 array (``tok.npy``).
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from var_lightning.data.transforms import build_transform, to_rgb

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
_MTIME = 1_700_000_000  # fixed member mtime: the same input gives byte-identical shards
IMAGE_EXTS = ("jpg", "png", "webp")  # stored as-is; anything else is re-encoded as PNG
TOKENS_EXT = "tok.npy"
_URL_SCHEMES = ("http://", "https://", "s3://", "gs://", "pipe:", "ais://", "hf://")


def is_url(path: str) -> bool:
    return str(path).startswith(_URL_SCHEMES)


@dataclass
class ShardRecord:
    """One finished shard: file name (relative to the manifest), samples written, bytes, and the range
    ``[first_index, end_index)`` of positions in the shuffled source list it covers (skipped unreadable
    files count in the range but not in ``num_samples``)."""

    name: str
    num_samples: int
    num_bytes: int
    first_index: int
    end_index: int


@dataclass
class Manifest:
    """What a shard directory holds. ``kind`` is 'images' or 'tokens'; ``tokenizer`` (tokens only) records
    the schedule, vocabulary, image size, crop and a fingerprint of the tokenizer's weights, which the
    VAR stage checks against its own tokenizer. ``settings`` are the writer's arguments that determine the
    shard contents (a resumed run must use the same ones)."""

    kind: str
    split: str
    classes: list[str]
    shards: list[ShardRecord] = field(default_factory=list)
    source: str = ""
    num_sources: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    tokenizer: dict[str, Any] | None = None
    skipped: list[str] = field(default_factory=list)
    complete: bool = False
    version: int = FORMAT_VERSION

    @property
    def num_samples(self) -> int:
        return sum(s.num_samples for s in self.shards)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def save(self, out_dir: str | os.PathLike) -> None:
        """Write atomically (tmp + rename) so a crash never leaves a half-written manifest."""
        path = Path(out_dir) / MANIFEST_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(self.to_json())
        os.replace(tmp, path)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        d = dict(d)
        d["shards"] = [ShardRecord(**s) for s in d.get("shards", [])]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def read_manifest(location: str | os.PathLike, config_key: str = "data.train_shards") -> Manifest:
    """The manifest at a directory, a ``manifest.json`` path, or a URL (read through webdataset's gopen)."""
    loc = str(location)
    if is_url(loc):
        url = loc if loc.endswith(".json") else loc.rstrip("/") + "/" + MANIFEST_NAME
        try:
            from webdataset.gopen import gopen

            with gopen(url, "rb") as f:
                text = f.read().decode()
        except Exception as e:
            raise FileNotFoundError(
                f"{config_key}: cannot read the shard manifest {url} ({type(e).__name__}: {e}); check the URL "
                f"and the network, or give the shard list and data.train_samples explicitly"
            ) from e
    else:
        path = Path(loc).expanduser()
        if path.is_dir():
            path = path / MANIFEST_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"{config_key}: no shard manifest at {path}; write shards with `var-make-shards <image folder> "
                f"<out dir>` or give a brace pattern like /data/train-{{000000..000127}}.tar"
            )
        text = path.read_text()
    try:
        man = Manifest.from_dict(json.loads(text))
    except (json.JSONDecodeError, TypeError) as e:
        raise ValueError(f"{config_key}: {loc} is not a var-make-shards manifest ({e})") from e
    if not man.complete:
        raise ValueError(
            f"{config_key}: the shards at {loc} are incomplete ({len(man.shards)} shards written so far); "
            f"rerun the same `var-make-shards` command to finish them"
        )
    return man


# ---------------------------------------------------------------------------------------------- writing
def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), _MTIME, 0o444
    info.uname = info.gname = "var"
    tar.addfile(info, io.BytesIO(data))


def encode_sample(key: str, fields: dict[str, bytes]) -> list[tuple[str, bytes]]:
    """Tar members of one sample: ``<key>.<ext>`` for each field (the key must not contain dots, since
    webdataset splits names at the first dot of the base name)."""
    if "." in key or "/" in key:
        raise ValueError(f"sample key {key!r} must not contain '.' or '/'")
    return [(f"{key}.{ext}", data) for ext, data in fields.items()]


def shuffled_order(n: int, seed: int) -> list[int]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


class ShardWriter:
    """Writes samples into ``<prefix>-NNNNNN.tar`` shards under ``out_dir``, closing a shard at ``max_count``
    samples or ``max_bytes`` bytes, and records every finished shard in the manifest (resumable)."""

    def __init__(
        self, out_dir: str | os.PathLike, manifest: Manifest, prefix: str, max_count: int, max_bytes: int
    ) -> None:
        if max_count < 1:
            raise ValueError(f"max_count must be >= 1, got {max_count} (--max-count)")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes} (--max-size)")
        self.out_dir, self.manifest, self.prefix = Path(out_dir), manifest, prefix
        self.max_count, self.max_bytes = max_count, max_bytes
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None
        self._count = self._bytes = 0
        self._first = 0

    @property
    def next_index(self) -> int:
        """Source position where writing continues: after the last finished shard."""
        return self.manifest.shards[-1].end_index if self.manifest.shards else 0

    def _open(self, first_index: int) -> None:
        name = f"{self.prefix}-{len(self.manifest.shards):06d}.tar"
        self._tmp = self.out_dir / (name + ".tmp")
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115 - closed in close_shard
        self._count = self._bytes = 0
        self._first = first_index

    def write(self, index: int, key: str, fields: dict[str, bytes]) -> None:
        """Add the sample at source position ``index`` (positions must increase)."""
        if self._tar is None:
            self._open(index)
        for name, data in encode_sample(key, fields):
            _tar_member(self._tar, name, data)
            self._bytes += len(data) + 512  # + tar header
        self._count += 1
        if self._count >= self.max_count or self._bytes >= self.max_bytes:
            self.close_shard(index + 1)

    def close_shard(self, end_index: int) -> None:
        """Finish the open shard (covering source positions up to ``end_index``) and save the manifest."""
        if self._tar is None:
            return
        self._tar.close()
        final = self._tmp.with_suffix("")  # drop ".tmp"
        os.replace(self._tmp, final)
        self.manifest.shards.append(
            ShardRecord(final.name, self._count, final.stat().st_size, self._first, end_index)
        )
        self.manifest.save(self.out_dir)
        self._tar = None


def prepare_output(out_dir: str | os.PathLike, manifest: Manifest, overwrite: bool) -> Manifest:
    """The manifest to continue from: a fresh one, or the existing partial one when its settings match."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / MANIFEST_NAME
    for tmp in out.glob("*.tar.tmp"):  # a shard that was being written when the last run stopped
        tmp.unlink()
    if path.is_file() and not overwrite:
        old = Manifest.from_dict(json.loads(path.read_text()))
        mine = {k: manifest.settings.get(k) for k in set(old.settings) | set(manifest.settings)}
        theirs = {k: old.settings.get(k) for k in mine}
        if (old.kind, old.source, old.classes, old.num_sources, theirs) != (
            manifest.kind,
            manifest.source,
            manifest.classes,
            manifest.num_sources,
            mine,
        ):
            diff = {k: (theirs[k], mine[k]) for k in mine if theirs[k] != mine[k]}
            raise ValueError(
                f"{out} already holds shards written with other settings (existing vs requested: {diff or 'source/classes'}); "
                f"pass --overwrite to replace them or choose another output directory"
            )
        if old.complete:
            log.info("%s is already complete (%d shards, %d samples)", out, len(old.shards), old.num_samples)
        elif old.shards:
            log.info(
                "resuming: %d shards already written, continuing at source position %d",
                len(old.shards),
                old.shards[-1].end_index,
            )
        return old
    if overwrite:
        for p in out.glob(f"{manifest.settings.get('prefix', '*')}-*.tar"):
            p.unlink()
    manifest.save(out)
    return manifest


def write_shards(
    out_dir: str | os.PathLike,
    manifest: Manifest,
    encoded: Callable[[int], Iterator[tuple[int, str, dict[str, bytes] | None]]],
    *,
    prefix: str,
    max_count: int,
    max_bytes: int,
    progress: bool = True,
) -> Manifest:
    """Drive ``encoded(start)`` — an iterator of ``(position, key, fields or None if unreadable)`` from source
    position ``start`` on — into shards, then mark the manifest complete."""
    writer = ShardWriter(out_dir, manifest, prefix, max_count, max_bytes)
    start = writer.next_index
    total = manifest.num_sources
    bar = None
    if progress and start < total:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=start, desc=f"shards {manifest.split}", unit="img")
    t0, last = time.time(), start
    for index, key, fields in encoded(start):
        if fields is None:
            manifest.skipped.append(key)
        else:
            writer.write(index, key, fields)
        last = index + 1
        if bar is not None:
            bar.update(1)
    writer.close_shard(last)
    if bar is not None:
        bar.close()
    manifest.complete = True
    manifest.save(out_dir)
    log.info(
        "%d samples in %d shards written to %s in %.0f s (%d unreadable files skipped)",
        manifest.num_samples,
        len(manifest.shards),
        out_dir,
        time.time() - t0,
        len(manifest.skipped),
    )
    return manifest


# ---------------------------------------------------------------------------------------------- tokens
def tokens_dtype(vocab_size: int) -> np.dtype:
    """Smallest integer type that holds every code (uint16 up to V = 65536)."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


def encode_tokens(tokens_VL: np.ndarray) -> bytes:
    """(variants, L) integer array -> .npy bytes."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(tokens_VL), allow_pickle=False)
    return buf.getvalue()


def decode_tokens(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


# ---------------------------------------------------------------------------------------------- reading
def expand_shard_spec(spec: str | Sequence[str], config_key: str) -> tuple[list[str], Manifest | None]:
    """Shard URLs/paths and the manifest (when there is one) from what a user configures:

    a directory or ``manifest.json`` (local or URL) -> the manifest's shards; a brace pattern or list of
    .tar paths/URLs -> those (with the manifest of their directory if it has one). Local files must exist.
    """
    from webdataset.shardlists import expand_urls

    if isinstance(spec, str | os.PathLike):
        s = str(spec)
        is_manifest = s.endswith(".json") or (
            not s.endswith(".tar") and "{" not in s and (is_url(s) or Path(s).expanduser().is_dir())
        )
        if is_manifest:
            man = read_manifest(s, config_key)
            base = s[: -len(MANIFEST_NAME)].rstrip("/") if s.endswith(".json") else s.rstrip("/")
            if not is_url(base):
                base = str(Path(base).expanduser())
            urls = [f"{base}/{rec.name}" for rec in man.shards]
        else:
            urls = expand_urls(s)
            man = None
    else:
        urls = [str(u) for u in spec]
        man = None
    if not urls:
        raise ValueError(f"{config_key}: {spec!r} names no shards")
    if man is None and not is_url(urls[0]):
        parent = Path(urls[0]).expanduser().parent / MANIFEST_NAME
        if parent.is_file():
            full = read_manifest(parent.parent, config_key)
            names = {Path(u).name for u in urls}
            if {r.name for r in full.shards} >= names:
                full.shards = [r for r in full.shards if r.name in names]
                man = full
    missing = [u for u in urls if not is_url(u) and not Path(u).expanduser().is_file()]
    if missing:
        raise FileNotFoundError(
            f"{config_key}: {len(missing)} of {len(urls)} shards are missing, e.g. {missing[:3]}; check the path "
            f"or rerun `var-make-shards` (it resumes an interrupted run)"
        )
    return [u if is_url(u) else str(Path(u).expanduser()) for u in urls], man


def check_reachable(url: str, config_key: str, timeout: float = 10.0) -> None:
    """Fail fast on an http(s) shard URL that cannot be opened (before workers start and hang on it)."""
    if not url.startswith(("http://", "https://")):
        return
    import urllib.request

    try:
        req = urllib.request.Request(url, method="HEAD")
        with urllib.request.urlopen(req, timeout=timeout):
            pass
    except Exception as e:
        raise ConnectionError(
            f"{config_key}: cannot reach shard {url} ({type(e).__name__}: {e}); check the URL, the network and "
            f"credentials, or copy the shards to local storage"
        ) from e


def iter_tar_samples(url: str, handler: Callable[[Exception], bool]) -> Iterable[dict[str, Any]]:
    """Raw samples ``{'__key__', '__url__', ext: bytes, ...}`` of one shard (webdataset's tar reader)."""
    from webdataset.tariterators import group_by_keys, tar_file_expander, url_opener

    return group_by_keys(
        tar_file_expander(url_opener([{"url": url}], handler=handler), handler=handler), handler=handler
    )


def tokenizer_fingerprint(vae: Any) -> str:
    """Short hash of a tokenizer's weights: pre-tokenized shards are only valid for the exact tokenizer
    that wrote them (the same codes mean different vectors in another codebook)."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for name, t in sorted(vae.state_dict().items()):
        if name.endswith("ema_vocab_hit_SV"):  # usage statistics, not weights
            continue
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- decoding
class ImageDecoder:
    """Raw sample -> (image (3, S, S) in [-1, 1], label), transforms under an RNG seeded per sample."""

    def __init__(self, image_size: int, mid_reso: float, train: bool, hflip: bool) -> None:
        self.transform = build_transform(image_size, mid_reso, train=train, hflip=hflip)

    def __call__(self, sample: dict[str, Any], seed: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        ext = next((e for e in (*IMAGE_EXTS, "jpeg") if e in sample), None)
        if ext is None:
            raise KeyError(f"no image field ({', '.join(IMAGE_EXTS)}) in sample with fields {sorted(sample)}")
        with Image.open(io.BytesIO(sample[ext])) as img:
            img.load()
            rgb = to_rgb(img)
        label = int(sample["cls"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(rgb), label


class TokenDecoder:
    """Raw pre-tokenized sample -> (token ids (L,) int64, label); with ``hflip`` in training a seeded coin
    picks the mirrored image's tokens."""

    def __init__(self, train: bool, hflip: bool, length: int | None) -> None:
        self.train, self.hflip, self.length = train, hflip, length

    def __call__(self, sample: dict[str, Any], seed: int) -> tuple[torch.Tensor, int]:
        tokens_VL = decode_tokens(sample[TOKENS_EXT])
        if self.length is not None and tokens_VL.shape[-1] != self.length:
            raise ValueError(f"token pyramid has {tokens_VL.shape[-1]} tokens, expected {self.length}")
        v = random.Random(seed).randrange(tokens_VL.shape[0]) if (self.train and self.hflip) else 0
        return torch.from_numpy(tokens_VL[v].astype(np.int64)), int(sample["cls"])


def collate_samples(items: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items], dtype=torch.int64)
