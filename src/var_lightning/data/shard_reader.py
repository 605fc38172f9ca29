"""Reading WebDataset shards: shard specs and URLs, reachability, the tar sample stream, decoding images
and tokens into batches (see :mod:`var_lightning.data.shards` for the layout)."""

from __future__ import annotations

import io
import logging
import os
import random
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from var_lightning.data.shards import (
    IMAGE_EXTS,
    MANIFEST_NAME,
    TOKENS_EXT,
    Manifest,
    decode_tokens,
    is_url,
    read_manifest,
)
from var_lightning.data.transforms import build_transform, to_rgb

log = logging.getLogger(__name__)


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
