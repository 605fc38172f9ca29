"""The bottom of ``checkpoints/``: single files read and written safely; no load path executes pickled code.

Every ``.ckpt`` / ``.pth`` is read with ``torch.load(weights_only=True)``, which only rebuilds tensors and
plain containers. A file that needs more (a pickled class, a function) is refused with
:class:`UnsafeCheckpointError`; ``trust_pickle=True`` loads it anyway with a warning naming the file, for
the rare foreign file the user vouches for. ``.safetensors`` files are read with the safetensors library;
a var_lightning checkpoint keeps its hyper-parameters and record as JSON in the header (key
``var_lightning``). Writes are atomic (a temporary file, fsync, rename).

What a path *is* (a file, a sharded directory, a model repository) is decided one floor up, in
:mod:`var_lightning.checkpoints.reader`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import re
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

SAFETENSORS_SUFFIX = ".safetensors"
_META_KEY = "var_lightning"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used here; the message names the file, the key and the fix."""


class UnsafeCheckpointError(CheckpointError):
    """The file needs full unpickling, which can execute code; refused unless ``trust_pickle=true``."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def unpickling_reason(e: BaseException) -> str:
    """What torch's weights-only refusal met (a global's name, an opcode), without terminal colours and
    without torch's advice to allowlist that global (which would let exactly this file's code run)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    m = re.search(r"GLOBAL ([\w.]+)", text)
    if m:
        return f"it references the Python object {m.group(1)}"
    m = re.search(r"Unsupported operand (\d+)", text)
    if m:
        return f"it uses the pickle operation {m.group(1)}"
    return _first_line(e).split(". Please", 1)[0].split("torch.serialization", 1)[0].strip()


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Every ``torch.load`` inside runs with ``weights_only=True`` whatever its caller asks (torch's
    ``TORCH_FORCE_WEIGHTS_ONLY_LOAD``). For code we do not own that unpickles fully (``weights_only`` off):
    torch's DCP reader loads the bytes entries of ``.distcp`` files so, for our one-process reader and for
    Lightning's sharded resume alike. Process-wide while it lasts; the previous value is restored."""
    name = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
    before = os.environ.get(name)
    os.environ[name] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def resolve_file(path: str | os.PathLike, key: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        hint = (
            " (it is a directory but not a sharded checkpoint: give the checkpoint file inside it)"
            if p.is_dir()
            else ""
        )
        raise FileNotFoundError(f"{key}={str(path)!r}: no such file{hint}")
    return p


def _check_looks_like_torch(p: Path, key: str) -> None:
    """PyTorch writes a zip archive (or, before 1.6, a pickle: first byte 0x80); anything else (a text file,
    an image, an HTML error page saved as .ckpt) is named as such instead of failing inside the unpickler
    with ``KeyError: 101``."""
    with open(p, "rb") as f:
        head = f.read(64)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80" or zipfile.is_zipfile(p):  # (a truncated zip too)
        return
    if not head:
        what = "it is empty"
    elif all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        what = f"it is a text file (it starts with {head[:40].decode('ascii', 'replace')!r})"
    else:
        what = f"its first bytes {head[:8]!r} are not PyTorch's zip or pickle format"
    raise CheckpointError(
        f"{key}={p}: not a checkpoint: {what}. Give a .ckpt written by var-train, a released .pth, or a "
        f".safetensors file"
    )


def check_records(path: str | os.PathLike, key: str = "ckpt_path") -> None:
    """Every record of a torch zip checkpoint against its CRC-32 (torch stores one per tensor record): a
    file damaged on disk or only partly copied is named here instead of loading wrong weights. Reads the
    file once (about a second per GB) without unpickling or allocating tensors."""
    p = Path(path)
    try:
        with zipfile.ZipFile(p) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, zlib.error) as e:
        raise CheckpointError(f"{key}={p}: damaged zip structure ({type(e).__name__}: {e})") from e
    if bad is not None:
        raise CheckpointError(
            f"{key}={p}: record {bad} fails its CRC check (the file was damaged on disk or only partly "
            "written or copied); copy it again, or use another checkpoint"
        )


def torch_load(
    path: str | os.PathLike,
    key: str = "ckpt_path",
    trust_pickle: bool = False,
    map_location: str | torch.device = "cpu",
    mmap: bool = False,
    verify: bool = True,
) -> Any:
    """``torch.load(weights_only=True)`` with errors that name the file and the config key; ``verify``:
    every record's CRC first (:func:`check_records`; off only where the same file was just verified).

    Refuses (``UnsafeCheckpointError``) a file whose unpickling would need arbitrary classes or callables,
    unless ``trust_pickle``: then it is loaded with ``weights_only=False`` after a warning. A truncated or
    corrupt file raises ``CheckpointError``.
    """
    p = resolve_file(path, key)
    _check_looks_like_torch(p, key)
    if verify and zipfile.is_zipfile(p):
        check_records(p, key)
    try:
        return torch.load(p, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        if not trust_pickle:
            raise UnsafeCheckpointError(
                f"{key}={p}: refused to load: the file holds pickled Python objects beyond tensors and plain "
                f"containers ({unpickling_reason(e)}), and unpickling them can execute code. var_lightning and the "
                f"released VAR checkpoints never need this. If you trust the file's origin, pass "
                f"trust_pickle=true (command line) / trust_pickle=True (Python) to load it anyway"
            ) from e
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise CheckpointError(
            f"{key}={p}: cannot read the file ({type(e).__name__}: {_first_line(e)}); it is truncated, corrupt "
            f"or not a PyTorch checkpoint"
        ) from e
    msg = (
        f"trust_pickle=true: loading {p} with full unpickling (weights_only=False); any code the file "
        f"carries runs now"
    )
    log.warning(msg)
    warnings.warn(msg, stacklevel=2)
    try:
        # only reached with trust_pickle=True (refused above otherwise): full unpickling
        return torch.load(p, map_location=map_location, weights_only=not trust_pickle, mmap=mmap)
    except Exception as e:  # noqa: BLE001 - whatever the trusted file raises, name it
        raise CheckpointError(
            f"{key}={p}: cannot read the file ({type(e).__name__}: {_first_line(e)})"
        ) from e


# ---------------------------------------------------------------------------------------------- safetensors
def read_safetensors(path: str | os.PathLike, key: str = "ckpt_path", device: str = "cpu") -> dict[str, Any]:
    """A ``.safetensors`` file as a checkpoint dict: a var_lightning one (metadata key ``var_lightning``)
    becomes ``{"state_dict", "hyper_parameters", "var_lightning"}``, anything else its plain state_dict."""
    from safetensors import SafetensorError, safe_open

    p = resolve_file(path, key)
    try:
        with safe_open(str(p), framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no items()
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{key}={p}: cannot read the safetensors file ({type(e).__name__}: {_first_line(e)})"
        ) from e
    if _META_KEY not in meta:
        return tensors
    try:
        info = json.loads(meta[_META_KEY])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{key}={p}: the '{_META_KEY}' metadata is not valid JSON ({e})") from e
    return {
        "state_dict": tensors,
        "hyper_parameters": info.get("hyper_parameters", {}),
        _META_KEY: info.get("meta", {}),
    }


def write_safetensors(ckpt: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write a checkpoint dict (see the module docstring) as ``.safetensors``: a var_lightning checkpoint
    keeps its hyper-parameters and metadata as JSON; a plain state_dict is written as it is."""
    from safetensors.torch import save_file

    p = Path(path)
    if isinstance(ckpt.get("state_dict"), Mapping) and _META_KEY in ckpt:
        tensors = ckpt["state_dict"]
        info = {"hyper_parameters": ckpt.get("hyper_parameters", {}), "meta": ckpt[_META_KEY]}
        metadata = {_META_KEY: json.dumps(info), "format": "pt"}
    else:
        tensors, metadata = ckpt, {"format": "pt"}
    bad = [k for k, v in tensors.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise TypeError(f"safetensors holds tensors only; not tensors: {bad[:5]}")
    # safetensors refuses shared or non-contiguous storage: give every tensor its own contiguous copy
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    p.parent.mkdir(parents=True, exist_ok=True)
    save_file(plain, str(p), metadata=metadata)
    return p


def is_safetensors(path: str | os.PathLike) -> bool:
    """By content, whatever the suffix: an 8-byte little-endian header length, then the JSON header."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 0 < int.from_bytes(head[:8], "little") < os.path.getsize(path)


def _fsync_dir(directory: Path) -> None:
    try:  # not every file system lets a directory be opened
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` for a temporary file beside ``path``, fsync it, rename it over ``path`` and sync
    the directory: a kill or a full disk never leaves a partial file under ``path``, and on failure the
    previous file there is untouched (the temporary file is removed)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    _fsync_dir(target.parent)
    return target


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through :func:`atomic_write`."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_checkpoint(ckpt: Mapping[str, Any], path: str | os.PathLike, fmt: str | None = None) -> Path:
    """Write ``ckpt`` as ``fmt`` (``pth`` or ``safetensors``; default from the suffix), atomically
    (:func:`atomic_write`)."""
    p = Path(path)
    fmt = fmt or ("safetensors" if p.suffix == SAFETENSORS_SUFFIX else "pth")
    if fmt not in ("pth", "safetensors"):
        raise ValueError(f"format={fmt!r}: choose pth or safetensors")
    if fmt == "safetensors":
        return atomic_write(p, lambda tmp: write_safetensors(ckpt, tmp))
    return atomic_torch_save(dict(ckpt), p)
