"""The data <-> model wiring every run needs: the image size the model's schedule implies (``data.image_size:
null``), the class count the data has (``model.transformer.num_classes: null``), and the errors when the two
disagree. Called by ``var-train``, ``var-eval`` and the studies before anything is built or sampled."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from var_lightning.data.sizing import schedule_hint

log = logging.getLogger(__name__)


def fit_data_to_model(model: Any, datamodule: Any, check_classes: bool = True) -> None:
    """Fill in ``data.image_size: null`` from the model (its schedule's last scale x the tokenizer's
    downsampling) and check a configured one; with ``check_classes`` a class count that differs from the
    transformer's is an error naming both numbers (``check_class_count``)."""
    vae = getattr(model, "vae", None)
    if vae is not None and getattr(datamodule, "image_size", "absent") != "absent":
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


def transformer_with_data_classes(model: Mapping[str, Any], datamodule: Any) -> dict[str, Any] | None:
    """The model config's ``transformer`` block (plain containers, resolved) with ``num_classes: null``
    replaced by the data's count (None when the model is not a VAR or the AR baseline)."""
    if not str(model.get("_target_", "")).endswith(("VARModule", "ARModule")):
        return None
    transformer = dict(model.get("transformer") or {})
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
