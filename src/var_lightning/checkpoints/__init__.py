"""Model files and their formats, in one package, lowest first: single files read and written safely
(``safe_io``: no pickled code, atomic writes, safetensors), the formats (``sharded``: DCP directories;
``model_repo``: model repositories; ``hub``: the released weights by name), the one reader that dispatches
on what a path is (``reader``), the one builder (``build``: meta device, assignment), the published layout
(``published``, ``published_config``, ``published_shapes``), LoRA merging (``lora``), and the one loader
that turns any of them into models (``load``: :func:`load_models`, :func:`load_pretrained`).

Import from the submodules; the names below are the ones users reach for.
"""

from __future__ import annotations

from typing import Any

_PUBLIC = {
    "load_models": "load",
    "load_pretrained": "load",
    "load_tokenizer": "load",
    "LoadedModels": "load",
    "ModelInfo": "load",
    "read_checkpoint": "reader",
    "save_checkpoint": "safe_io",
    "CheckpointError": "safe_io",
    "UnsafeCheckpointError": "safe_io",
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
