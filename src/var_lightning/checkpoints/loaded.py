"""What :func:`~var_lightning.checkpoints.loading.load_models` returns: the models and what their file says
about them (:class:`ModelInfo`), with the repository methods users expect (``LoadedModels.from_pretrained``,
``save_pretrained``, ``push_to_hub``: :mod:`var_lightning.checkpoints.model_repo`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from var_lightning.tokenizer.autoencoder import MultiScaleVQVAE
from var_lightning.transformer.var import VAR


@dataclass
class ModelInfo:
    """What a loaded model file says about itself besides its weights."""

    kind: str  # "var_lightning" (var-train / var-convert) or "released" (the published layout)
    stage: str  # "var", "ar" (the raster-order baseline) or "tokenizer"
    source: str  # what was asked for: a path or a pretrained name
    files: dict[str, str]  # the files read: {"checkpoint": ...} or {"var": ..., "vae": ...}
    patch_nums: tuple[int, ...]
    image_size: int
    vocab_size: int
    num_classes: int | None  # None for a tokenizer alone
    class_names: list[str] | None = None
    sampling: dict[str, Any] = field(default_factory=dict)  # cfg, top_k, top_p, more_smooth
    pretrained: str | None = None  # the registry name when loaded by name
    revision: str | None = None
    hyper_parameters: dict[str, Any] = field(default_factory=dict)  # var_lightning checkpoints only

    def class_name(self, label: int) -> str | None:
        names = self.class_names
        return names[label] if names and 0 <= label < len(names) else None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (for report.json / samples.json), without the hyper-parameters."""
        return {
            "kind": self.kind,
            "stage": self.stage,
            "source": self.source,
            "files": self.files,
            "pretrained": self.pretrained,
            "revision": self.revision,
            "patch_nums": list(self.patch_nums),
            "image_size": self.image_size,
            "vocab_size": self.vocab_size,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names) if self.class_names else None,
            "sampling_defaults": self.sampling,
        }


@dataclass
class LoadedModels:
    """``var, vae, info = load_models(...)`` unpacks it; ``var`` is None for a tokenizer alone."""

    var: VAR | None
    vae: MultiScaleVQVAE
    info: ModelInfo

    def __iter__(self) -> Iterator[Any]:
        return iter((self.var, self.vae, self.info))

    @classmethod
    def from_pretrained(cls, name_or_dir: str | os.PathLike, **kwargs: Any) -> LoadedModels:
        """A repository folder, a Hub id (``user/my-var``) or a released name, any stage (:func:`load_models`)."""
        from var_lightning.checkpoints.loading import load_models

        return load_models(pretrained=name_or_dir, require_var=False, **kwargs)

    def save_pretrained(self, out_dir: str | os.PathLike, **card: Any) -> Path:
        """A model repository with its card (``card``: :func:`~.model_repo.save_repo`'s options)."""
        from var_lightning.checkpoints.model_repo import save_repo

        return save_repo(self, out_dir, **card)

    def push_to_hub(self, repo_id: str, private: bool = False, token: str | None = None, **card: Any) -> str:
        """Write the repository in a temporary folder and upload it with huggingface_hub; returns its URL."""
        import tempfile

        from var_lightning.checkpoints.model_repo import push_to_hub

        with tempfile.TemporaryDirectory() as tmp:
            return push_to_hub(self.save_pretrained(tmp, repo_id=repo_id, **card), repo_id, private, token)
