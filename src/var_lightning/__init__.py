"""var_lightning: VAR (next-scale prediction) with Hydra and PyTorch Lightning.

The public names, importable from the package root (loaded on first use, so ``import var_lightning`` and
the entry points stay cheap)::

    from var_lightning import VAR, VARConfig, MultiScaleVQVAE, VQVAEConfig, preset
    from var_lightning import load_models, load_pretrained, sample, edit, build_sampler, LoadedModels

Packages (docs/architecture.md): ``tokenizer`` and ``transformer`` hold plain-torch model code;
``checkpoints`` every model file; ``inference`` what the front ends share; ``training``, ``data`` and
``callbacks`` the Lightning code; ``evaluation`` the metrics; ``cli`` the Hydra entry points.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    # models and their configs
    "VAR": "var_lightning.transformer.var",
    "VARConfig": "var_lightning.transformer.config",
    "preset": "var_lightning.transformer.config",
    "MultiScaleVQVAE": "var_lightning.tokenizer.autoencoder",
    "VQVAEConfig": "var_lightning.tokenizer.config",
    # sampling and editing
    "sample": "var_lightning.transformer.sampling",
    "build_sampler": "var_lightning.transformer.fast_sampling",
    "FastSampler": "var_lightning.transformer.fast_sampling",
    "edit": "var_lightning.transformer.editing",
    # model files
    "load_models": "var_lightning.checkpoints.load",
    "load_pretrained": "var_lightning.checkpoints.load",
    "load_tokenizer": "var_lightning.checkpoints.load",
    "LoadedModels": "var_lightning.checkpoints.load",
    "export_official_var": "var_lightning.checkpoints.published",
    "export_official_vae": "var_lightning.checkpoints.published",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value  # once
        return value
    raise AttributeError(f"module 'var_lightning' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
