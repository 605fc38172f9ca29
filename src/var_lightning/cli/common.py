"""Helpers shared by the Hydra entry points (instantiating callbacks/loggers, startup checks)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import pytorch_lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from var_lightning.checkpoints.loading import SAMPLING_KEYS, LoadedModels, load_models
from var_lightning.transformer.fast_sampling import build_sampler
from var_lightning.transformer.sampling import SampleOutput, check_sampling_args

log = logging.getLogger(__name__)


def instantiate_callbacks(cfg: DictConfig | None) -> list[L.Callback]:
    """Every entry with a ``_target_`` becomes a callback; null entries are skipped (disable one with
    ``~callbacks.<name>`` or ``callbacks.<name>=null``)."""
    if not cfg:
        return []
    return [instantiate(c) for c in cfg.values() if c is not None and "_target_" in c]


def instantiate_loggers(cfg: DictConfig | None) -> list:
    if not cfg:
        return []
    return [instantiate(c) for c in cfg.values() if c is not None and "_target_" in c]


def fit_data_to_model(model: Any, datamodule: Any, check_classes: bool = True) -> None:
    """Fill in ``data.image_size: null`` from the model (its schedule's last scale x the tokenizer's
    downsampling) and check a configured one; with ``check_classes`` a class count that differs from the
    transformer's is an error naming both numbers (``check_class_count``)."""
    vae = getattr(model, "vae", None)
    if vae is not None and getattr(datamodule, "image_size", "absent") != "absent":
        from var_lightning.data.defaults import schedule_hint

        why = (f"its scale schedule ends at {vae.patch_nums[-1]} (schedule.patch_nums=[{','.join(map(str, vae.patch_nums))}]) and "
               f"the tokenizer downsamples {vae.cfg.downsample}x")  # fmt: skip
        asked = datamodule.image_size
        hint = schedule_hint(int(asked), vae.cfg.downsample, vae.patch_nums) if asked is not None else ""
        fit = getattr(datamodule, "fit_image_size", None)
        if fit is not None:
            fit(vae.cfg.image_size, why, hint)
        elif asked is not None and int(asked) != vae.cfg.image_size:
            raise ValueError(
                f"data.image_size={asked} does not fit the model: {why}, so images must be "
                f"{vae.cfg.image_size}x{vae.cfg.image_size} (set data.image_size={vae.cfg.image_size}){hint}"
            )
    var = getattr(model, "var", None)
    if var is not None and check_classes:
        check_class_count(var.num_classes, datamodule, "the transformer (model.transformer.num_classes)")


def data_description(datamodule: Any) -> str:
    for attr in ("root", "train_spec"):
        if getattr(datamodule, attr, None):
            return f"{type(datamodule).__name__} at {getattr(datamodule, attr)}"
    return type(datamodule).__name__


def check_class_count(model_classes: int, datamodule: Any, what: str) -> None:
    n = getattr(datamodule, "num_classes", None)
    if n is not None and int(n) != int(model_classes):
        raise ValueError(
            f"the data has {n} classes ({data_description(datamodule)}) but {what} has {model_classes}: train with "
            f"model.transformer.num_classes=null (the data's count; init_from= adapts a checkpoint's class rows), "
            f"or point data at a dataset with {model_classes} classes"
        )


def transformer_with_data_classes(cfg_model: DictConfig, datamodule: Any) -> dict[str, Any] | None:
    """The VAR config's ``transformer`` block with ``num_classes: null`` replaced by the data's count
    (None when the model is not a VAR)."""
    if not str(cfg_model.get("_target_", "")).endswith(("VARModule", "ARModule")):
        return None
    transformer = dict(OmegaConf.to_container(cfg_model.get("transformer") or {}, resolve=True))
    n = int(datamodule.num_classes)
    given = transformer.get("num_classes")
    if given is None:
        log.info(
            "model.transformer.num_classes=null: %d classes from the data (%s)",
            n,
            data_description(datamodule),
        )
        transformer["num_classes"] = n
    elif int(given) != n:
        check_class_count(int(given), datamodule, f"model.transformer.num_classes={given}")
    return transformer


# ---------------------------------------------------------------------------------------------- inference
def load_for_inference(cfg: DictConfig, device: torch.device, require_var: bool = True) -> LoadedModels:
    """The models named by a command's ``ckpt_path`` / ``pretrained`` (+ ``vae_path``,
    ``pretrained_revision``, ``trust_pickle``): every command loads through the one loader."""
    ckpt, name = cfg.get("ckpt_path"), cfg.get("pretrained")
    if ckpt is None and name is None:
        raise ValueError(
            "no model given: set ckpt_path=<a var-train checkpoint, var-convert output or released var_d*.pth> "
            "or pretrained=<var_d16 | var_d20 | var_d24 | var_d30 | var_d36 | a directory of released files>"
        )
    return load_models(
        ckpt,
        pretrained=name,
        vae_path=cfg.get("vae_path"),
        revision=cfg.get("pretrained_revision"),
        map_location=device,
        trust_pickle=bool(cfg.get("trust_pickle", False)),
        require_var=require_var,
    )


def require_var_stage(models: LoadedModels, what: str, key: str = "ckpt_path") -> None:
    """Refuse an AR-baseline checkpoint where a VAR feature (editing, the app's scale view) is needed."""
    if models.info.stage == "ar":
        raise ValueError(
            f"{key}={models.info.source} is an AR-baseline checkpoint (raster order); {what} needs a VAR model: "
            f"give a VAR checkpoint (var-train experiment=var_*) or pretrained=var_d16 (var-sample and var-eval "
            f"take AR checkpoints)"
        )


def sampling_settings(overrides: Mapping[str, Any], models: LoadedModels, prefix: str = "") -> dict[str, Any]:
    """The checkpoint's sampling defaults (cfg, top_k, top_p, more_smooth) with the command line's values
    on top (null keeps the checkpoint's), checked; errors name the key as the user typed it."""
    s = dict(models.info.sampling)
    s.update({k: overrides[k] for k in SAMPLING_KEYS if overrides.get(k) is not None})
    check_sampling_args(models.var, float(s["cfg"]), int(s["top_k"]), float(s["top_p"]), prefix=prefix)
    return {
        "cfg": float(s["cfg"]),
        "top_k": int(s["top_k"]),
        "top_p": float(s["top_p"]),
        "more_smooth": bool(s["more_smooth"]),
    }


def inference_sampler(cfg: DictConfig, models: LoadedModels) -> Callable[..., SampleOutput]:
    """``cfg.sampler`` (fast by default, plain to opt out) for the loaded models."""
    return build_sampler(models.var, models.vae, str(cfg.get("sampler") or "fast"))
