"""One loader for every kind of model file: ``load_models(...) -> (VAR, VQ-VAE, ModelInfo)``.

Accepted, with no flag saying which is which:

* a ``var-train`` checkpoint of the VAR stage (its frozen tokenizer is inside), or a ``var-convert
  to-lightning`` output, as ``.ckpt`` or ``.safetensors``; a checkpoint of the raster-order AR baseline
  (``stage: ar``, :mod:`var_lightning.transformer.ar`) loads the same way, its model in place of VAR;
* a ``var-train`` checkpoint of the tokenizer stage (then ``var`` is None);
* a released transformer ``var_d16.pth`` ... (``.pth`` or ``.safetensors``) with its tokenizer given as
  ``vae_path`` or lying beside it as ``vae_ch160v4096z32.pth``; a released tokenizer alone;
* ``pretrained=var_d16`` ... ``var_d36`` (the Hugging Face Hub, :mod:`var_lightning.checkpoints.hub`), or a
  directory holding the released files;
* a model repository of any stage, a folder or a Hub id (``pretrained=user/my-var``,
  :mod:`var_lightning.checkpoints.model_repo`, written by ``var-convert to-hub``).

Every file is read without executing pickled code (:mod:`var_lightning.checkpoints.files`). Models are built
on the meta device and filled by assignment, so even the 2B-parameter models load without a wasted
random initialisation. :class:`ModelInfo` carries what the commands need besides the weights: the
schedule and resolution, the class names, and the checkpoint's own sampling defaults (cfg, top-k, top-p).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from var_lightning.checkpoints.files import (
    CheckpointError,
    check_dtypes,
    checkpoint_stage,
    read_checkpoint,
    sub_state_dict,
    transformer_state_dict,
)
from var_lightning.checkpoints.hub import (
    PRETRAINED,
    RELEASED_SAMPLING,
    VAE_FILE,
    PretrainedFiles,
    resolve_pretrained,
    resolve_tokenizer,
)
from var_lightning.checkpoints.loaded import LoadedModels, ModelInfo
from var_lightning.tokenizer.autoencoder import MultiScaleVQVAE
from var_lightning.tokenizer.config import VQVAEConfig
from var_lightning.transformer.config import VARConfig
from var_lightning.transformer.sampling import resolve_sampling
from var_lightning.transformer.var import VAR

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- building
def materialize(
    factory: Callable[[], nn.Module],
    state_dict: Mapping[str, torch.Tensor],
    device: str | torch.device,
    what: str,
) -> nn.Module:
    """Build ``factory()`` on the meta device and load ``state_dict`` strictly by assignment (cast to the
    model's dtypes, on ``device``); errors name the missing, unexpected and misshaped tensors."""
    with torch.device("meta"):
        model = factory()
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict
        and tuple(state_dict[k].shape) != tuple(v.shape)
        and not k.endswith("ema_vocab_hit_SV")
    ]
    if missing or unexpected or shapes:
        parts = [
            f"{len(v)} {label}: {', '.join(v[:8])}{' ...' if len(v) > 8 else ''}"
            for label, v in (("missing", missing), ("unexpected", unexpected), ("misshaped", shapes))
            if v
        ]
        raise CheckpointError(f"the {what} weights do not fit its stored config ({'; '.join(parts)})")
    check_dtypes(state_dict, expected, what)
    sd = {}
    for k, v in expected.items():
        t = state_dict[k]
        if k.endswith("ema_vocab_hit_SV") and tuple(t.shape) != tuple(v.shape):
            t = torch.zeros(v.shape)  # usage statistics recorded with another number of scales
        sd[k] = t.detach().to(device=device, dtype=v.dtype)
    nn.Module.load_state_dict(model, sd, strict=True, assign=True)
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"tensors left uninitialised after loading the {what}: {left[:8]}")
    return model.eval()


def _vae_from_hparams(
    hp: Mapping[str, Any], sd: Mapping[str, torch.Tensor], device, key: str
) -> MultiScaleVQVAE:
    if "tokenizer" not in hp:
        raise CheckpointError(f"{key}: the checkpoint's hyper_parameters have no 'tokenizer' config")
    cfg = VQVAEConfig(**dict(hp["tokenizer"]))
    return materialize(lambda: MultiScaleVQVAE(cfg), sub_state_dict(sd, "vae."), device, "tokenizer")


def _var_from_hparams(
    hp: Mapping[str, Any], sd: Mapping[str, torch.Tensor], device, key: str, stage: str = "var"
) -> VAR:
    """The transformer of a ``var`` checkpoint, or the raster-order baseline of an ``ar`` one."""
    cfg = VARConfig(**dict(hp["transformer"]))
    if stage == "ar":
        from var_lightning.transformer.ar import ARTransformer

        return materialize(lambda: ARTransformer(cfg), transformer_state_dict(sd), device, "AR transformer")
    return materialize(lambda: VAR(cfg), transformer_state_dict(sd), device, "transformer")


def _info(
    var: VAR | None,
    vae: MultiScaleVQVAE,
    kind: str,
    source: str,
    files: dict[str, str],
    sampling: Mapping[str, Any] | None,
    class_names: Sequence[str] | None = None,
    **extra: Any,
) -> ModelInfo:
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


def _released_tokenizer(
    path: str | os.PathLike, patch_nums: Sequence[int] | None, device, trust_pickle: bool, key: str
) -> MultiScaleVQVAE:
    from var_lightning.checkpoints.published import load_official_vae

    sd = read_checkpoint(path, key=key, trust_pickle=trust_pickle)
    stage = checkpoint_stage(sd)
    if stage != "official-vae":
        raise CheckpointError(
            f"{key}={path} is a {stage!r} file, not the released tokenizer ({VAE_FILE}'s layout)"
        )
    return load_official_vae(sd, map_location=device, patch_nums=patch_nums)


def _from_released_files(
    files: PretrainedFiles, device, trust_pickle: bool, source: str, key: str
) -> LoadedModels:
    from var_lightning.checkpoints.published import load_official_var

    var_sd = read_checkpoint(files.var_path, key=key, trust_pickle=trust_pickle)
    var = load_official_var(var_sd, map_location=device)
    vae = _released_tokenizer(files.vae_path, var.patch_nums, device, trust_pickle, "vae_path")
    info = _info(
        var,
        vae,
        "released",
        source,
        {"var": str(files.var_path), "vae": str(files.vae_path)},
        RELEASED_SAMPLING,
        imagenet_class_names() if var.num_classes == 1000 else None,
        pretrained=files.name,
        revision=files.revision,
    )
    return LoadedModels(var, vae, info)


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k WordNet ids (``n01440764`` ...) in the class order of :func:`imagenet_class_names`:
    an ImageNet-layout folder names its classes by them."""
    text = (Path(__file__).with_name("imagenet_wnids.txt")).read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in the standard (sorted synset) order the released models use,
    from torchvision's metadata (no download)."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return list(_IMAGENET_CATEGORIES)


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
    key: str = "ckpt_path",
) -> LoadedModels:
    """(VAR, VQ-VAE, ModelInfo) from any model file (see the module docstring), in eval mode.

    Give exactly one of ``ckpt_path`` (a file) and ``pretrained`` (a released model's name, or a released
    file or directory). ``vae_path``: the tokenizer of a released transformer. ``revision`` / ``cache_dir``:
    Hub revision and cache for names. ``require_var=False`` also accepts tokenizers alone (``var`` None).
    ``trust_pickle``: load files that need full unpickling (with a warning); never needed for our files.
    """
    if (ckpt_path is None) == (pretrained is None):
        raise ValueError(
            f"give exactly one of ckpt_path=<checkpoint file> and pretrained=<{' | '.join(PRETRAINED)}> "
            f"(got ckpt_path={ckpt_path}, pretrained={pretrained})"
        )
    if pretrained is not None:
        from var_lightning.checkpoints.model_repo import locate

        repo = locate(pretrained, revision, cache_dir)  # a model repository (a folder or user/name)
        if repo is not None:
            models = load_models(repo, map_location=map_location, require_var=require_var, key="pretrained")
            models.info.source, models.info.pretrained, models.info.revision = (
                str(pretrained),
                str(pretrained),
                revision,
            )
            return models
        files = resolve_pretrained(pretrained, revision=revision, cache_dir=cache_dir, vae_path=vae_path)
        return _from_released_files(files, map_location, trust_pickle, str(pretrained), "pretrained")
    path = Path(ckpt_path).expanduser()
    if not path.exists() and str(ckpt_path) in PRETRAINED:
        raise FileNotFoundError(
            f"{key}={ckpt_path}: no such file; to load the released model use pretrained={ckpt_path}"
        )
    from var_lightning.checkpoints.model_repo import looks_like_repo_id

    if not path.exists() and looks_like_repo_id(str(ckpt_path)):
        raise FileNotFoundError(
            f"{key}={ckpt_path}: no such file or folder; a model repository on the Hugging Face Hub loads with "
            f"pretrained={ckpt_path}"
        )
    ckpt = read_checkpoint(path, key=key, trust_pickle=trust_pickle)
    stage = checkpoint_stage(ckpt)
    if stage == "official-var" and "trainer" not in ckpt:
        vae_file = _sibling_tokenizer(path, vae_path, key)
        return _from_released_files(
            PretrainedFiles(path, vae_file, None, "local"), map_location, trust_pickle, str(path), key
        )
    if stage == "official-var":  # a published trainer checkpoint carries both models
        from var_lightning.checkpoints.published import load_official_vae, load_official_var

        var = load_official_var(ckpt, map_location=map_location)
        vae = load_official_vae(ckpt, map_location=map_location, patch_nums=var.patch_nums)
        info = _info(var, vae, "released", str(path), {"checkpoint": str(path)}, RELEASED_SAMPLING)
        return LoadedModels(var, vae, info)
    if vae_path:
        log.warning("vae_path=%s ignored: %s carries its own tokenizer", vae_path, path)
    from var_lightning.checkpoints.lora import is_lora_checkpoint, merge_lora_checkpoint

    if is_lora_checkpoint(ckpt):  # adapters only: the base from its init_from, adapters merged
        ckpt = merge_lora_checkpoint(ckpt, key, trust_pickle)
    meta = dict(ckpt.get("var_lightning") or {})
    hp = dict(ckpt.get("hyper_parameters") or {})
    if stage in ("var", "ar"):
        vae = _vae_from_hparams(hp, ckpt["state_dict"], map_location, key)
        var = _var_from_hparams(hp, ckpt["state_dict"], map_location, key, stage)
        info = _info(
            var, vae, "var_lightning", str(path), {"checkpoint": str(path)}, hp.get("sampling"),
            meta.get("class_names"), hyper_parameters=hp,
        )  # fmt: skip
        return LoadedModels(var, vae, info)
    if stage in ("tokenizer", "official-vae"):
        if require_var:
            raise CheckpointError(
                f"{key}={path} is a tokenizer checkpoint, but a transformer (VAR) is needed here: give a VAR "
                f"checkpoint from `var-train experiment=var_*`, a released var_d*.pth, or pretrained=var_d16"
            )
        if stage == "tokenizer":
            vae = _vae_from_hparams(hp, ckpt["state_dict"], map_location, key)
            info = _info(
                None, vae, "var_lightning", str(path), {"checkpoint": str(path)}, None, hyper_parameters=hp
            )
        else:
            from var_lightning.checkpoints.published import load_official_vae

            vae = load_official_vae(ckpt, map_location=map_location)
            info = _info(None, vae, "released", str(path), {"vae": str(path)}, None)
        return LoadedModels(None, vae, info)
    raise CheckpointError(
        f"{key}={path} is not a model checkpoint: it has neither var_lightning metadata nor the released models' "
        f"keys (top-level keys: {sorted(map(str, ckpt))[:6]})"
    )


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
    model's name (its tokenizer) or a ``.safetensors`` of any of these.

    ``patch_nums``: the schedule the caller uses. A var_lightning tokenizer must have been trained with it;
    the released tokenizer has no stored schedule and takes it (256 px by default)."""
    from var_lightning.checkpoints.model_repo import locate

    p = Path(path).expanduser()
    released = not p.exists() and (p.name in (VAE_FILE, Path(VAE_FILE).stem) or str(path) in PRETRAINED)
    # the released tokenizer by name, or a model repository (a folder, or user/name on the Hub)
    p = resolve_tokenizer() if released else locate(path, key=key) or p
    ckpt = read_checkpoint(p, key=key, trust_pickle=trust_pickle)
    stage = checkpoint_stage(ckpt)
    if stage in ("tokenizer", "var", "ar"):
        vae = _vae_from_hparams(dict(ckpt["hyper_parameters"]), ckpt["state_dict"], map_location, key)
        if patch_nums is not None and tuple(patch_nums) != tuple(vae.patch_nums):
            raise ValueError(
                f"{key}={path} was trained with scale schedule {tuple(vae.patch_nums)}, but "
                f"schedule.patch_nums={tuple(patch_nums)}; use the same schedule for both stages "
                f"(e.g. schedule=<the tokenizer's>) or train a tokenizer for this schedule"
            )
        return vae
    if stage == "official-vae":
        from var_lightning.checkpoints.published import load_official_vae

        return load_official_vae(ckpt, patch_nums=patch_nums, map_location=map_location)
    if stage == "official-var":
        raise ValueError(
            f"{key}={path} is a transformer (VAR) file, but a tokenizer is expected here: pass the checkpoint "
            f"written by `var-train experiment=tokenizer_*` or {VAE_FILE}"
        )
    raise ValueError(
        f"{key}={path} is not a tokenizer checkpoint: it has neither var_lightning metadata nor the released "
        f"tokenizer's keys (found keys like {sorted(map(str, ckpt))[:5]})"
    )
