"""var_lightning: VAR (next-scale prediction) with Hydra and PyTorch Lightning.

Layers: ``tokenizer`` and ``transformer`` hold plain-torch model code; ``training``, ``data`` and
``callbacks`` hold Lightning code; ``cli`` holds the Hydra entry points. ``load_models`` /
``load_pretrained`` (:mod:`var_lightning.checkpoints.loading`) read every kind of model file.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load_models", "load_pretrained"]


def __getattr__(name: str) -> Any:  # lazy: `import var_lightning` stays cheap for the entry points
    if name in __all__:
        from var_lightning.checkpoints import loading

        return getattr(loading, name)
    raise AttributeError(f"module 'var_lightning' has no attribute {name!r}")
