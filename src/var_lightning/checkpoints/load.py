"""One loader for every kind of model file: ``load_models(...) -> LoadedModels(var, vae, info)``.

Accepted, with no flag saying which is which:

* a ``var-train`` checkpoint of the VAR stage (its frozen tokenizer is inside), or a ``var-convert
  to-lightning`` output, as ``.ckpt``, ``.safetensors`` or a sharded directory; a checkpoint of the
  raster-order AR baseline (``stage: ar``) loads the same way, its model in place of VAR; a LoRA checkpoint
  (adapters only) is merged onto its recorded base;
* a ``var-train`` checkpoint of the tokenizer stage (then ``var`` is None);
* a released transformer ``var_d16.pth`` ... (``.pth`` or ``.safetensors``) with its tokenizer given as
  ``vae_path`` or lying beside it as ``vae_ch160v4096z32.pth``; a released tokenizer alone;
* ``pretrained=var_d16`` ... ``var_d36`` (the Hugging Face Hub, :mod:`~var_lightning.checkpoints.hub`), or a
  directory holding the released files;
* a model repository of any stage, a folder or a Hub id (``pretrained=user/my-var``,
  :mod:`~var_lightning.checkpoints.model_repo`, written by ``var-convert to-hub``).

The route is always the same: a name becomes a path (:func:`~.hub.resolve_source`), the path
is read by the one reader (:func:`~.reader.read_checkpoint`, no pickled code), and the models are built by
the one builder (:mod:`~.build`; the published layout through :mod:`~.published`). :class:`ModelInfo` carries
what the commands need besides the weights: the schedule and resolution, the class names, and the
checkpoint's own sampling defaults.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from var_lightning.checkpoints.build import models_from_checkpoint, tokenizer_from_hparams
from var_lightning.checkpoints.hub import (
    PRETRAINED,
    RELEASED_SAMPLING,
    VAE_FILE,
    Source,
    locate,
    released_class_names,
    resolve_source,
    resolve_tokenizer,
)
from var_lightning.checkpoints.lora import is_lora_checkpoint, lora_base, merge_lora_checkpoint
from var_lightning.checkpoints.model_repo import is_model_repo, looks_like_repo_id, push_to_hub, save_repo
from var_lightning.checkpoints.published import load_official_models, load_official_vae
from var_lightning.checkpoints.reader import Read, checkpoint_stage, read_checkpoint, read_source
from var_lightning.checkpoints.safe_io import CheckpointError
from var_lightning.tokenizer.autoencoder import MultiScaleVQVAE
from var_lightning.transformer.sampling import resolve_sampling
from var_lightning.transformer.var import VAR

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- results
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
        keep = ("kind", "stage", "source", "files", "pretrained", "revision", "image_size", "vocab_size")
        return {
            **{k: getattr(self, k) for k in keep},
            "patch_nums": list(self.patch_nums),
            "num_classes": self.num_classes,
            "class_names": list(self.class_names) if self.class_names else None,
            "sampling_defaults": self.sampling,
        }


@dataclass
class LoadedModels:
    """``var, vae, info = load_models(...)`` unpacks it; ``var`` is None for a tokenizer alone. ``other``:
    the checkpoint's weights beyond the models (a tokenizer run's ``loss.discriminator.*``), for fine-tuning."""

    var: VAR | None
    vae: MultiScaleVQVAE
    info: ModelInfo
    other: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.var, self.vae, self.info))

    @classmethod
    def from_pretrained(cls, name_or_dir: str | os.PathLike, **kwargs: Any) -> LoadedModels:
        """A repository folder, a Hub id (``user/my-var``) or a released name, any stage (:func:`load_models`)."""
        return load_models(pretrained=name_or_dir, require_var=False, **kwargs)

    def save_pretrained(self, out_dir: str | os.PathLike, **card: Any) -> Path:
        """A model repository with its card (``card``: :func:`~.model_repo.save_repo`'s options)."""
        return save_repo(self, out_dir, **card)

    def push_to_hub(self, repo_id: str, private: bool = False, token: str | None = None, **card: Any) -> str:
        """Write the repository in a temporary folder and upload it with huggingface_hub; returns its URL."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            return push_to_hub(self.save_pretrained(tmp, repo_id=repo_id, **card), repo_id, private, token)


def _lora_base_state(ckpt: Mapping[str, Any], key: str, trust_pickle: bool) -> dict[str, torch.Tensor]:
    base = str(lora_base(ckpt))
    named = base in PRETRAINED or is_model_repo(base) or looks_like_repo_id(base)
    try:
        base_models = (
            load_models(pretrained=base, key=key)
            if named
            else load_models(base, trust_pickle=trust_pickle, key=key)
        )
    except (FileNotFoundError, CheckpointError, ValueError) as e:
        raise CheckpointError(
            f"{key}: this LoRA checkpoint holds adapters for the base {base} (its init_from), which cannot be "
            f"loaded ({e}). Put the base back at that path, or export the merged model with var-convert to-hub "
            "where the base is available"
        ) from e
    return base_models.var.state_dict()


def _check_stage(read: Read, source: Source, require_var: bool) -> None:
    if read.stage in ("tokenizer", "official-vae") and require_var:
        raise CheckpointError(
            f"{source.key}={source.path} is a tokenizer checkpoint, but a transformer (VAR) is needed here: give a "
            f"VAR checkpoint from `var-train experiment=var_*`, a released var_d*.pth, or pretrained=var_d16"
        )
    if read.stage not in ("var", "ar", "tokenizer", "official-var", "official-vae"):
        raise CheckpointError(
            f"{source.key}={source.path} is not a model checkpoint: it has neither var_lightning metadata nor the "
            f"released models' keys (top-level keys: {sorted(map(str, read.ckpt))[:6]})"
        )


# ---------------------------------------------------------------------------------------------- public
def load_models(
    ckpt_path: str | os.PathLike | None = None,
    *,
    pretrained: str | os.PathLike | None = None,
    vae_path: str | os.PathLike | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    map_location: str | torch.device = "cpu",
    trust_pickle: bool = False,
    require_var: bool = True,
    need_tokenizer: bool = True,
    key: str = "ckpt_path",
) -> LoadedModels:
    """(VAR, VQ-VAE, ModelInfo) from any model file (see the module docstring), in eval mode.

    Give exactly one of ``ckpt_path`` (a file) and ``pretrained`` (a released model's name, a model
    repository, or a released file or directory). ``vae_path``: the tokenizer of a released transformer.
    ``revision`` / ``cache_dir``: Hub revision and cache for names. ``require_var=False`` also accepts
    tokenizers alone (``var`` None); ``need_tokenizer=False`` reads a released transformer without its
    tokenizer file (``vae`` None; fine-tuning). ``trust_pickle``: load files that need full unpickling (with
    a warning); never needed for our files.
    """
    source = resolve_source(ckpt_path, pretrained, vae_path, revision, cache_dir, key, need_tokenizer)
    read = read_source(source, trust_pickle, map_location)
    _check_stage(read, source, require_var)
    ckpt, other, released = read.ckpt, {}, read.stage.startswith("official")
    if released:
        var, vae = load_official_models(ckpt, read.stage, read.tokenizer, map_location)
        names = released_class_names(var.num_classes) if var is not None else None
        sampling, hp, meta = RELEASED_SAMPLING, {}, {"class_names": names}
    else:
        if is_lora_checkpoint(ckpt):  # adapters only: the base from its init_from, adapters merged
            ckpt = merge_lora_checkpoint(ckpt, _lora_base_state(ckpt, source.key, trust_pickle), source.key)
        var, vae, other = models_from_checkpoint(
            ckpt, read.stage, map_location, f"{source.key}={source.path}"
        )
        hp, meta = dict(ckpt.get("hyper_parameters") or {}), ckpt.get("var_lightning") or {}
        sampling = hp.get("sampling")
    if read.tokenizer_path:  # a released transformer and its tokenizer: two files
        files = {"var": str(source.path), "vae": str(read.tokenizer_path)}
    else:
        role = "var" if vae is None else "vae" if var is None and released else "checkpoint"
        files = {role: str(source.path)}
    patch_nums = tuple(vae.patch_nums if vae is not None else var.patch_nums)
    vocab_size = vae.cfg.vocab_size if vae is not None else var.cfg.vocab_size
    info = ModelInfo(
        kind="released" if released else "var_lightning",
        stage=getattr(var, "kind", "var") if var is not None else "tokenizer",
        source=source.asked,
        files=files,
        patch_nums=patch_nums,
        image_size=vae.cfg.image_size if vae is not None else 16 * patch_nums[-1],
        vocab_size=vocab_size,
        num_classes=var.num_classes if var is not None else None,
        class_names=list(meta.get("class_names") or []) or None,
        sampling=resolve_sampling(sampling, vocab_size) if var is not None else {},
        pretrained=source.name,
        revision=source.revision,
        hyper_parameters=hp,
    )
    return LoadedModels(var, vae, info, other)


def load_pretrained(
    name: str,
    revision: str | None = None,
    map_location: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
) -> LoadedModels:
    """A released model by name (``var_d16`` ... ``var_d36``) from the Hub cache (downloaded when missing
    and online), or from a released file / directory: ``var, vae, info = load_pretrained("var_d16")``;
    ``info.patch_nums`` / ``info.image_size`` are the schedule and resolution it was trained at."""
    return load_models(pretrained=name, revision=revision, map_location=map_location, cache_dir=cache_dir)


def load_tokenizer(
    path: str | os.PathLike,
    patch_nums: Sequence[int] | None = None,
    trust_pickle: bool = False,
    key: str = "model.tokenizer_ckpt",
    map_location: str | torch.device = "cpu",
) -> MultiScaleVQVAE:
    """A tokenizer from a tokenizer-stage checkpoint, a VAR-stage checkpoint (its frozen tokenizer), the
    released ``vae_ch160v4096z32.pth`` (a missing file of that name is fetched from the Hub), a released
    model's name (its tokenizer), a model repository, or a ``.safetensors`` of any of these.

    ``patch_nums``: the schedule the caller uses. A var_lightning tokenizer must have been trained with it;
    the released tokenizer has no stored schedule and takes it (256 px by default)."""
    p = Path(path).expanduser()
    released = not p.exists() and (p.name in (VAE_FILE, Path(VAE_FILE).stem) or str(path) in PRETRAINED)
    # the released tokenizer by name, or a model repository (a folder, or user/name on the Hub)
    p = resolve_tokenizer() if released else locate(path, key=key) or p
    ckpt = read_checkpoint(p, key=key, trust_pickle=trust_pickle)
    stage = checkpoint_stage(ckpt)
    if stage == "official-vae":
        return load_official_vae(ckpt, patch_nums=patch_nums, map_location=map_location)
    if stage == "official-var":
        raise ValueError(
            f"{key}={path} is a transformer (VAR) file, but a tokenizer is expected here: pass the checkpoint "
            f"written by `var-train experiment=tokenizer_*` or {VAE_FILE}"
        )
    if stage not in ("tokenizer", "var", "ar"):
        raise ValueError(
            f"{key}={path} is not a tokenizer checkpoint: it has neither var_lightning metadata nor the released "
            f"tokenizer's keys (found keys like {sorted(map(str, ckpt))[:5]})"
        )
    vae = tokenizer_from_hparams(ckpt.get("hyper_parameters") or {}, ckpt["state_dict"], map_location, key)
    if patch_nums is not None and tuple(patch_nums) != tuple(vae.patch_nums):
        raise ValueError(
            f"{key}={path} was trained with scale schedule {tuple(vae.patch_nums)}, but "
            f"schedule.patch_nums={tuple(patch_nums)}; use the same schedule for both stages "
            f"(e.g. schedule=<the tokenizer's>) or train a tokenizer for this schedule"
        )
    return vae
