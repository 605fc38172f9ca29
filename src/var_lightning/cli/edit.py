"""`var-edit`: zero-shot in-painting, out-painting and class-conditional editing of one image.

    var-edit ckpt_path=<run>/checkpoints/last.ckpt image=photo.jpg box=[0.25,0.25,0.75,0.75] mode=inpaint
    var-edit ckpt_path=<run>/checkpoints/last.ckpt image=photo.jpg box=[0.1,0.1,0.8,0.8] mode=outpaint
    var-edit ckpt_path=<run>/checkpoints/last.ckpt image=synthetic:0:3 mask=region.png mode=class-edit class=5
    var-edit pretrained=var_d36 image=photo.jpg box=[0.1,0.1,0.8,0.8] mode=class-edit class=207 cfg=3

Any model file works (``var_lightning.checkpoints.load``); cfg / top_k / top_p default to the checkpoint's own
sampling settings, ``more_smooth`` to true (the published editing notebook). The fast sampler is the
default (``sampler=plain`` gives the same tokens).

The region is a box (``[x0, y0, x1, y1]``, fractions if all <= 1, else pixels of the model-resolution
image) or a mask PNG (white = the region); ``inpaint`` and ``class-edit`` regenerate it, ``outpaint`` keeps
it and regenerates the rest (conventions: ``var_lightning.transformer.editing``). Writes below the run
directory ``result_<i>.png``, ``original.png`` (the input at the model's resolution), ``reconstruction.png``
(the tokenizer's), ``panel.png`` (original | mask | results) and ``edit.json`` (settings and paths).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from var_lightning.cli.command_line import checked_main
from var_lightning.inference.classes import parse_class
from var_lightning.inference.devices import autocast_context, resolve_device
from var_lightning.inference.edit_images import (
    crop_note,
    edit_panel,
    fit_image,
    is_synthetic,
    load_mask,
    mask_to_pixels,
    open_image,
    save_image,
    synthetic_image,
)
from var_lightning.inference.models import load_for_inference, require_var_stage, sampling_for
from var_lightning.transformer.editing import EditRequest, edit_region

log = logging.getLogger("var_lightning.edit")


def check_region_options(cfg: DictConfig) -> None:
    if (cfg.mask is None) == (cfg.box is None):
        raise ValueError(
            "give the region to edit as exactly one of mask=<png, white = region> or box=[x0,y0,x1,y1] "
            f"(got mask={cfg.mask}, box={cfg.box})"
        )


def run(cfg: DictConfig, out_dir: Path) -> dict:
    check_region_options(cfg)
    # Read the input files before the (possibly large) checkpoint, so a bad path fails at once.
    pil_image = None if is_synthetic(cfg.image) else open_image(cfg.image)
    if cfg.mask is not None:
        open_image(cfg.mask, key="mask")
    device = resolve_device(cfg.device)
    models = load_for_inference(cfg, device)
    require_var_stage(models, "zero-shot editing")
    var, vae, class_names = models.var, models.vae, models.info.class_names
    settings, draw = sampling_for(cfg, models)
    size, grid = vae.cfg.image_size, var.patch_nums[-1]
    klass = cfg.get("class")  # an id or one of the checkpoint's class names
    label = None if klass is None else parse_class(klass, class_names, var.num_classes, key="class")

    if pil_image is None:
        # the data's class count sets the hues: the stored class names know it, else the model's
        image_13HW, _ = synthetic_image(cfg.image, size, len(class_names) if class_names else var.num_classes)
    else:
        image_13HW = fit_image(pil_image, size)
        crop = crop_note(pil_image.size, size)
        if crop:
            log.warning("image=%s: %s", cfg.image, crop)
    if cfg.mask is not None:
        region = load_mask(cfg.mask, size, image_wh=pil_image.size if pil_image else None)
    else:
        region = list(cfg.box)  # a box: fractions or pixels, resolved by EditRequest.of

    request = EditRequest.of(var, vae, image_13HW, region, cfg.mode, label)  # checks the class for the mode
    label = request.label
    with autocast_context(device, cfg.precision):
        result = edit_region(
            var,
            vae,
            request,
            settings,
            seed=cfg.seed,
            num_variations=cfg.num_variations,
            sampler=draw,
            keep_first_scale=cfg.keep_first_scale,
        )
    images = result.images.float().cpu()
    original = image_13HW[0].add(1).mul(0.5)
    result_paths = [save_image(img, out_dir / f"result_{i}.png") for i, img in enumerate(images)]
    save_image(original, out_dir / "original.png")
    recon = result.reconstruction[0].float().cpu()
    save_image(recon, out_dir / "reconstruction.png")
    generated_HW = 1 - mask_to_pixels(result.keep_mask[0].cpu(), size)
    panel = edit_panel(original, recon, generated_HW, images, out_dir / "panel.png")

    keep_px = 1 - generated_HW
    kept_l1 = ((images - recon).abs().mean(1) * keep_px).sum((1, 2)) / keep_px.sum().clamp(min=1)
    name = class_names[label] if label is not None and class_names and label < len(class_names) else None
    meta = {
        "model": models.info.as_dict(),
        "image": str(cfg.image),
        "mask": cfg.mask,
        "box": list(cfg.box) if cfg.box is not None else None,
        "mode": cfg.mode,
        "class": label,
        "class_name": name,
        **settings.settings(),
        "sampler": cfg.sampler,
        "seed": cfg.seed,
        "num_variations": cfg.num_variations,
        "keep_first_scale": cfg.keep_first_scale,
        "device": str(device),
        "precision": cfg.precision,
        "image_size": size,
        "input_crop": None if pil_image is None else crop_note(pil_image.size, size),
        "token_grid": grid,
        "kept_token_fraction": result.kept_fraction(),
        "kept_region_l1_to_reconstruction": [round(v, 5) for v in kept_l1.tolist()],
        "results": [str(p) for p in result_paths],
        "panel": str(panel),
    }
    (out_dir / "edit.json").write_text(json.dumps(meta, indent=2))
    log.info(
        "wrote %d %s results, the panel %s and edit.json to %s", len(result_paths), cfg.mode, panel, out_dir
    )
    return meta


@checked_main("edit", "var-edit")
def main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    log.info("config:\n%s", OmegaConf.to_yaml(cfg))
    run(cfg, out_dir)


if __name__ == "__main__":
    main()
