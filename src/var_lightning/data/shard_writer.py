"""Writing an ImageFolder tree (or its tokens) into WebDataset tar shards, resumably and reproducibly (see
:mod:`var_lightning.data.shards` for the layout)."""

from __future__ import annotations

import io
import json
import logging
import os
import random
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from var_lightning.data.shards import (
    _MTIME,
    MANIFEST_NAME,
    Manifest,
    ShardRecord,
)

log = logging.getLogger(__name__)


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
