"""Helpers shared by the Hydra entry points (instantiating callbacks/loggers, startup checks)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import pytorch_lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from var_lightning.loading import SAMPLING_KEYS, LoadedModels, load_models
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


def check_image_size(model: L.LightningModule, datamodule: L.LightningDataModule) -> None:
    """Fail at startup, naming the expected size, when the data does not fit the scale schedule."""
    vae = getattr(model, "vae", None)
    want = vae.cfg.image_size if vae is not None else None
    got = getattr(datamodule, "image_size", None)
    if want is not None and got is not None and int(got) != int(want):
        raise ValueError(
            f"data.image_size={got} does not fit the scale schedule: patch_nums ends at {vae.patch_nums[-1]} and the "
            f"tokenizer downsamples {vae.cfg.downsample}x, so images must be {want}x{want} "
            f"(set data.image_size={want} or pick another schedule)"
        )
    n_cls = getattr(datamodule, "num_classes", None)
    var = getattr(model, "var", None)
    if var is not None and n_cls is not None and int(n_cls) > var.num_classes:
        raise ValueError(
            f"the dataset has {n_cls} classes but the transformer only {var.num_classes} "
            f"(set model.transformer.num_classes={n_cls})"
        )


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
