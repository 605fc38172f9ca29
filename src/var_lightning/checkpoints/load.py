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

The route is always the same: a name becomes a path (:func:`~.model_repo.locate`, :mod:`~.hub`), the path
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

from var_lightning.checkpoints.build import tokenizer_from_hparams, transformer_from_hparams
from var_lightning.checkpoints.hub import (
    PRETRAINED,
    RELEASED_SAMPLING,
    VAE_FILE,
    PretrainedFiles,
    released_class_names,
    resolve_pretrained,
    resolve_tokenizer,
    resolve_transformer,
)
from var_lightning.checkpoints.lora import is_lora_checkpoint, lora_base, merge_lora_checkpoint
from var_lightning.checkpoints.model_repo import (
    is_model_repo,
    locate,
    looks_like_repo_id,
    push_to_hub,
    save_repo,
)
from var_lightning.checkpoints.published import load_official_vae, load_official_var
from var_lightning.checkpoints.reader import checkpoint_stage, read_checkpoint
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


def _info(var: VAR | None, vae: MultiScaleVQVAE, kind: str, source: str, files: dict[str, str],
          sampling: Mapping[str, Any] | None, class_names: Sequence[str] | None = None, **extra: Any) -> ModelInfo:  # fmt: skip
    return ModelInfo(
        kind=kind,
        stage=getattr(var, "kind", "var") if var is not None else "tokenizer",
        source=source,
        files=files,
        patch_nums=tuple(vae.patch_nums),
        image_size=vae.cfg.image_size,
        vocab_size=vae.cfg.vocab_size,
        num_classes=var.num_classes if var is not None else None,
        class_names=list(class_names) if class_names else None,
        sampling=resolve_sampling(sampling, vae.cfg.vocab_size) if var is not None else {},
        **extra,
    )


# ---------------------------------------------------------------------------------------------- building
def _released(files: PretrainedFiles, device, trust_pickle: bool, source: str, key: str) -> LoadedModels:
    var = load_official_var(read_checkpoint(files.var_path, key, trust_pickle), map_location=device)
    vae_sd = read_checkpoint(files.vae_path, "vae_path", trust_pickle)
    if checkpoint_stage(vae_sd) != "official-vae":
        raise CheckpointError(
            f"vae_path={files.vae_path} is a {checkpoint_stage(vae_sd)!r} file, not the released tokenizer "
            f"({VAE_FILE}'s layout)"
        )
    vae = load_official_vae(vae_sd, map_location=device, patch_nums=var.patch_nums)
    info = _info(var, vae, "released", source, {"var": str(files.var_path), "vae": str(files.vae_path)},
                 RELEASED_SAMPLING, released_class_names(var.num_classes), pretrained=files.name,
                 revision=files.revision)  # fmt: skip
    return LoadedModels(var, vae, info)


def _released_transformer(path: Path, device, trust_pickle: bool, source: str, key: str,
                          name: str | None = None) -> LoadedModels:  # fmt: skip
    """A released transformer without its tokenizer (``vae`` None): fine-tuning needs no tokenizer file."""
    var = load_official_var(read_checkpoint(path, key, trust_pickle), map_location=device)
    info = ModelInfo("released", "var", source, {"var": str(path)}, tuple(var.patch_nums), 16 * var.patch_nums[-1],
                     var.cfg.vocab_size, var.num_classes, released_class_names(var.num_classes), pretrained=name)  # fmt: skip
    return LoadedModels(var, None, info)


def _sibling_tokenizer(var_path: Path, vae_path: str | os.PathLike | None, key: str) -> Path:
    if vae_path:
        return Path(vae_path).expanduser()
    for candidate in (
        var_path.parent / VAE_FILE,
        var_path.parent / Path(VAE_FILE).with_suffix(".safetensors"),
    ):
        if candidate.is_file():
            log.info("using the tokenizer %s found beside %s", candidate, var_path.name)
            return candidate
    raise CheckpointError(
        f"{key}={var_path} is a released transformer, which needs its tokenizer: pass vae_path=/path/to/{VAE_FILE}, "
        f"put {VAE_FILE} beside it, or use pretrained={var_path.stem if var_path.stem in PRETRAINED else 'var_d16'}"
    )


def _lora_base_state(ckpt: Mapping[str, Any], key: str, trust_pickle: bool) -> dict[str, torch.Tensor]:
    base = str(lora_base(ckpt))
    named = base in PRETRAINED or is_model_repo(base) or looks_like_repo_id(base)
    try:
        models = (
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
    return models.var.state_dict()


def _from_checkpoint(ckpt: dict[str, Any], path: Path, vae_path, device, trust_pickle: bool,
                     require_var: bool, need_tokenizer: bool, key: str) -> LoadedModels:  # fmt: skip
    """Models from what the reader returned for ``path``."""
    stage = checkpoint_stage(ckpt)
    files = {"checkpoint": str(path)}
    if stage == "official-var" and "trainer" not in ckpt and not need_tokenizer:
        return _released_transformer(path, device, trust_pickle, str(path), key)
    if stage == "official-var" and "trainer" not in ckpt:  # a released transformer: the tokenizer is another file
        released = PretrainedFiles(path, _sibling_tokenizer(path, vae_path, key), None, "local")
        return _released(released, device, trust_pickle, str(path), key)
    if vae_path:
        log.warning("vae_path=%s ignored: %s carries its own tokenizer", vae_path, path)
    if stage == "official-var":  # a published trainer checkpoint carries both models
        var = load_official_var(ckpt, map_location=device)
        vae = load_official_vae(ckpt, map_location=device, patch_nums=var.patch_nums)
        return LoadedModels(var, vae, _info(var, vae, "released", str(path), files, RELEASED_SAMPLING))
    if stage in ("tokenizer", "official-vae") and require_var:
        raise CheckpointError(
            f"{key}={path} is a tokenizer checkpoint, but a transformer (VAR) is needed here: give a VAR "
            f"checkpoint from `var-train experiment=var_*`, a released var_d*.pth, or pretrained=var_d16"
        )
    if stage == "official-vae":
        vae = load_official_vae(ckpt, map_location=device)
        return LoadedModels(None, vae, _info(None, vae, "released", str(path), {"vae": str(path)}, None))
    if stage not in ("var", "ar", "tokenizer"):
        raise CheckpointError(
            f"{key}={path} is not a model checkpoint: it has neither var_lightning metadata nor the released "
            f"models' keys (top-level keys: {sorted(map(str, ckpt))[:6]})"
        )
    if not isinstance(ckpt.get("state_dict"), Mapping):
        raise CheckpointError(f"{key}={path}: the checkpoint has no state_dict of weights")
    if is_lora_checkpoint(ckpt):  # adapters only: the base from its init_from, adapters merged
        ckpt = merge_lora_checkpoint(ckpt, _lora_base_state(ckpt, key, trust_pickle), key)
    hp = ckpt.get("hyper_parameters") or {}
    if not isinstance(hp, Mapping):
        raise CheckpointError(
            f"{key}={path}: hyper_parameters is a {type(hp).__name__}, not a mapping of configs"
        )
    sd = ckpt["state_dict"]
    vae = tokenizer_from_hparams(hp, sd, device, key)
    var = transformer_from_hparams(hp, sd, device, key, stage) if stage != "tokenizer" else None
    other = {k: v for k, v in sd.items() if not k.startswith(("vae.", "var.", "var_ema."))}
    meta = ckpt.get("var_lightning") or {}
    info = _info(var, vae, "var_lightning", str(path), files, hp.get("sampling"), meta.get("class_names"),
                 hyper_parameters=dict(hp))  # fmt: skip
    return LoadedModels(var, vae, info, other)


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
    if (ckpt_path is None) == (pretrained is None):
        raise ValueError(
            f"give exactly one of ckpt_path=<checkpoint file> and pretrained=<{' | '.join(PRETRAINED)}> "
            f"(got ckpt_path={ckpt_path}, pretrained={pretrained})"
        )
    if pretrained is not None:
        repo = locate(pretrained, revision, cache_dir)  # a model repository (a folder or user/name)
        if repo is None and not need_tokenizer and str(pretrained) in PRETRAINED:
            var_path = resolve_transformer(str(pretrained), revision, cache_dir)
            return _released_transformer(
                var_path, map_location, trust_pickle, str(pretrained), key, str(pretrained)
            )
        if repo is None:
            files = resolve_pretrained(pretrained, revision=revision, cache_dir=cache_dir, vae_path=vae_path)
            return _released(files, map_location, trust_pickle, str(pretrained), "pretrained")
        path, key = repo, "pretrained"
    else:
        path = Path(ckpt_path).expanduser()
        if not path.exists() and (str(ckpt_path) in PRETRAINED or looks_like_repo_id(str(ckpt_path))):
            raise FileNotFoundError(
                f"{key}={ckpt_path}: no such file or folder; a released model or a model repository on the "
                f"Hugging Face Hub loads with pretrained={ckpt_path}"
            )
    ckpt = read_checkpoint(path, key=key, trust_pickle=trust_pickle, map_location=map_location)
    models = _from_checkpoint(
        ckpt, path, vae_path, map_location, trust_pickle, require_var, need_tokenizer, key
    )
    if pretrained is not None:
        models.info.source = models.info.pretrained = str(pretrained)
        models.info.revision = revision
    return models


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
