"""`var-sample`: a VAR checkpoint -> N PNG images per class and a labelled grid.

    var-sample ckpt_path=outputs/var_tiny/runs/<run>/checkpoints/last.ckpt num_per_class=8
    var-sample ckpt_path=var_d16.ckpt classes=[207,360,387] cfg=4.0 top_k=900 top_p=0.95 more_smooth=true

Batch ``b`` is drawn with its own generator seeded ``seed * 100003 + b`` (distinct seeds per batch, so
identical settings give identical files, and no two batches repeat the same noise).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from var_lightning.checkpoints import load_var_module
from var_lightning.cli.runtime import autocast_context, resolve_device
from var_lightning.evaluation.sharding import batch_seed
from var_lightning.sample_io import labelled_grid, save_pngs
from var_lightning.transformer.sampling import sample

log = logging.getLogger("var_lightning.sample")


def run(cfg: DictConfig, out_dir: Path) -> dict:
    device = resolve_device(cfg.device)
    module = load_var_module(cfg.ckpt_path, map_location=device)
    var, vae = module.var, module.vae
    classes = list(range(var.num_classes)) if cfg.classes is None else [int(c) for c in cfg.classes]
    var.check_labels(torch.tensor(classes), allow_null=False)
    if cfg.num_per_class < 1 or cfg.batch_size < 1:
        raise ValueError("num_per_class and batch_size must be >= 1")
    labels = torch.tensor(classes).repeat_interleave(int(cfg.num_per_class))
    images, names = [], []
    from rich.progress import Progress

    n_batches = (len(labels) + cfg.batch_size - 1) // cfg.batch_size
    with Progress() as progress, autocast_context(device, cfg.precision):
        task = progress.add_task("sampling", total=n_batches)
        for b in range(n_batches):
            lab = labels[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            out = sample(
                var,
                vae,
                len(lab),
                labels=lab.to(device),
                cfg=cfg.cfg,
                top_k=cfg.top_k,
                top_p=cfg.top_p,
                more_smooth=cfg.more_smooth,
                seed=batch_seed(cfg.seed, b),
            )
            images.append(out.images.float().cpu())
            progress.advance(task)
    images_N = torch.cat(images)
    per_class_index = {c: 0 for c in classes}
    for lab in labels.tolist():
        names.append(f"{lab:04d}_{per_class_index[lab]:04d}.png")
        per_class_index[lab] += 1
    sample_dir = out_dir / "samples"
    save_pngs(images_N, sample_dir, names)
    class_names = cfg.class_names or getattr(module, "class_names", None)
    grid_path = out_dir / "grid.png"
    labelled_grid(
        images_N, labels.tolist(), grid_path, per_row=int(cfg.num_per_class), class_names=class_names
    )
    meta = {
        "ckpt_path": str(cfg.ckpt_path),
        "num_images": len(labels),
        "classes": classes,
        "num_per_class": int(cfg.num_per_class),
        "cfg": cfg.cfg,
        "top_k": cfg.top_k,
        "top_p": cfg.top_p,
        "more_smooth": cfg.more_smooth,
        "seed": cfg.seed,
        "batch_size": cfg.batch_size,
        "device": str(device),
        "precision": cfg.precision,
        "samples": str(sample_dir),
        "grid": str(grid_path),
    }
    (out_dir / "samples.json").write_text(json.dumps(meta, indent=2))
    log.info("wrote %d images to %s and the grid %s", len(labels), sample_dir, grid_path)
    return meta


@hydra.main(version_base="1.3", config_path="../conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    log.info("config:\n%s", OmegaConf.to_yaml(cfg))
    run(cfg, out_dir)


if __name__ == "__main__":
    main()
