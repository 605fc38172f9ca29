"""Image transforms of the VAR paper's ImageNet recipe, and conversions between [-1, 1] and uint8.

Why resize-then-crop: VAR resizes the shorter side to ``mid_reso * image_size`` (1.125 by default) with
LANCZOS and then crops, so a training crop sees ~89% of the short side: a mild scale/translation
augmentation without the aspect distortion of RandomResizedCrop. Validation uses the centre crop.
Images leave as float (3, H, W) in [-1, 1], the range the tokenizer's decoder produces.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any image PIL opens -> 8-bit RGB with its brightness kept.

    PIL's ``convert("RGB")`` saturates high-bit-depth images: a 16-bit PNG (mode ``I;16`` or ``I``) is clipped
    to 255, so a mid-grey 16-bit photo turns white. Here integer modes are scaled from their 16-bit range
    (``/ 257``, the exact 0..65535 -> 0..255 map), float images (``F``) from [0, 1] (or [0, 255] when their
    values exceed 1), transparent images (``RGBA``, ``LA``, ``PA``, ``P`` with transparency) are composited
    over white instead of dropping the alpha channel (transparent pixels keep whatever colour they stored,
    often black), and ``LAB`` / ``HSV`` go through their own conversions. Everything else uses PIL's.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _SIXTEEN_BIT:
        a = np.asarray(img, dtype=np.float64)
        return Image.fromarray(np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        a = np.nan_to_num(np.asarray(img, dtype=np.float64))
        scale = 255.0 if a.size and a.max() <= 1.0 else 1.0
        return Image.fromarray(np.clip(np.rint(a * scale), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P" and "transparency" in img.info or mode == "PA":
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode == "LAB":
        from PIL import ImageCms

        lab_to_rgb = ImageCms.buildTransformFromOpenProfiles(
            ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"
        )
        return ImageCms.applyTransform(img, lab_to_rgb)
    if mode == "HSV":
        h, s_, v = (np.asarray(c, dtype=np.float64) / 255.0 for c in img.split())
        i = np.floor(h * 6).astype(int) % 6
        f = h * 6 - np.floor(h * 6)
        p, q, t = v * (1 - s_), v * (1 - f * s_), v * (1 - (1 - f) * s_)
        r = np.choose(i, [v, q, p, p, t, v])
        g = np.choose(i, [t, v, v, q, p, p])
        b = np.choose(i, [p, p, t, v, v, q])
        rgb = np.stack([r, g, b], -1)
        return Image.fromarray(np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8), "RGB")
    return img.convert("RGB")


def to_signed_unit(x: torch.Tensor) -> torch.Tensor:
    """Map [0, 1] to [-1, 1]. A module-level function (not a lambda) so transforms pickle to workers."""
    return x.mul(2).sub_(1)


def to_uint8_image(x_B3HW: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float images to uint8 (B, 3, H, W) in [0, 255], rounding and clamping out-of-range values."""
    return ((x_B3HW.detach().float().clamp(-1, 1) + 1) * 127.5).round_().to(torch.uint8)


def build_transform(
    image_size: int, mid_reso: float = 1.125, train: bool = True, hflip: bool = False
) -> T.Compose:
    """PIL image -> float (3, image_size, image_size) in [-1, 1].

    Shorter side resized to ``round(mid_reso * image_size)`` (LANCZOS), then a random (train) or centre
    (eval) crop; ``hflip`` adds a random horizontal flip in training only (VAR trains without it by default).
    """
    if image_size < 1:
        raise ValueError(f"data.image_size must be positive, got {image_size}")
    if mid_reso < 1.0:
        raise ValueError(f"data.mid_reso must be >= 1 (resize then crop), got {mid_reso}")
    mid_size = round(mid_reso * image_size)
    steps: list = [T.Resize(mid_size, interpolation=InterpolationMode.LANCZOS)]
    if train:
        steps.append(T.RandomCrop(image_size))
        if hflip:
            steps.append(T.RandomHorizontalFlip())
    else:
        steps.append(T.CenterCrop(image_size))
    steps += [T.ToTensor(), T.Lambda(to_signed_unit)]
    return T.Compose(steps)
