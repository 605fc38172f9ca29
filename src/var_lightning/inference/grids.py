"""Writing generated images: numbered PNG files and labelled grids (one row per class)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw


def to_uint8_hwc(images_B3HW: torch.Tensor) -> np.ndarray:
    """[0, 1] float images -> (B, H, W, 3) uint8, rounding like torchvision's save_image."""
    x = images_B3HW.detach().float().clamp(0, 1).mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def save_pngs(images_B3HW: torch.Tensor, out_dir: str | Path, names: Sequence[str]) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arr = to_uint8_hwc(images_B3HW)
    paths = []
    for a, name in zip(arr, names, strict=True):
        p = out / name
        Image.fromarray(a).save(p)
        paths.append(p)
    return paths


def labelled_grid(
    images_B3HW: torch.Tensor,
    labels: Sequence[int],
    path: str | Path,
    per_row: int,
    class_names: Sequence[str] | None = None,
    scale: int | None = None,
) -> Path:
    """A grid with one row per class (images grouped by label, in order) and the class written on the left.
    Small images are upscaled (nearest) so the grid is readable."""
    arr = to_uint8_hwc(images_B3HW)
    H, W = arr.shape[1:3]
    scale = scale or max(1, 64 // max(H, W))
    rows: dict[int, list[np.ndarray]] = {}
    for a, lab in zip(arr, labels, strict=True):
        rows.setdefault(int(lab), []).append(a)
    names = {
        lab: (class_names[lab] if class_names and lab < len(class_names) else f"class {lab}") for lab in rows
    }
    label_w, pad = 10 + 6 * max(len(n) for n in names.values()), 2
    cell_h, cell_w = H * scale, W * scale
    canvas = Image.new("RGB", (label_w + per_row * (cell_w + pad), len(rows) * (cell_h + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (lab, imgs) in enumerate(rows.items()):
        y = r * (cell_h + pad)
        draw.text((4, y + cell_h // 2 - 5), names[lab], fill="black")
        for c, a in enumerate(imgs[:per_row]):
            im = Image.fromarray(a).resize((cell_w, cell_h), Image.NEAREST)
            canvas.paste(im, (label_w + c * (cell_w + pad), y))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
