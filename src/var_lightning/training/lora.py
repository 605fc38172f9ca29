"""LoRA fine-tuning of the VAR transformer with peft (``model.train.lora.rank > 0``, with ``init_from=``).

peft's :func:`~peft.inject_adapter_in_model` wraps the configured linear layers of ``module.var`` in place
(``blocks.*.attn.mat_qkv`` becomes a LoRA layer around the original ``base_layer``), so the module, its
sampler and its loss are unchanged. Only the adapters and ``train_also`` (``class_emb``) train; the base is
frozen. A checkpoint keeps the adapters, ``train_also``, the small buffers and the tokenizer, drops the
frozen base weights, and records the base (``init_from``) and the adapter settings under
``var_lightning.lora``; :func:`var_lightning.checkpoints.lora.merge_lora_checkpoint` rebuilds the merged
model from the base for ``var-sample`` / ``var-eval`` / ``var-edit`` / ``var-convert`` (merge on export). Resuming reapplies
``init_from`` before the adapters load, so the frozen base is the same bits.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from var_lightning.training.optim import decayed_names

log = logging.getLogger(__name__)


def lora_config(settings: Any) -> Any:
    try:
        from peft import LoraConfig
    except ImportError as e:
        raise ValueError(
            "model.train.lora.rank > 0 needs peft: pip install 'var_lightning[lora]' (in a clone: pip install -e "
            "'.[lora]', or make install-trackers); or set model.train.lora.rank=0 for full fine-tuning"
        ) from e
    return LoraConfig(r=int(settings.rank), lora_alpha=float(settings.alpha), lora_dropout=float(settings.dropout),
                      target_modules=list(settings.targets), bias="none")  # fmt: skip


def inject(var: nn.Module, settings: Any) -> nn.Module:
    """Wrap ``settings.targets`` of ``var`` with LoRA adapters in place and freeze everything else but
    ``settings.train_also``. Returns ``var``."""
    from peft import inject_adapter_in_model

    names = {n.rsplit(".", 1)[-1] for n, m in var.named_modules() if isinstance(m, nn.Linear)}
    unknown = [t for t in settings.targets if t not in names]
    if unknown:
        raise ValueError(
            f"model.train.lora.targets: {unknown} name no linear layer of the transformer; its linear layers are "
            f"{sorted(names)}"
        )
    inject_adapter_in_model(lora_config(settings), var)
    params = dict(var.named_parameters())
    missing = [t for t in settings.train_also if not any(n == t or n.startswith(f"{t}.") for n in params)]
    if missing:
        raise ValueError(
            f"model.train.lora.train_also: {missing} name no parameter of the transformer (e.g. class_emb, head)"
        )
    for name, p in params.items():
        p.requires_grad_(
            "lora_" in name or any(name == t or name.startswith(f"{t}.") for t in settings.train_also)
        )
    return var


def trainable_count(var: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(var.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def apply_to_module(module: Any, settings: Any, init_from: str | None, sharded: bool) -> bool:
    """``configure_model``'s LoRA step for a VARModule (after ``init_from`` loaded the base weights); True."""
    if not init_from:
        raise ValueError(
            "model.train.lora.rank > 0 adapts a trained model: give the base with init_from=<checkpoint, model "
            "repository or var_d16>, or set model.train.lora.rank=0 to train from scratch"
        )
    if sharded:
        raise ValueError(
            "model.train.lora with trainer=fsdp*: LoRA runs under DDP (trainer=ddp) or on one device"
        )
    if getattr(module, "var_ema", None) is not None:
        raise ValueError("model.train.lora with callbacks=ema is not supported: drop ema from callbacks")

    inject(module.var, settings)
    module.decayed = decayed_names(
        module.var.named_parameters()
    )  # the adapters' names, decided as for the base
    module.strict_loading = False  # a LoRA checkpoint holds no frozen base weights: init_from provides them
    trainable, total = trainable_count(module.var)
    log.info("LoRA rank %d on %s (+ %s in full): %d of %d transformer parameters train (%.2f%%); base: %s",
             settings.rank, ",".join(settings.targets), ",".join(settings.train_also) or "nothing", trainable,
             total, 100 * trainable / max(total, 1), init_from)  # fmt: skip
    return True


def strip_frozen_base(module: Any, checkpoint: dict[str, Any], settings: Any, init_from: str | None) -> None:
    """Drop the frozen base weights of ``module.var`` from a checkpoint being saved and record the base."""
    sd = checkpoint.get("state_dict")
    if not isinstance(sd, dict):
        return
    frozen = {f"var.{n}" for n, p in module.var.named_parameters() if not p.requires_grad}
    for key in frozen & set(sd):
        del sd[key]
    base = Path(str(init_from)).expanduser()
    checkpoint.setdefault("var_lightning", {})["lora"] = {
        "base": str(base.resolve()) if base.exists() else str(init_from),  # a path works from any directory
        "rank": int(settings.rank), "alpha": float(settings.alpha), "dropout": float(settings.dropout),
        "targets": list(settings.targets), "train_also": list(settings.train_also),
    }  # fmt: skip
