"""Model files and their formats, in one package: how a file is read safely (``files``: no pickled code,
dtype and shape checks, atomic writes, safetensors; ``sharded``: DCP directories), where the released
weights come from (``hub``), the published checkpoint layout (``published``, ``published_shapes``), and
how any of them becomes models (``loading``: :func:`load_models`, :func:`load_pretrained`).

Import from the submodules; the names below are the ones users reach for.
"""

from __future__ import annotations

from typing import Any

_PUBLIC = {
    "load_models": "loading",
    "load_pretrained": "loading",
    "load_tokenizer": "loading",
    "LoadedModels": "loaded",
    "ModelInfo": "loaded",
    "read_checkpoint": "files",
    "save_checkpoint": "files",
    "CheckpointError": "files",
    "UnsafeCheckpointError": "files",
    "export_official_var": "published",
    "export_official_vae": "published",
    "load_official_var": "published",
    "load_official_vae": "published",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:  # lazy: reading a file does not import the Hub client or the models
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(f"var_lightning.checkpoints.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module 'var_lightning.checkpoints' has no attribute {name!r}")
