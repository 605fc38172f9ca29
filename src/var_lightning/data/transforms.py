"""Image transforms of the VAR paper's ImageNet recipe, and conversions between [-1, 1] and uint8.

Why resize-then-crop: VAR resizes the shorter side to ``mid_reso * image_size`` (1.125 by default) with
LANCZOS and then crops, so a training crop sees ~89% of the short side: a mild scale/translation
augmentation without the aspect distortion of RandomResizedCrop. Validation uses the centre crop.
Images leave as float (3, H, W) in [-1, 1], the range the tokenizer's decoder produces.
"""

from __future__ import annotations

import torch
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode


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
