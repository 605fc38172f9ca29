"""The models a command or the app names, loaded once through the one loader, and the sampling settings
and sampler they run with: the checkpoint's own settings under the command line's, checked by key."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from var_lightning.checkpoints.load import LoadedModels, load_models
from var_lightning.transformer.config import SamplingArgs
from var_lightning.transformer.fast_sampling import build_sampler
from var_lightning.transformer.sampling import SAMPLING_KEYS, SampleOutput, check_sampling_args


def load_for_inference(
    cfg: Mapping[str, Any], device: torch.device, require_var: bool = True
) -> LoadedModels:
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


def sampling_for(
    cfg: Mapping[str, Any], models: LoadedModels, overrides: Mapping[str, Any] | None = None, prefix: str = ""
) -> tuple[SamplingArgs, Callable[..., SampleOutput]]:
    """What a command samples with: the checkpoint's sampling defaults (cfg, top_k, top_p, more_smooth) with
    the command line's values on top (``overrides``, default ``cfg``; null keeps the checkpoint's), checked
    (errors name the key as the user typed it, after ``prefix``), and ``cfg.sampler`` (fast by default, plain
    to opt out) built for the loaded models. The seed is the caller's (per batch)."""
    given = cfg if overrides is None else overrides
    s = dict(models.info.sampling)
    s.update({k: given[k] for k in SAMPLING_KEYS if given.get(k) is not None})
    check_sampling_args(models.var, float(s["cfg"]), int(s["top_k"]), float(s["top_p"]), prefix=prefix)
    args = SamplingArgs(float(s["cfg"]), int(s["top_k"]), float(s["top_p"]), bool(s["more_smooth"]))
    return args, build_sampler(models.var, models.vae, str(cfg.get("sampler") or "fast"))
