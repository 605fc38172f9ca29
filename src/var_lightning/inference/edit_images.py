"""Files for zero-shot editing: input images and mask PNGs in, result PNGs and a comparison panel out.

Why a separate module: ``transformer.editing`` is plain torch; this one owns PIL, file errors and the
geometry that brings an arbitrary photo to the model's square resolution.

- Images of any size and mode are converted to RGB, the shorter side is resized to the model's resolution
  (LANCZOS) and the centre is cropped: the validation transform of the training data, so an edit sees
  what the model was trained on. They leave as (1, 3, S, S) in [-1, 1].
- A mask PNG marks the **region** exactly as a box does: **white (grey level > 127) = the marked region**,
  black = the rest. For ``inpaint`` and ``class-edit`` white is what gets regenerated; for ``outpaint``
  white is what is kept and everything else is regenerated. The mask goes through the same resize and
  centre crop as the image, so a mask drawn on the original photo lines up; a mask whose size differs from
  the image's is resized all the same, with a logged warning.
- ``synthetic:<class>:<index>`` names a held-out (test split) image of the built-in synthetic shapes, so
  demos and tests need no image file.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, UnidentifiedImageError
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from var_lightning.data.synthetic import SyntheticShapes
from var_lightning.data.transforms import build_transform, to_rgb
from var_lightning.inference.grids import to_uint8_hwc

log = logging.getLogger(__name__)

SYNTHETIC_PREFIX = "synthetic:"


def open_image(path: str | Path, key: str = "image") -> Image.Image:
    """Open and fully decode an image file, with errors that name the file and the config key."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{key}={str(path)!r}: no such file (give a PNG/JPEG path, key {key})")
    try:
        with Image.open(p) as im:
            im.load()
            return im.copy()
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ValueError(
            f"{key}={str(path)!r} cannot be read as an image ({type(e).__name__}: {e}); give a PNG or JPEG file "
            f"(key {key})"
        ) from e


def fit_image(im: Image.Image, image_size: int) -> torch.Tensor:
    """PIL image of any size -> (1, 3, S, S) in [-1, 1]: shorter side resized to S, centre crop."""
    transform = build_transform(image_size, mid_reso=1.0, train=False)
    return transform(to_rgb(im)).unsqueeze(0)


def crop_note(image_wh: tuple[int, int], image_size: int) -> str | None:
    """What :func:`fit_image` cuts from a non-square input (None for a square one): the editor works on the
    centre square only, and the user should know before reading the results."""
    w, h = image_wh
    if w == h:
        return None
    short = min(w, h)
    kept = short / max(w, h)
    sides = "left and right" if w > h else "top and bottom"
    return (
        f"the {w}x{h} input is resized (shorter side to {image_size}) and centre-cropped to "
        f"{image_size}x{image_size}: {(1 - kept) / 2:.1%} of the image on each of the {sides} ({1 - kept:.0%} "
        f"in all) is not edited and not in the results (crop it yourself to choose the square)"
    )


def load_image(path: str | Path, image_size: int) -> torch.Tensor:
    """An image file -> (1, 3, S, S) in [-1, 1] at the model's resolution ``S``."""
    return fit_image(open_image(path), image_size)


def load_mask(path: str | Path, image_size: int, image_wh: tuple[int, int] | None = None) -> torch.Tensor:
    """A mask PNG -> (S, S) float in {0, 1}, 1 = white = the marked region.

    image_wh: the (width, height) of the input image the mask was drawn on; a mask of another size (or,
    without it, of a size other than S x S) is resized to fit with a warning. The mask undergoes the
    image's resize and centre crop, then is binarised at 0.5.
    """
    return fit_mask(open_image(path, key="mask"), image_size, image_wh, name=str(path))


def fit_mask(
    im: Image.Image, image_size: int, image_wh: tuple[int, int] | None = None, name: str = "the mask"
) -> torch.Tensor:
    """A mask image (white = marked) -> (S, S) float in {0, 1} with the image's geometry: resized to the
    image's size ``image_wh`` first if it differs (with a warning), then shorter side to S and centre crop."""
    want = tuple(image_wh) if image_wh is not None else (image_size, image_size)
    grey = im.convert("L")
    if grey.size != want:
        log.warning(
            "mask %s is %dx%d but the image is %dx%d: resizing the mask to the image", name, *grey.size, *want
        )
        grey = grey.resize(want, Image.BILINEAR)
    # the image's geometry (shorter side to S, centre crop), with a filter that suits a binary mask
    grey = T.CenterCrop(image_size)(T.Resize(image_size, interpolation=InterpolationMode.BILINEAR)(grey))
    arr = np.asarray(grey, dtype=np.float32) / 255.0
    return torch.from_numpy((arr > 0.5).astype(np.float32))


def is_synthetic(spec: str) -> bool:
    return str(spec).startswith(SYNTHETIC_PREFIX)


def synthetic_image(spec: str, image_size: int, num_classes: int, seed: int = 0) -> tuple[torch.Tensor, int]:
    """``synthetic:<class>:<index>`` -> ((1, 3, S, S) in [-1, 1], class): item ``index`` of the synthetic
    shapes' test split drawn as ``class`` (held out from training; ``seed`` is the data seed)."""
    parts = str(spec)[len(SYNTHETIC_PREFIX) :].split(":")
    try:
        label, index = (int(p) for p in parts)
    except ValueError:
        raise ValueError(
            f"image={spec!r}: a synthetic image is written synthetic:<class id>:<index>, e.g. synthetic:3:0 (key image)"
        ) from None
    if not 0 <= label < num_classes or index < 0:
        raise ValueError(
            f"image={spec!r}: class must be in 0..{num_classes - 1} (the model's classes) and index >= 0 (key image)"
        )
    data = SyntheticShapes(
        num_samples=index + 1, image_size=image_size, num_classes=num_classes, split="test", seed=seed
    )
    return data.render(label, index).unsqueeze(0), label


def mask_to_pixels(mask_hw: torch.Tensor, image_size: int) -> torch.Tensor:
    """A token-grid mask (h, w) -> (S, S) by nearest upsampling (each token covers a square of pixels)."""
    m = mask_hw.float().reshape(1, 1, *mask_hw.shape[-2:])
    return torch.nn.functional.interpolate(m, size=(image_size, image_size), mode="nearest")[0, 0]


def save_image(image_3HW: torch.Tensor, path: str | Path) -> Path:
    """One image in [0, 1] -> PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8_hwc(image_3HW.unsqueeze(0))[0]).save(path)
    return path


PANEL_TITLES = ("original", "tokenizer reconstruction", "mask: white=generated")


def edit_panel(
    original_3HW: torch.Tensor,
    reconstruction_3HW: torch.Tensor,
    generated_HW: torch.Tensor,
    results_N3HW: torch.Tensor,
    path: str | Path,
    titles: Sequence[str] | None = None,
    min_cell: int = 128,
) -> Path:
    """One row: original | tokenizer reconstruction | mask | results, with a title above each cell. Images
    in [0, 1]; ``generated_HW`` is 1 where the model generated (drawn white) and 0 where the image's tokens
    were kept (black). The reconstruction is what the kept region can look like at best (the results keep
    its tokens, not its pixels), so a kept region is compared with it, not with the original. Small images
    are upscaled (nearest) to at least ``min_cell`` pixels; each cell has a grey frame."""
    mask_3HW = generated_HW.float().unsqueeze(0).expand(3, -1, -1)
    cells = to_uint8_hwc(torch.cat([original_3HW[None].cpu(), reconstruction_3HW[None].float().cpu(),
                                    mask_3HW[None].cpu(), results_N3HW.cpu()]))  # fmt: skip
    n = len(cells)
    titles = list(titles) if titles else [*PANEL_TITLES] + [f"result {i}" for i in range(n - 3)]
    H, W = cells.shape[1:3]
    scale = max(1, -(-min_cell // max(H, W)))
    cell_h, cell_w, pad, head = H * scale, W * scale, 4, 16
    canvas = Image.new("RGB", (n * (cell_w + pad) + pad, head + cell_h + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (cell, title) in enumerate(zip(cells, titles, strict=True)):
        x = pad + i * (cell_w + pad)
        draw.text((x + 2, 2), title[: max(4, cell_w // 6)], fill="black")
        canvas.paste(Image.fromarray(cell).resize((cell_w, cell_h), Image.NEAREST), (x, head))
        # a grey frame: the mask's white (and any white image edge) stays distinct from the page
        draw.rectangle((x - 1, head - 1, x + cell_w, head + cell_h), outline=(128, 128, 128))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
