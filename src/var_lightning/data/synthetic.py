"""SyntheticShapes: a procedural, class-conditional image dataset that needs no download.

Why it exists: the build and CI machines have no internet and no image data set, yet a tiny VAR must be
trainable end to end in minutes, and its samples must be judged by eye and by a small classifier. So the
classes are made to be recognisable at 32x32: class ``c`` is a shape family (circle, square, triangle,
stripes, ring, ...) drawn in a hue of its own (hues spaced evenly around the colour wheel), on a dark,
mildly varying background. Each sample varies in position, size, stripe phase, colour jitter and noise.

Determinism: the label of item ``i`` is a function of (seed, split, i) and the pixels come from a
generator seeded by (seed, split, i), so the same index always gives identical pixels, in any worker and
any process, and train/val/test differ.

Shapes: H,W image; coordinates ``u_HW``/``v_HW`` run over [-1, 1] (x right, y down).
"""

from __future__ import annotations

import colorsys
import zlib

import torch
from torch.utils.data import Dataset

SHAPE_FAMILIES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "horizontal stripes",
    "vertical stripes",
    "ring",
    "cross",
    "checkerboard",
    "diagonal stripes",
    "two dots",
    "diamond",
    "x",
    "frame",
    "half disc",
)

# Colour names at 30 degree steps; a class takes the nearest one for its readable name.
_HUE_NAMES: tuple[str, ...] = (
    "red",
    "orange",
    "yellow",
    "chartreuse",
    "green",
    "spring green",
    "cyan",
    "azure",
    "blue",
    "violet",
    "magenta",
    "rose",
)

_MASK64 = (1 << 64) - 1


def _mix64(*values: int) -> int:
    """SplitMix64-style hash of integers: a stable seed that does not depend on Python's hash salt."""
    h = 0x9E3779B97F4A7C15
    for value in values:
        h = (h ^ (value & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h & ((1 << 63) - 1)


def class_hue(label: int, num_classes: int) -> float:
    """Hue in [0, 1) of a class: evenly spaced, so neighbours differ by 1/num_classes of the wheel."""
    return (label / max(num_classes, 1)) % 1.0


def class_shape(label: int) -> str:
    """Shape family of a class; past the number of families the hue alone separates classes of a family."""
    return SHAPE_FAMILIES[label % len(SHAPE_FAMILIES)]


def synthetic_class_names(num_classes: int) -> list[str]:
    """Readable names such as ``"red circle"``, made unique with a ``#c`` suffix where two would clash."""
    names = []
    for c in range(num_classes):
        hue = class_hue(c, num_classes)
        names.append(f"{_HUE_NAMES[round(hue * 12) % 12]} {class_shape(c)}")
    if len(set(names)) < len(names):
        names = [f"{name} #{c}" for c, name in enumerate(names)]
    return names


def _fill(d_HW: torch.Tensor, px: float) -> torch.Tensor:
    """Anti-aliased coverage from a signed distance (positive inside): one pixel of soft edge."""
    return (d_HW / px + 0.5).clamp_(0.0, 1.0)


def _wave(t_HW: torch.Tensor, period: float, phase: float) -> torch.Tensor:
    """Signed distance to the edges of half-duty stripes along ``t`` (positive on a stripe), in [-p/4, p/4].

    A triangle wave built from ``remainder``: transcendental ops (sin, sqrt, exp) on tiny tensors fan out to the
    intra-op thread pool in torch and cost ~10 ms each when the CPUs are oversubscribed (DataLoader workers,
    parallel tests); remainder/abs/hypot do not.
    """
    return period * (0.25 - (torch.remainder(t_HW / period + phase + 0.25, 1.0) - 0.5).abs())


def _stripes(t_HW: torch.Tensor, period: float, phase: float, px: float) -> torch.Tensor:
    return _fill(_wave(t_HW, period, phase), px)


def _shape_mask(
    family: str, dx_HW: torch.Tensor, dy_HW: torch.Tensor, r: float, px: float, phase: float
) -> torch.Tensor:
    """Coverage in [0, 1] of one shape of half-size ``r`` centred at dx = dy = 0."""
    box_d_HW = r - torch.maximum(dx_HW.abs(), dy_HW.abs())  # inside the square region of half-size r
    # Pattern scales are floored in pixels so stripes and checks survive at 8x8.
    period = max(0.6 * r, 4 * px)
    thick = max(0.3 * r, 1.5 * px)
    if family == "circle":
        return _fill(r - torch.hypot(dx_HW, dy_HW), px)
    if family == "square":
        return _fill(box_d_HW - 0.1 * r, px)
    if family == "triangle":  # equilateral, apex up (y points down); edges at distance R/2 from the centre
        big_r = 1.2 * r
        d_HW = big_r / 2 - dy_HW
        for nx, ny in ((-0.8660254, -0.5), (0.8660254, -0.5)):
            d_HW = torch.minimum(d_HW, big_r / 2 - (nx * dx_HW + ny * dy_HW))
        return _fill(d_HW + 0.25 * big_r, px)
    if family == "horizontal stripes":
        return _fill(box_d_HW, px) * _stripes(dy_HW, period, phase, px)
    if family == "vertical stripes":
        return _fill(box_d_HW, px) * _stripes(dx_HW, period, phase, px)
    if family == "diagonal stripes":
        return _fill(box_d_HW, px) * _stripes((dx_HW + dy_HW) * 0.70710678, period, phase, px)
    if family == "ring":
        rho_HW = torch.hypot(dx_HW, dy_HW)
        return _fill(thick / 2 - (rho_HW - 0.75 * r).abs(), px)
    if family == "cross":
        bar_h_HW = torch.minimum(thick / 2 - dy_HW.abs(), r - dx_HW.abs())
        bar_v_HW = torch.minimum(thick / 2 - dx_HW.abs(), r - dy_HW.abs())
        return _fill(torch.maximum(bar_h_HW, bar_v_HW), px)
    if family == "x":
        a_HW, b_HW = (dx_HW + dy_HW) * 0.70710678, (dx_HW - dy_HW) * 0.70710678
        bar_a_HW = torch.minimum(thick / 2 - a_HW.abs(), 1.2 * r - b_HW.abs())
        bar_b_HW = torch.minimum(thick / 2 - b_HW.abs(), 1.2 * r - a_HW.abs())
        return _fill(torch.maximum(bar_a_HW, bar_b_HW), px)
    if family == "checkerboard":
        cell = max(0.5 * r, 2 * px)
        wx_HW, wy_HW = _wave(dx_HW, 2 * cell, phase), _wave(dy_HW, 2 * cell, phase)
        d_HW = torch.minimum(wx_HW.abs(), wy_HW.abs()) * torch.sign(wx_HW * wy_HW)
        return _fill(box_d_HW, px) * _fill(d_HW, px)
    if family == "two dots":
        dot_r = 0.42 * r
        rho_l_HW = torch.hypot(dx_HW + 0.55 * r, dy_HW)
        rho_r_HW = torch.hypot(dx_HW - 0.55 * r, dy_HW)
        return _fill(dot_r - torch.minimum(rho_l_HW, rho_r_HW), px)
    if family == "diamond":
        return _fill(1.15 * r - (dx_HW.abs() + dy_HW.abs()), px)
    if family == "frame":
        return _fill(torch.minimum(box_d_HW, thick - box_d_HW), px)
    if family == "half disc":  # the lower half of a disc: flat edge on top
        rho_HW = torch.hypot(dx_HW, dy_HW + 0.4 * r)
        return _fill(torch.minimum(1.1 * r - rho_HW, dy_HW + 0.4 * r), px)
    raise ValueError(f"unknown shape family {family!r}")


class SyntheticShapes(Dataset):
    """Coloured shapes on a dark background, one (shape, hue) pair per class.

    Items are ``(img_3HW, label)``: float32 in [-1, 1] and an int in ``[0, num_classes)``. Labels are a
    seeded permutation of ``arange(num_samples) % num_classes``, so classes are balanced (counts differ by
    at most one) yet not in index order. Images are generated on the fly (about 0.2 ms at 32x32), so the
    dataset holds no pixels and any ``num_samples`` costs only its label table.
    """

    def __init__(
        self,
        num_samples: int,
        image_size: int = 32,
        num_classes: int = 10,
        split: str = "train",
        seed: int = 0,
    ) -> None:
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8 for shapes to stay recognisable, got {image_size}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_samples, self.image_size, self.num_classes = num_samples, image_size, num_classes
        self.split, self.seed = split, seed
        self.class_names: list[str] = synthetic_class_names(num_classes)
        self._split_key = zlib.crc32(split.encode())
        g = torch.Generator().manual_seed(_mix64(seed, self._split_key, 0x1ABE1))
        self.labels_N = torch.randperm(num_samples, generator=g) % num_classes
        # Pixel centres on [-1, 1]; shared by every item so generation is a handful of vectorised ops.
        t_S = (torch.arange(image_size, dtype=torch.float32) + 0.5) / image_size * 2 - 1
        self._v_HW, self._u_HW = torch.meshgrid(t_S, t_S, indexing="ij")
        self._px = 2.0 / image_size

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        index %= self.num_samples
        label = int(self.labels_N[index])
        return self.render(label, index), label

    def render(self, label: int, index: int) -> torch.Tensor:
        """Image (3, H, W) in [-1, 1] of class ``label`` with the variation drawn for item ``index``."""
        g = torch.Generator().manual_seed(_mix64(self.seed, self._split_key, index))
        (
            r_rand,
            cx_rand,
            cy_rand,
            phase,
            hue_jit,
            sat_rand,
            val_rand,
            bg_hue,
            bg_val,
            grad_x,
            grad_y,
        ) = torch.rand(11, generator=g).tolist()
        u_HW, v_HW, px = self._u_HW, self._v_HW, self._px

        r = 0.42 + 0.22 * r_rand  # half-size on the [-1, 1] canvas
        slack = max(0.9 - r, 0.0)
        dx_HW = u_HW - (2 * cx_rand - 1) * slack
        dy_HW = v_HW - (2 * cy_rand - 1) * slack
        mask_HW = _shape_mask(class_shape(label), dx_HW, dy_HW, r, px, phase)

        hue = class_hue(label, self.num_classes) + 0.03 * (hue_jit - 0.5)
        fg_3 = torch.tensor(colorsys.hsv_to_rgb(hue % 1.0, 0.75 + 0.25 * sat_rand, 0.85 + 0.15 * val_rand))
        bg_3 = torch.tensor(colorsys.hsv_to_rgb(bg_hue, 0.35, 0.08 + 0.14 * bg_val))
        grad_HW = 0.06 * ((2 * grad_x - 1) * u_HW + (2 * grad_y - 1) * v_HW)
        bg_3HW = bg_3[:, None, None] + grad_HW
        img_3HW = torch.lerp(bg_3HW, fg_3[:, None, None].expand_as(bg_3HW), mask_HW)
        img_3HW = img_3HW + 0.03 * torch.randn(img_3HW.shape, generator=g)
        return img_3HW.clamp_(0.0, 1.0).mul_(2).sub_(1)
