"""`var-sample`: a VAR model -> N PNG images per class and a labelled grid.

    var-sample pretrained=var_d16 classes=[207,360] num_per_class=4           # the released weights
    var-sample ckpt_path=outputs/var_tiny/runs/<run>/checkpoints/last.ckpt      # a var-train checkpoint
    var-sample ckpt_path=var_d16.pth vae_path=vae_ch160v4096z32.pth cfg=4.0 top_k=900 top_p=0.95 more_smooth=true

Any model file works (``var_lightning.checkpoints.load``). cfg / top_k / top_p / more_smooth default to the
checkpoint's own sampling settings (the published protocol for the released weights). The fast sampler
(static KV cache, CUDA graphs on GPU) is the default; ``sampler=plain`` gives the same tokens.

Batch ``b`` is drawn with its own generator seeded ``seed * 100003 + b`` (distinct seeds per batch, so
identical settings give identical files, and no two batches repeat the same noise).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from var_lightning.cli.command_line import checked_main
from var_lightning.inference.classes import check_classes
from var_lightning.inference.devices import autocast_context, resolve_device
from var_lightning.inference.generate import check_counts, sample_per_class
from var_lightning.inference.grids import labelled_grid, save_pngs
from var_lightning.inference.models import load_for_inference, sampling_for
from var_lightning.seeds import SEED_RULE

log = logging.getLogger("var_lightning.sample")


def run(cfg: DictConfig, out_dir: Path) -> dict:
    device = resolve_device(cfg.device)
    check_counts(int(cfg.num_per_class), int(cfg.batch_size))  # before the model loads
    models = load_for_inference(cfg, device)
    var, info = models.var, models.info
    settings, draw = sampling_for(cfg, models)
    classes = (
        list(range(var.num_classes))
        if cfg.classes is None
        else check_classes(cfg.classes, var.num_classes, class_names=info.class_names)
    )
    from rich.progress import Progress

    log.info(
        "sampling %d images (%d classes) with %s sampler, cfg=%g top_k=%d top_p=%g more_smooth=%s",
        len(classes) * cfg.num_per_class, len(classes), cfg.sampler, settings.cfg, settings.top_k,
        settings.top_p, settings.more_smooth,
    )  # fmt: skip
    with Progress() as progress, autocast_context(device, cfg.precision):
        task = progress.add_task("sampling", total=None)
        images_N, labels = sample_per_class(
            draw, classes, int(cfg.num_per_class), settings, int(cfg.seed), int(cfg.batch_size), device,
            on_batch=lambda b, n: progress.update(task, completed=b + 1, total=n),
        )  # fmt: skip
    names = []
    per_class_index = {c: 0 for c in classes}
    for lab in labels.tolist():
        names.append(f"{lab:04d}_{per_class_index[lab]:04d}.png")
        per_class_index[lab] += 1
    sample_dir = out_dir / "samples"
    save_pngs(images_N, sample_dir, names)
    class_names = list(cfg.class_names) if cfg.class_names else info.class_names
    grid_path = out_dir / "grid.png"
    labelled_grid(
        images_N, labels.tolist(), grid_path, per_row=int(cfg.num_per_class), class_names=class_names
    )
    meta = {
        "model": info.as_dict(),
        "num_images": len(labels),
        "classes": classes,
        "class_names": [class_names[c] if class_names and c < len(class_names) else None for c in classes],
        "num_per_class": int(cfg.num_per_class),
        **settings.settings(),
        "sampler": cfg.sampler,
        "seed": cfg.seed,
        "seed_rule": SEED_RULE,
        "batch_size": cfg.batch_size,
        "device": str(device),
        "precision": cfg.precision,
        "samples": str(sample_dir),
        "grid": str(grid_path),
    }
    (out_dir / "samples.json").write_text(json.dumps(meta, indent=2))
    log.info("wrote %d images to %s and the grid %s", len(labels), sample_dir, grid_path)
    return meta


@checked_main("sample", "var-sample")
def main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    log.info("config:\n%s", OmegaConf.to_yaml(cfg))
    run(cfg, out_dir)


if __name__ == "__main__":
    main()
