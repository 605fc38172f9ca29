"""Sharded (DCP) checkpoint directories, as ``trainer=fsdp*`` writes them, read safely in one process.

A sharded checkpoint is a directory ``last.ckpt/`` holding ``.metadata`` (torch.distributed.checkpoint's
index, a pickle), ``__<rank>_0.distcp`` (each rank's shards of the weights and AdamW state) and ``meta.pt``
(everything else Lightning saves: loops, callbacks, hyper-parameters, our ``var_lightning`` record).

Why our own reader: torch reads ``.metadata`` with a plain ``pickle.load``, which can execute code from a
downloaded or tampered directory. Here it is read with :class:`_MetadataUnpickler`, which rebuilds only
DCP's own metadata dataclasses, enums, dtypes, sizes and paths and refuses anything else
(:class:`~var_lightning.checkpoints.safe_io.UnsafeCheckpointError`, ``trust_pickle`` overrides). ``meta.pt`` is read
with ``weights_only=True``. The shard files' non-tensor ("bytes") entries are pickles that DCP's reader unpickles
fully: :func:`check_byte_entries` reads each one first with ``weights_only=True`` (what our
checkpoints store there, optimizer settings and plain values, passes) and refuses any other with the file and
entry named, and the tensors are then read under :func:`~var_lightning.checkpoints.safe_io.weights_only_loads`,
so nothing in the directory is unpickled beyond tensors and plain values without ``trust_pickle``. So ``load_models``, ``var-sample``, ``var-eval`` and ``var-convert`` accept the
directory like a file, and ``resume=auto`` checks it (every shard file present and long enough) before
Lightning reads it (Lightning's own read repeats torch's pickle load, of the bytes checked here).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import importlib
import io
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from var_lightning.checkpoints.safe_io import (
    CheckpointError,
    UnsafeCheckpointError,
    torch_load,
    unpickling_reason,
    weights_only_loads,
)

METADATA = ".metadata"
LIGHTNING_META = "meta.pt"
_PLAIN = {
    ("torch", "Size"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PurePosixPath"),
    ("torch.serialization", "_get_layout"),
}


def is_sharded_checkpoint(path: str | os.PathLike) -> bool:
    """A directory with a DCP ``.metadata`` index."""
    p = Path(path)
    return p.is_dir() and (p / METADATA).is_file()


class _MetadataUnpickler(pickle.Unpickler):
    """Rebuilds DCP metadata only: dataclasses/enums/named tuples of ``torch.distributed.checkpoint``, torch
    dtypes, layouts and sizes, paths and plain containers. Any other global is refused before import."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PLAIN:
            return super().find_class(module, name)
        if module == "torch":
            obj = getattr(torch, name, None)
            if isinstance(obj, torch.dtype):
                return obj
        elif module.startswith("torch.distributed.checkpoint."):
            obj = getattr(importlib.import_module(module), name, None)
            if isinstance(obj, type) and (
                dataclasses.is_dataclass(obj) or issubclass(obj, enum.Enum) or issubclass(obj, tuple)
            ):
                return obj
        raise pickle.UnpicklingError(f"global {module}.{name} is not part of a checkpoint index")


def read_metadata(path: str | os.PathLike, key: str = "ckpt_path", trust_pickle: bool = False) -> Any:
    """The DCP index of a sharded checkpoint directory, unpickled safely (see the module docstring)."""
    p = Path(path) / METADATA
    data = p.read_bytes()
    try:
        return _MetadataUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as e:
        if not trust_pickle:
            raise UnsafeCheckpointError(
                f"{key}={p.parent}: refused to load: {p.name} holds pickled objects beyond a checkpoint index "
                f"({e}), and unpickling them can execute code. A directory written by var-train never does; "
                f"if you trust its origin, pass trust_pickle=true"
            ) from e
    except (EOFError, ValueError, TypeError, AttributeError, ImportError) as e:
        raise CheckpointError(
            f"{key}={p.parent}: {p.name} cannot be read ({type(e).__name__}: {e}); the sharded checkpoint is "
            f"damaged or was only partly written"
        ) from e
    return pickle.loads(data)  # trust_pickle=true only (refused above otherwise)


def verify_shards(path: str | os.PathLike, metadata: Any, key: str = "ckpt_path") -> None:
    """Every shard file the index names exists and holds the bytes the index points to (a job killed while
    saving, or a copy that missed a rank's file, is caught here rather than inside the load)."""
    need: dict[str, int] = {}
    for info in (getattr(metadata, "storage_data", None) or {}).values():
        rel = str(getattr(info, "relative_path", ""))
        end = int(getattr(info, "offset", 0)) + int(getattr(info, "length", 0))
        need[rel] = max(need.get(rel, 0), end)
    for rel, end in sorted(need.items()):
        f = Path(path) / rel
        if not f.is_file():
            raise CheckpointError(f"{key}={path}: shard file {rel} is missing (copy every __<rank>_0.distcp)")
        if f.stat().st_size < end:
            raise CheckpointError(
                f"{key}={path}: shard file {rel} is truncated ({f.stat().st_size} of {end} bytes)"
            )


def check_byte_entries(path: str | os.PathLike, metadata: Any, key: str = "ckpt_path") -> None:
    """Every non-tensor entry of the shard files unpickles with ``weights_only=True`` (tensors, plain
    containers and values); anything else is refused before DCP's reader, which would load it with full
    unpickling, sees it."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    entries = getattr(metadata, "state_dict_metadata", None) or {}
    for index, info in (getattr(metadata, "storage_data", None) or {}).items():
        fqn = getattr(index, "fqn", None)
        if not isinstance(entries.get(fqn), BytesStorageMetadata):
            continue
        rel, offset, length = str(info.relative_path), int(info.offset), int(info.length)
        where = f"{key}={path}: shard file {rel}, entry {fqn}"
        if getattr(info, "transform_descriptors", None):
            raise UnsafeCheckpointError(
                f"{where}: refused to load: the entry is stored with transforms "
                f"({list(info.transform_descriptors)}) this reader cannot check; if you trust the directory's "
                f"origin, pass trust_pickle=true"
            )
        with open(Path(path) / rel, "rb") as f:
            f.seek(offset)
            blob = f.read(length)
        try:
            torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise UnsafeCheckpointError(
                f"{where}: refused to load: the entry holds pickled Python objects beyond tensors and plain "
                f"values ({unpickling_reason(e)}), and unpickling them can execute code. var-train's sharded "
                f"checkpoints never need this. If you trust the directory's origin, pass trust_pickle=true"
            ) from e
        except Exception as e:  # noqa: BLE001 - a damaged entry: name it rather than let DCP fail later
            raise CheckpointError(f"{where}: cannot read the entry ({type(e).__name__}: {e})") from e


def read_sharded_meta(
    path: str | os.PathLike, key: str = "ckpt_path", trust_pickle: bool = False
) -> tuple[dict[str, Any], Any]:
    """(``meta.pt`` as a dict, the checked index) of a sharded checkpoint directory; no tensors are read."""
    p = Path(path)
    metadata = read_metadata(p, key, trust_pickle)
    verify_shards(p, metadata, key)
    if not trust_pickle:
        check_byte_entries(p, metadata, key)
    meta_file = p / LIGHTNING_META
    if not meta_file.is_file():
        raise CheckpointError(
            f"{key}={p}: {LIGHTNING_META} is missing; this is not a var-train checkpoint directory"
        )
    meta = torch_load(meta_file, key=key, trust_pickle=trust_pickle)
    if not isinstance(meta, dict):
        raise CheckpointError(f"{key}={meta_file}: holds a {type(meta).__name__}, not checkpoint metadata")
    return meta, metadata


def stored_keys(metadata: Any, prefix: str) -> list[str]:
    """The flattened keys of the index that start with ``prefix`` (e.g. ``optimizer_0``)."""
    return [k for k in metadata.state_dict_metadata if k == prefix or k.startswith(prefix + ".")]


class _SafeReader:
    """DCP's ``FileSystemReader`` with the index read by :func:`read_metadata`."""

    def __new__(cls, path: Path, metadata: Any) -> Any:
        from torch.distributed.checkpoint import FileSystemReader

        class Reader(FileSystemReader):
            def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
                return metadata

        return Reader(str(path))


def read_sharded_checkpoint(
    path: str | os.PathLike, key: str = "ckpt_path", trust_pickle: bool = False
) -> dict[str, Any]:
    """A sharded checkpoint directory as a Lightning checkpoint dict with the full ``state_dict`` (weights
    only, on the CPU; the optimizer shards are not read). Runs in one process, no process group needed."""
    # torch's own single-process reader of selected keys (private, in torch since 2.4)
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

    p = Path(path)
    meta, metadata = read_sharded_meta(p, key, trust_pickle)
    if not stored_keys(metadata, "state_dict"):
        raise CheckpointError(f"{key}={p}: the sharded checkpoint holds no model weights (state_dict)")
    safe = contextlib.nullcontext() if trust_pickle else weights_only_loads()
    try:
        with warnings.catch_warnings(), safe:  # "assuming the intent is to load in a single process": it is
            warnings.filterwarnings("ignore", message=".*single process.*")
            loaded = _load_state_dict_from_keys({"state_dict"}, storage_reader=_SafeReader(p, metadata))
    except Exception as e:  # noqa: BLE001 - DCP wraps reader errors in its own types
        raise CheckpointError(f"{key}={p}: cannot read the shard files ({type(e).__name__}: {e})") from e
    state = loaded["state_dict"]
    meta["state_dict"] = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v) for k, v in state.items()}
    return meta
