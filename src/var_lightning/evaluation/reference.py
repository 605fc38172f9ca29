"""Feature extraction over image sources, and reference statistics cached on disk.

A source is a folder of images, an ``.npz`` (``arr_0`` uint8 NHWC, e.g. an ADM reference batch), a uint8
array/tensor, or a torch ``Dataset`` yielding ``(img_3HW in [-1, 1], label)`` (or just the image).
``reference_stats`` computes the Gaussian statistics of a source in an extractor's feature space once
and stores them under ``cache_dir``, keyed by (source identity, extractor config, resize mode, count);
later calls load them (``stats.meta["cache_hit"]`` says which happened).

Under DDP compute references on rank 0 (others wait at a barrier, then load the cache file): the cache
write is atomic, but two ranks computing the same reference would only waste time.

Shapes: B batch, F features, K classes, N images.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import Progress
from torch.utils.data import DataLoader, Dataset

from var_lightning.distributed import rank
from var_lightning.evaluation.extractors import FeatureExtractor, to_uint8
from var_lightning.evaluation.fid import FeatureStats, GaussianStats
from var_lightning.evaluation.npz import ArrayImages, FolderImages, NpzImages, load_reference

_log = logging.getLogger(__name__)

ImageSource = str | Path | np.ndarray | torch.Tensor | Dataset | FolderImages | NpzImages | ArrayImages


def _open_reader(source: ImageSource) -> FolderImages | NpzImages | ArrayImages | Dataset:
    if isinstance(source, str | Path):
        pack = load_reference(source)
        if pack.images is None:
            raise ValueError(f"{source} holds statistics only (no arr_0 images) and cannot be re-extracted")
        return pack.images
    if isinstance(source, np.ndarray | torch.Tensor):
        return ArrayImages(source)
    return source


def source_length(source: ImageSource) -> int | None:
    """Number of images, or None for a source without a length (an IterableDataset)."""
    try:
        return len(_open_reader(source))  # type: ignore[arg-type]
    except TypeError:
        return None


def iter_uint8_batches(
    source: ImageSource, batch_size: int = 64, count: int | None = None, num_workers: int = 0
) -> Iterator[torch.Tensor]:
    """uint8 (B, 3, H, W) CPU batches of the first ``count`` images (default all) of ``source``."""
    reader = _open_reader(source)
    if isinstance(reader, FolderImages | NpzImages | ArrayImages):
        for batch_BHW3 in reader.iter_batches(batch_size, count):
            yield torch.from_numpy(np.ascontiguousarray(batch_BHW3)).permute(0, 3, 1, 2)
        return
    seen = 0
    for item in DataLoader(reader, batch_size=batch_size, shuffle=False, num_workers=num_workers):
        x_B3HW = item[0] if isinstance(item, list | tuple) else item
        if count is not None:
            x_B3HW = x_B3HW[: count - seen]
        seen += x_B3HW.shape[0]
        yield to_uint8(((x_B3HW.float() + 1) / 2).clamp(0, 1))
        if count is not None and seen >= count:
            return


def extract_features(
    source: ImageSource,
    extractor: FeatureExtractor,
    batch_size: int = 64,
    count: int | None = None,
    keep_features: bool = False,
    keep_logits: bool = False,
    num_workers: int = 0,
    progress: bool = False,
) -> tuple[FeatureStats, torch.Tensor | None]:
    """Run ``extractor`` over ``source``: streaming ``FeatureStats`` (features kept when asked) and the
    (N, K) logits on CPU when ``keep_logits`` and the extractor has a classifier head."""
    stats = FeatureStats(extractor.feature_dim, keep_features=keep_features, device=extractor.device)
    logits: list[torch.Tensor] = []
    total = count if count is not None else source_length(source)
    with Progress(transient=True, disable=not progress or rank() != 0) as bar:
        task = bar.add_task(f"features ({extractor.name})", total=total)
        for x_B3HW in iter_uint8_batches(source, batch_size, count, num_workers):
            out = extractor(x_B3HW)
            stats.update(out["features"])
            if keep_logits and out["logits"] is not None:
                logits.append(out["logits"].cpu())
            bar.update(task, advance=x_B3HW.shape[0])
    return stats, (torch.cat(logits) if logits else None)


def source_identity(source: ImageSource, source_id: str | None = None) -> str:
    """A string that changes when the source's content may have changed (cheap: names/sizes/mtimes for
    files, a hash for in-memory arrays). A Dataset has no identity of its own: pass ``source_id``."""
    if source_id is not None:
        return source_id
    if isinstance(source, str | Path):
        path = Path(source).resolve()
        if path.is_dir():
            h = hashlib.sha1()
            for p in FolderImages(path).files:
                st = p.stat()
                h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
            return f"folder:{path}:{h.hexdigest()}"
        st = path.stat()
        return f"file:{path}:{st.st_size}:{st.st_mtime_ns}"
    if isinstance(source, np.ndarray | torch.Tensor):
        arr = ArrayImages(source).images
        return f"array:{arr.shape}:{hashlib.sha1(arr.tobytes()).hexdigest()}"
    raise ValueError(
        f"cannot derive an identity for a {type(source).__name__}; pass source_id=... to cache it"
    )


def cache_key(source_ident: str, extractor: FeatureExtractor, count: int | None, precomputed: bool) -> str:
    payload = {
        "source": source_ident,
        "extractor": extractor.config(),
        "resize": extractor.input_note,
        "count": count,
        "precomputed": precomputed,
    }
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _compute(
    source: ImageSource,
    extractor: FeatureExtractor,
    count: int | None,
    batch_size: int,
    keep_features: bool,
    use_precomputed: bool,
    num_workers: int,
    progress: bool,
) -> GaussianStats:
    pack = load_reference(source) if isinstance(source, str | Path) else None
    precomputed = pack is not None and pack.mu is not None and use_precomputed and count is None
    if precomputed and not keep_features:
        n = len(pack.images) if pack.images is not None else -1
        return GaussianStats(pack.mu, pack.sigma, n, meta={"stats_from": "npz mu/sigma"})
    available = source_length(source)
    if count is not None and available is not None and count > available:
        raise ValueError(f"asked for {count} reference images but the source has only {available}")
    stats, _ = extract_features(
        source,
        extractor,
        batch_size,
        count,
        keep_features=keep_features,
        num_workers=num_workers,
        progress=progress,
    )
    gauss = stats.gaussian(meta={"stats_from": "features"})
    if precomputed:  # FID from the published mu/sigma, precision/recall/KID from the images' features
        gauss.mu, gauss.sigma, gauss.meta["stats_from"] = pack.mu, pack.sigma, "npz mu/sigma"
    return gauss


def reference_stats(
    source: ImageSource,
    extractor: FeatureExtractor,
    cache_dir: str | Path | None = None,
    count: int | None = None,
    batch_size: int = 64,
    keep_features: bool = False,
    source_id: str | None = None,
    use_precomputed: bool = True,
    num_workers: int = 0,
    progress: bool = True,
) -> GaussianStats:
    """Gaussian statistics (and features when ``keep_features``) of the first ``count`` images of
    ``source`` in ``extractor``'s feature space, loaded from ``cache_dir`` when computed before.

    ``use_precomputed``: an ADM reference ``.npz`` with ``mu``/``sigma`` supplies FID statistics directly
    when the extractor is ``inception-tf`` and ``count`` is None (its ``arr_0`` images still give the
    features for precision/recall/KID). ``meta`` records source, extractor, count, ``cache_hit``,
    ``cache_path``.
    """
    use_precomputed = use_precomputed and extractor.name == "inception-tf"
    ident = source_identity(source, source_id) if cache_dir is not None or source_id is not None else None
    meta: dict[str, Any] = {"source": ident, "extractor": extractor.config(), "count": count}
    path = None
    if cache_dir is not None:
        key = cache_key(ident, extractor, count, use_precomputed)  # type: ignore[arg-type]
        path = Path(cache_dir) / f"ref-{extractor.name}-{key}.npz"
        if path.is_file():
            cached = GaussianStats.load(path)
            if cached.features is not None or not keep_features:
                if rank() == 0:
                    _log.info("reference statistics loaded from cache %s", path)
                cached.meta.update(cache_hit=True, cache_path=str(path))
                return cached
    if rank() == 0:
        _log.info(
            "computing reference statistics of %s with %s", ident or type(source).__name__, extractor.name
        )
    stats = _compute(
        source, extractor, count, batch_size, keep_features, use_precomputed, num_workers, progress
    )
    stats.meta = {**meta, **stats.meta}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        stats.save(tmp)
        os.replace(tmp, path)
        if rank() == 0:
            _log.info("reference statistics cached at %s", path)
    stats.meta.update(cache_hit=False, cache_path=None if path is None else str(path))
    return stats
