"""`var-classifier`: train the dataset classifier used as a domain feature extractor, save it, and print
its held-out accuracy.

    var-classifier                                   # the synthetic shapes of the demo (~30 s on 2 cores)
    var-classifier data=imagenet data.root=/data/imagenet model.input_size=64 epochs=30

Its penultimate-layer features give a domain FID (``extractor=classifier extractor.path=<file>`` in
var-eval and in the generation_metrics callback) and its predictions the class accuracy of generated
samples: on data where ImageNet Inception features mean little, these numbers still do.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from var_lightning.cli.command_line import checked_main
from var_lightning.evaluation.classifier import (
    ClassifierConfig,
    evaluate_classifier,
    save_classifier,
    train_classifier,
)
from var_lightning.evaluation.splits import dataset_split
from var_lightning.inference.devices import resolve_device

log = logging.getLogger("var_lightning.classifier")


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train on the data's train split (monitoring val), save to ``cfg.out``; return the summary."""
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ValueError(f"epochs ({cfg.epochs}) and batch_size ({cfg.batch_size}) must be >= 1")
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    dm = instantiate(cfg.data)
    if getattr(dm, "image_size", 0) is None:  # data.image_size: null -> the classifier's image_size
        dm.fit_image_size(int(cfg.image_size), "image_size (the images the classifier will score)")
    train_set = dataset_split(dm, "train")
    val_set = dataset_split(dm, "val")
    heldout_set = dataset_split(dm, cfg.heldout_split, "heldout_split")
    num_classes = int(dm.num_classes)
    spec = {k: v for k, v in OmegaConf.to_container(cfg.model).items() if v is not None}
    spec.setdefault("input_size", int(getattr(dm, "image_size", 32)))
    model_cfg = ClassifierConfig(num_classes=num_classes, **spec)
    log.info(
        "training a %d-class classifier on %d images (%s), %d epochs",
        num_classes,
        len(train_set),
        type(dm).__name__,
        cfg.epochs,
    )
    model, val_acc = train_classifier(
        train_set,
        val_set,
        num_classes,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        seed=cfg.seed,
        device=device,
        config=model_cfg,
        weight_decay=cfg.weight_decay,
        hflip=cfg.hflip,
        num_workers=cfg.num_workers,
    )
    heldout_acc = evaluate_classifier(model, heldout_set, batch_size=max(cfg.batch_size, 256), device=device)
    note = None
    if cfg.heldout_split == "test" and getattr(dm, "has_test_dir", True) is False:  # test falls back to val
        heldout_acc, note = (
            None,
            (
                "the data has no test/ split, so there is no held-out accuracy (its test loader reads val, on which "
                "the classifier was monitored): add <data.root>/test/<class>/ images for one"
            ),
        )
        log.warning(note)
    summary = {
        "path": str(Path(cfg.out).resolve()),
        "val_acc": val_acc,
        f"{cfg.heldout_split}_acc": heldout_acc,
        "heldout_note": note,
        "num_classes": num_classes,
        "class_names": list(getattr(dm, "class_names", []) or []),
        "data": OmegaConf.to_container(cfg.data, resolve=True),
        "image_size": int(getattr(dm, "image_size", model_cfg.input_size)),
        "epochs": cfg.epochs,
        "seed": cfg.seed,
    }
    save_classifier(cfg.out, model.cpu(), meta=summary)
    return summary


@checked_main("classifier", "var-classifier")
def main(cfg: DictConfig) -> None:
    log.info("run directory: %s", HydraConfig.get().runtime.output_dir)
    summary = run(cfg)
    split = cfg.heldout_split
    held = summary[f"{split}_acc"]
    held_text = (
        f"held-out ({split}) accuracy {held:.4f}"
        if held is not None
        else f"no held-out accuracy ({summary['heldout_note']})"
    )
    print(
        f"classifier: {held_text}, val accuracy {summary['val_acc']:.4f}, {summary['num_classes']} classes\n"
        f"saved to {summary['path']}\nuse it with: extractor=classifier extractor.path={summary['path']}"
    )


if __name__ == "__main__":
    main()
