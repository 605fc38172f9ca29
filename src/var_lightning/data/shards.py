"""WebDataset shards: the format (the manifest, records, token arrays) shared by the writer
(:mod:`~var_lightning.data.shard_writer`) and the reader (:mod:`~var_lightning.data.shard_reader`).

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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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
