"""Sample packs in the layout of OpenAI's ADM evaluator, and streaming readers for image sources.

A pack is an uncompressed ``.npz`` whose ``arr_0`` is uint8 (N, H, W, 3) (NHWC), as
``guided-diffusion/evaluations/evaluator.py`` reads it (optionally ``arr_1``: the (N,) int64 class labels,
as guided-diffusion's class-conditional sampler writes them; the evaluator ignores it). ``pack_samples`` writes it streaming (constant
memory for 50k images); ``NpzImages`` / ``FolderImages`` / ``ArrayImages`` read images in uint8 NHWC
batches without loading everything; ``load_reference`` opens an ADM reference batch (``arr_0`` plus
optional precomputed ``mu`` / ``sigma``) or an image folder.

Shapes: N images, H,W image side.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from var_lightning.data.transforms import to_rgb

PNG_EXTS = (".png",)
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8; a clear error naming the file when it is not a readable image."""
    try:
        with Image.open(path) as im:
            return np.asarray(to_rgb(im), dtype=np.uint8)
    except Exception as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


class FolderImages:
    """Image files of one folder (not recursive), sorted by file name; all must share one size."""

    def __init__(self, folder: str | Path, exts: tuple[str, ...] = IMAGE_EXTS) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise NotADirectoryError(f"{self.folder} is not a directory")
        self.files = sorted(p for p in self.folder.iterdir() if p.is_file() and p.suffix.lower() in exts)
        if not self.files:
            raise ValueError(f"no images ({', '.join(exts)}) in {self.folder}")

    def __len__(self) -> int:
        return len(self.files)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(_read_rgb(self.files[0]).shape)  # type: ignore[return-value]

    def iter_batches(self, batch_size: int, count: int | None = None) -> Iterator[np.ndarray]:
        """(b, H, W, 3) uint8 batches of the first ``count`` (default all) images, in file-name order."""
        files = self.files[: len(self.files) if count is None else count]
        shape = None
        for start in range(0, len(files), batch_size):
            batch = []
            for path in files[start : start + batch_size]:
                img = _read_rgb(path)
                shape = shape or img.shape
                if img.shape != shape:
                    raise ValueError(f"{path} has shape {img.shape}, the first image {shape}: resize first")
                batch.append(img)
            yield np.stack(batch)


def _numbers(path: str | Path, keys: list[str]) -> list[np.ndarray]:
    """Arrays ``keys`` of an ``.npz``, numbers only: an array of Python objects (a pickle, which could run
    code when read) is refused by name."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return [data[k] for k in keys]
    except ValueError as e:
        if "allow_pickle" not in str(e):
            raise
        raise ValueError(
            f"{path}: refused: it holds an array of Python objects (pickled), which can execute code when read; "
            "a sample pack or reference holds numbers only (arr_0 uint8 images, arr_1 integer labels, mu / sigma)"
        ) from e


def _npy_member_header(zf: zipfile.ZipFile, member: str) -> tuple[tuple[int, ...], np.dtype, int]:
    with zf.open(member) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        offset = f.tell()
    if fortran:
        raise ValueError(f"{member}: Fortran-ordered arrays are not supported")
    return shape, dtype, offset


class NpzImages:
    """Streaming reader of a uint8 NHWC array (``arr_0``) inside an ``.npz``, read batch by batch."""

    def __init__(self, path: str | Path, key: str = "arr_0") -> None:
        self.path, self.member = Path(path), f"{key}.npy"
        with zipfile.ZipFile(self.path) as zf:
            if self.member not in zf.namelist():
                raise KeyError(f"{self.path} has no {key!r} array (has {zf.namelist()})")
            self.shape, dtype, self._offset = _npy_member_header(zf, self.member)
        if dtype != np.uint8 or len(self.shape) != 4 or self.shape[-1] != 3:
            raise ValueError(f"{self.path}:{key} must be uint8 (N, H, W, 3), got {dtype} {self.shape}")

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.shape[1:])  # type: ignore[return-value]

    def iter_batches(self, batch_size: int, count: int | None = None) -> Iterator[np.ndarray]:
        n = len(self) if count is None else min(count, len(self))
        per_image = int(np.prod(self.shape[1:]))
        with zipfile.ZipFile(self.path) as zf, zf.open(self.member) as f:
            f.read(self._offset)
            for start in range(0, n, batch_size):
                b = min(batch_size, n - start)
                buf = bytearray(f.read(b * per_image))  # writable, so torch.from_numpy does not warn
                yield np.frombuffer(buf, dtype=np.uint8).reshape(b, *self.shape[1:])

    def read_all(self) -> np.ndarray:
        return np.concatenate(list(self.iter_batches(4096)))


class ArrayImages:
    """An in-memory uint8 (N, H, W, 3) array, or a uint8 torch tensor (N, 3, H, W) converted to NHWC."""

    def __init__(self, images: np.ndarray | torch.Tensor) -> None:
        if isinstance(images, torch.Tensor):
            if images.ndim != 4 or images.shape[1] != 3:
                raise ValueError(f"expected a (N, 3, H, W) tensor, got {tuple(images.shape)}")
            images = images.detach().cpu().permute(0, 2, 3, 1).numpy()
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 (N, H, W, 3) images, got {images.dtype} {images.shape}")
        self.images = np.ascontiguousarray(images)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def iter_batches(self, batch_size: int, count: int | None = None) -> Iterator[np.ndarray]:
        n = len(self) if count is None else min(count, len(self))
        for start in range(0, n, batch_size):
            yield self.images[start : min(start + batch_size, n)]


def pack_samples(
    source: str | Path | np.ndarray | torch.Tensor,
    out_path: str | Path,
    expected: int | None = None,
    labels: np.ndarray | torch.Tensor | None = None,
) -> Path:
    """Write ``source`` (a folder of PNGs, sorted by file name, or uint8 NHWC array / NCHW tensor) to an
    ADM-evaluator ``.npz`` (``arr_0`` uint8 NHWC, uncompressed) at ``out_path`` (``.npz`` appended when
    missing), streaming; ``labels`` (N,) go to ``arr_1``. Raises ValueError when ``expected`` is given and
    the count differs, or when a file is unreadable or has another size. The file appears atomically
    (written to ``.tmp`` first)."""
    images = FolderImages(source, exts=PNG_EXTS) if isinstance(source, str | Path) else ArrayImages(source)
    n = len(images)
    if expected is not None and n != expected:
        where = f"PNG files in {source}" if isinstance(source, str | Path) else "images in the array"
        raise ValueError(f"expected {expected} samples, found {n} {where}")
    if labels is not None:
        labels = np.asarray(torch.as_tensor(labels).cpu().numpy(), dtype=np.int64).reshape(-1)
        if labels.shape[0] != n:
            raise ValueError(f"{labels.shape[0]} labels for {n} images")
    out_path = Path(out_path)
    if out_path.suffix != ".npz":
        out_path = out_path.with_name(out_path.name + ".npz")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    shape = (n, *images.image_shape)
    try:
        with (
            zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf,
            zf.open("arr_0.npy", "w", force_zip64=True) as f,
        ):
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False}
            np.lib.format.write_array_header_1_0(f, {**header, "shape": shape})
            for batch in images.iter_batches(256):
                if batch.shape[1:] != shape[1:]:
                    raise ValueError(f"image size {batch.shape[1:]} differs from the first {shape[1:]}")
                f.write(np.ascontiguousarray(batch).tobytes())
        if labels is not None:
            with (
                zipfile.ZipFile(tmp, "a", compression=zipfile.ZIP_STORED, allowZip64=True) as zf,
                zf.open("arr_1.npy", "w", force_zip64=True) as f,
            ):
                np.lib.format.write_array(f, labels, allow_pickle=False)
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path


def read_labels(path: str | Path) -> np.ndarray | None:
    """The (N,) labels (``arr_1``) of a sample pack, or None when it has none."""
    with zipfile.ZipFile(path) as zf:
        if "arr_1.npy" not in zf.namelist():
            return None
    (labels,) = _numbers(path, ["arr_1"])
    return labels.astype(np.int64).reshape(-1)


@dataclass
class ReferencePack:
    """An ADM reference batch or an image folder: images (streaming reader) and precomputed stats."""

    path: Path
    images: NpzImages | FolderImages | None
    mu: np.ndarray | None = None
    sigma: np.ndarray | None = None


def load_reference(path: str | Path) -> ReferencePack:
    """Open an ADM reference ``.npz`` (``arr_0`` images and/or ``mu``/``sigma``; the spatial ``mu_s`` /
    ``sigma_s`` are ignored) or a folder of images. Images are read lazily through ``iter_batches``.

    ADM's ``mu``/``sigma`` come from TF Inception pool3 features, i.e. the ``inception-tf`` feature space.
    """
    path = Path(path)
    if path.is_dir():
        return ReferencePack(path, FolderImages(path))
    if not path.is_file():
        raise FileNotFoundError(f"reference {path} does not exist")
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
    images = NpzImages(path) if "arr_0.npy" in names else None
    mu = sigma = None
    if {"mu.npy", "sigma.npy"} <= names:
        mu, sigma = (a.astype(np.float64) for a in _numbers(path, ["mu", "sigma"]))
    if images is None and mu is None:
        raise ValueError(f"{path} has neither images (arr_0) nor statistics (mu, sigma): {sorted(names)}")
    return ReferencePack(path, images, mu, sigma)
