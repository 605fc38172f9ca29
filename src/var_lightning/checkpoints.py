"""Reading checkpoints of either stage (and the released weights) with clear errors.

A var_lightning checkpoint is a Lightning checkpoint with ``checkpoint["var_lightning"]["stage"]`` set to
``"tokenizer"`` or ``"var"``; ``hyper_parameters`` hold the model configs, ``state_dict`` the weights
(``vae.*`` for the tokenizer, ``var.*`` for the transformer).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from var_lightning.tokenizer.autoencoder import MultiScaleVQVAE
from var_lightning.tokenizer.config import VQVAEConfig

log = logging.getLogger(__name__)


def read_checkpoint(path: str | Path, key: str = "model.tokenizer_ckpt") -> dict[str, Any]:
    """torch.load on CPU with errors that name the file and the config key."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p} (config key {key})")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception:  # Lightning checkpoints may hold pickled non-tensor state
        try:
            obj = torch.load(p, map_location="cpu", weights_only=False)
        except Exception as e:
            raise RuntimeError(
                f"cannot read checkpoint {p} (config key {key}): {type(e).__name__}: {e}"
            ) from e
    if not isinstance(obj, dict):
        raise ValueError(f"{p} holds a {type(obj).__name__}, not a checkpoint dict (config key {key})")
    return obj


def checkpoint_stage(ckpt: dict[str, Any]) -> str:
    """'tokenizer' or 'var' for var_lightning checkpoints, 'official-vae' / 'official-var' for released
    state_dicts (or the published trainer's checkpoints), 'unknown' otherwise."""
    meta = ckpt.get("var_lightning")
    if isinstance(meta, dict) and "stage" in meta:
        return str(meta["stage"])
    if "state_dict" in ckpt and isinstance(ckpt.get("hyper_parameters"), dict):
        hp = ckpt["hyper_parameters"]
        return "var" if "transformer" in hp else ("tokenizer" if "tokenizer" in hp else "unknown")
    if "trainer" in ckpt:
        return "official-var"
    keys = set(ckpt)
    if "quantize.embedding.weight" in keys:
        return "official-vae"
    if "class_emb.weight" in keys and "head.weight" in keys:
        return "official-var"
    return "unknown"


def sub_state_dict(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def load_tokenizer(path: str | Path, patch_nums: Sequence[int] | None = None) -> MultiScaleVQVAE:
    """A frozen-ready tokenizer from a tokenizer-stage checkpoint or the released VQ-VAE weights.

    ``patch_nums`` is the schedule the caller will use: a var_lightning tokenizer must have been trained
    with it; the released tokenizer has no stored schedule and takes it (256px schedule by default).
    """
    ckpt = read_checkpoint(path)
    stage = checkpoint_stage(ckpt)
    if stage == "tokenizer":
        cfg = VQVAEConfig(**dict(ckpt["hyper_parameters"]["tokenizer"]))
        if patch_nums is not None and tuple(patch_nums) != cfg.patch_nums:
            raise ValueError(
                f"tokenizer checkpoint {path} was trained with scale schedule {cfg.patch_nums}, but "
                f"schedule.patch_nums={tuple(patch_nums)}; use the same schedule for both stages "
                f"(e.g. schedule=<the tokenizer's>) or train a tokenizer for this schedule"
            )
        vae = MultiScaleVQVAE(cfg)
        vae.load_state_dict(sub_state_dict(ckpt["state_dict"], "vae."))
        return vae
    if stage == "official-vae":
        from var_lightning.interop.official import load_official_vae

        return load_official_vae(ckpt, patch_nums=patch_nums)
    if stage in ("var", "official-var"):
        raise ValueError(
            f"{path} is a transformer (VAR-stage) checkpoint, but a tokenizer checkpoint is expected here "
            f"(model.tokenizer_ckpt): pass the checkpoint written by `var-train experiment=tokenizer_*` or "
            f"vae_ch160v4096z32.pth"
        )
    raise ValueError(
        f"{path} is not a tokenizer checkpoint: it has neither var_lightning metadata nor the released "
        f"tokenizer's keys (found keys like {sorted(ckpt)[:5]}) (config key model.tokenizer_ckpt)"
    )


def load_var_module(path: str | Path, map_location: str | torch.device = "cpu", key: str = "ckpt_path"):
    """A :class:`VARModule` restored from a VAR-stage checkpoint (EMA weights when the run used EMA)."""
    from var_lightning.training.var_module import VARModule

    ckpt = read_checkpoint(path, key=key)
    stage = checkpoint_stage(ckpt)
    if stage != "var":
        hint = " (convert released weights with `var-convert`)" if stage.startswith("official") else ""
        raise ValueError(
            f"{path} is a {stage!r} checkpoint, but a VAR-stage checkpoint is expected ({key}){hint}"
        )
    module = VARModule(**dict(ckpt["hyper_parameters"]))
    module.load_state_dict(ckpt["state_dict"])
    module.class_names = ckpt.get("var_lightning", {}).get("class_names")
    return module.to(map_location).eval()
