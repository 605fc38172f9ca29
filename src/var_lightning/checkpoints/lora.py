"""Merging a LoRA checkpoint (``model.train.lora``, :mod:`var_lightning.training.lora`): the base weights
come from the recorded base (``init_from``: a checkpoint, a model repository or a released name, loaded by
:func:`~var_lightning.checkpoints.load.load_models`, which calls this with them), every
adapter is merged into its layer (``W + alpha / r * B A``, peft's LoRA update written out, so sampling needs
no peft), and the result is an ordinary full checkpoint: ``load_models`` and ``init_from`` read it like any
other, and ``var-convert to-hub`` exports the merged model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from var_lightning.checkpoints.safe_io import CheckpointError

_ADAPTER = re.compile(r"^(?P<layer>.+)\.lora_(?P<ab>[AB])\.[^.]+\.weight$")


def is_lora_checkpoint(ckpt: Mapping[str, Any]) -> bool:
    return isinstance((ckpt.get("var_lightning") or {}).get("lora"), Mapping)


def merge_lora_checkpoint(
    ckpt: Mapping[str, Any], base_state: Mapping[str, torch.Tensor], key: str = "ckpt_path"
) -> dict:
    """A LoRA checkpoint as a full one: the base's transformer weights (``base_state``, loaded by the caller
    from :func:`lora_base`), this run's trained tensors over them (``train_also``, buffers), every adapter
    merged; the tokenizer as stored."""
    meta = dict(ckpt["var_lightning"]["lora"])
    scale = float(meta["alpha"]) / int(meta["rank"])
    sd = ckpt["state_dict"]
    full = {f"var.{k}": v for k, v in base_state.items()}
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        m = _ADAPTER.match(k)
        if m:
            pairs.setdefault(m.group("layer").replace(".base_layer", ""), {})[m.group("ab")] = v
        elif k.startswith("var.") and ".lora_" not in k:
            full[k.replace(".base_layer.", ".")] = v
        elif not k.startswith("var."):
            full[k] = v  # the tokenizer (vae.*)
    for layer, ab in pairs.items():
        weight = full.get(f"{layer}.weight")
        if weight is None or set(ab) != {"A", "B"}:
            raise CheckpointError(f"{key}: the adapter of {layer} has no matching base layer or lacks A / B")
        delta = ab["B"].float() @ ab["A"].float()
        if delta.shape != weight.shape:
            raise CheckpointError(
                f"{key}: the adapter of {layer} is {tuple(delta.shape)} but the base layer is {tuple(weight.shape)}: "
                f"the base {meta['base']} is not the model these adapters were trained on"
            )
        full[f"{layer}.weight"] = (weight.float() + scale * delta).to(weight.dtype)
    record = {k: v for k, v in ckpt["var_lightning"].items() if k != "lora"}
    record["merged_lora"] = meta
    return {**ckpt, "state_dict": full, "var_lightning": record}


def lora_base(ckpt: Mapping[str, Any]) -> str | None:
    """The recorded base of a LoRA checkpoint (None for others)."""
    return str(ckpt["var_lightning"]["lora"]["base"]) if is_lora_checkpoint(ckpt) else None
