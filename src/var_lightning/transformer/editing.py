"""Zero-shot editing: in-painting, out-painting and class-conditional editing with a trained VAR.

VAR edits without any training for it (the paper's zero-shot generalisation; the published
``demo_zero_shot_edit.ipynb``): the image is tokenised, and while sampling coarse to fine the image's own
tokens are teacher-forced wherever a keep mask says so, at every scale, before ``f_hat`` is updated; the
transformer generates the rest in the context of the kept tokens. Both guidance halves see the same mixed context (``sampling.sample``).

Conventions (the published ones, with one documented extension):

- **Keep mask**, at the last scale's token grid (pn_K x pn_K): 1 = keep the image's token, 0 = generate.
  The coarser scales' masks come from it by bilinear downsampling then ``> 0.5`` (``scale_masks``). A mask
  given at pixel resolution is first reduced to the token grid: a token is kept when more than half of
  its pixels are.
- **Region**: what the user marks, a box or a PNG mask (white). ``inpaint`` regenerates the region and
  keeps the rest; ``outpaint`` keeps the region and regenerates the rest; ``class-edit`` is
  class-conditional in-painting: the region is regenerated with the requested class. In/out-painting use
  the null class, for which guidance is a no-op (conditional = unconditional logits).
- **Box** ``(x0, y0, x1, y1)``: left, top, right, bottom. Fractions of the side when every value is <= 1,
  otherwise pixels of the model-resolution image (after resize and centre crop). Rows
  ``round(y0 * pn):round(y1 * pn)`` and columns ``round(x0 * pn):round(x1 * pn)`` of the pn_K grid are
  marked, with Python's ``round`` (half to even), exactly as the notebook does.
- **First scale**: the published rule always keeps scales of <= 3 tokens (the 1x1 start), so even an
  all-generate mask keeps the image's global token. ``keep_first_scale=True`` (default) is that rule;
  ``False`` lets the 1x1 scale follow the mask, and an all-generate mask then reproduces plain ``sample()``
  with the same seed and label exactly (tokens and pixels): the test that the editing path adds nothing.
- **Bad regions**: an empty region (nothing to edit for in-painting and class-edit, nothing kept for
  out-painting) raises; a region covering the whole grid is allowed and logged (in-painting it is plain
  sampling anchored at the first scale, out-painting it is the tokenizer's reconstruction).
- The output is decoded from ``f_hat`` with no pixel blending, so kept regions are VQ reconstructions of
  the input, not its pixels (as in the published code).

Shapes: B images, N variations per image, K scales, l tokens of one scale (pn * pn), C channels,
H,W image side, h,w token grid (h = w = pn_K).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from var_lightning.tokenizer.autoencoder import MultiScaleVQVAE
from var_lightning.transformer.config import SamplingArgs
from var_lightning.transformer.sampling import EditSpec, SampleOutput, check_compatible, sample, scale_masks
from var_lightning.transformer.var import VAR

log = logging.getLogger(__name__)

MODES: tuple[str, ...] = ("inpaint", "outpaint", "class-edit")


def parse_box(box: Sequence[float], image_size: int) -> tuple[float, float, float, float]:
    """``(x0, y0, x1, y1)`` in fractions or pixels -> fractions of the side, checked.

    All values <= 1 means fractions; otherwise they are pixels of the ``image_size`` x ``image_size``
    model-resolution image. (A one-pixel box at the corner must therefore be written as fractions.)
    """
    vals = [float(v) for v in box]
    if len(vals) != 4:
        raise ValueError(
            f"box={list(box)} must have 4 numbers [x0, y0, x1, y1] (left, top, right, bottom) (key box)"
        )
    pixels = any(v > 1 for v in vals)
    if pixels and any(v != int(v) for v in vals):  # 0.2 is no pixel: a fraction box with a value out of range
        out = [v for v in vals if v > 1 or v < 0]
        raise ValueError(
            f"box={vals}: {out[0]:g} is out of range for fractions of the side (0..1), and the box is not in pixels "
            f"either ({[v for v in vals if v != int(v)][0]:g} is not a whole pixel): give all four numbers as fractions "
            f"0..1 or all as pixels 0..{image_size} of the model-resolution image, [x0, y0, x1, y1] (key box)"
        )
    frac = [v / image_size for v in vals] if pixels else vals
    x0, y0, x1, y1 = frac
    unit = f"pixels of the {image_size}x{image_size} model-resolution image" if pixels else "fractions"
    if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
        hi = image_size if pixels else 1
        raise ValueError(
            f"box={vals} ({unit}) is not a box inside the image: need 0 <= x0 < x1 <= {hi} and "
            f"0 <= y0 < y1 <= {hi}, ordered [x0, y0, x1, y1] (left, top, right, bottom) (key box)"
        )
    return x0, y0, x1, y1


def box_region(box: Sequence[float], grid: int, image_size: int) -> torch.Tensor:
    """Region (grid, grid) in {0, 1}, 1 inside the box, rounded at the token grid as the notebook does."""
    x0, y0, x1, y1 = parse_box(box, image_size)
    region_hw = torch.zeros(grid, grid)
    region_hw[round(y0 * grid) : round(y1 * grid), round(x0 * grid) : round(x1 * grid)] = 1
    return region_hw


def to_token_grid(mask_HW: torch.Tensor, grid: int) -> torch.Tensor:
    """A {0, 1} mask of any size, (H, W) or (B, H, W), reduced to (.., grid, grid): a token is set when
    more than half of its pixels are (area average > 0.5). A mask already at the grid is returned as is."""
    if mask_HW.ndim not in (2, 3):
        raise ValueError(f"a mask must be (H, W) or (B, H, W), got shape {tuple(mask_HW.shape)}")
    m = mask_HW.float()
    if tuple(m.shape[-2:]) == (grid, grid):
        return m
    m_B1HW = m.reshape(-1, 1, *m.shape[-2:])
    down = (F.interpolate(m_B1HW, size=(grid, grid), mode="area") > 0.5).float()
    return down.reshape(*m.shape[:-2], grid, grid)


def keep_mask_for(region_hw: torch.Tensor, mode: str) -> torch.Tensor:
    """Keep mask (1 = keep) from a region at the token grid: its complement for in-painting and
    class-edit, the region itself for out-painting. An empty region raises."""
    check_mode(mode)
    region_hw = region_hw.float()
    if region_hw.sum() == 0:
        what = "nothing would be kept" if mode == "outpaint" else "there is nothing to edit"
        raise ValueError(
            f"the {mode} region is empty at the model's {region_hw.shape[-2]}x{region_hw.shape[-1]} token grid, "
            f"so {what}: mark a larger box or draw white pixels covering at least half a token (the image side / "
            f"{region_hw.shape[-1]} pixels) in the mask PNG (keys box / mask)"
        )
    if bool((region_hw == 1).all()):
        outcome = (
            "the tokenizer's reconstruction" if mode == "outpaint" else "plain sampling from the first scale"
        )
        log.warning("the %s region covers the whole image: the result is %s", mode, outcome)
    return region_hw if mode == "outpaint" else 1 - region_hw


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: choose one of {', '.join(MODES)} (key mode)")


def edit_label(mode: str, label: int | None, num_classes: int) -> int | None:
    """The class to sample with: None (the null class) for in/out-painting, the checked class for class-edit."""
    check_mode(mode)
    if mode != "class-edit":
        if label is not None:
            raise ValueError(
                f"class={label} is used only with mode=class-edit; {mode} samples with the null class "
                f"(set mode=class-edit or class=null) (key class)"
            )
        return None
    if label is None:
        raise ValueError("mode=class-edit needs the class to paint: set class=<id or name> (key class)")
    if not 0 <= int(label) < num_classes:
        raise ValueError(
            f"class={label} is out of range: this model has {num_classes} classes (0..{num_classes - 1}) (key class)"
        )
    return int(label)


@dataclass
class EditResult:
    """Rows are image-major: row ``b * N + i`` is variation ``i`` of image ``b``."""

    images: torch.Tensor  # (B*N, 3, H, W) in [0, 1]
    tokens: list[torch.Tensor]  # K tensors (B*N, l): the tokens that formed f_hat (the image's where kept)
    labels: torch.Tensor  # (B*N,): the class each row was sampled with (num_classes = null)
    keep_mask: torch.Tensor  # (B or 1, h, w) at the last scale, 1 = kept
    scale_masks: list[torch.Tensor]  # K tensors (B or 1, 1, pn, pn): the keep mask used at each scale
    image_tokens: list[torch.Tensor]  # K tensors (B, l): the input image's tokens
    reconstruction: torch.Tensor  # (B, 3, H, W) in [0, 1]: the tokenizer's reconstruction of the input

    def kept_fraction(self) -> float:
        """Fraction of last-scale tokens teacher-forced from the image."""
        return self.keep_mask.float().mean().item()


def _labels_per_image(
    var: VAR, label: int | Sequence[int | None] | torch.Tensor | None, B: int
) -> torch.Tensor:
    """(B,) class ids: one label for all images, or one per image; None = the null class."""
    null = var.num_classes
    if label is None:
        label_B = torch.full((B,), null, dtype=torch.long)
    elif isinstance(label, torch.Tensor) and label.ndim == 0 or isinstance(label, int):
        label_B = torch.full((B,), int(label), dtype=torch.long)
    else:
        values = label.tolist() if isinstance(label, torch.Tensor) else list(label)
        if len(values) != B:
            raise ValueError(
                f"got {len(values)} labels for {B} images; give one label, or one per image (key class)"
            )
        label_B = torch.tensor([null if v is None else int(v) for v in values], dtype=torch.long)
    var.check_labels(label_B, allow_null=True)
    return label_B.to(var.pos_1LC.device)


def _check_image(image_B3HW: torch.Tensor) -> torch.Tensor:
    if image_B3HW.ndim == 3:
        image_B3HW = image_B3HW.unsqueeze(0)
    lo, hi = image_B3HW.min().item(), image_B3HW.max().item()
    if lo < -1.01 or hi > 1.01:
        raise ValueError(
            f"the image has values in [{lo:.3g}, {hi:.3g}], but the tokenizer expects [-1, 1] "
            f"(map uint8 images with x / 127.5 - 1, or load them with var_lightning.inference.edit_images.load_image)"
        )
    return image_B3HW


@torch.no_grad()
def edit(
    var: VAR,
    vae: MultiScaleVQVAE,
    image_B3HW: torch.Tensor,
    keep_mask: torch.Tensor,
    label: int | Sequence[int] | torch.Tensor | None = None,
    args: SamplingArgs | None = None,
    *,
    num_variations: int = 1,
    keep_first_scale: bool = True,
    generator: torch.Generator | None = None,
    sampler: Callable[..., SampleOutput] | None = None,
    **settings: Any,
) -> EditResult:
    """Regenerate the positions where ``keep_mask`` is 0 and teacher-force the image's tokens elsewhere.

    image_B3HW: (B, 3, H, W) or (3, H, W) in [-1, 1] at the tokenizer's resolution. keep_mask: 1 = keep,
    (h, w) or (B, h, w) at the token grid, or at pixel resolution (reduced with ``to_token_grid``).
    label: None samples with the null class (in/out-painting); a class id makes it class-conditional
    (class-edit) for every image, a sequence or tensor of B ids gives each image its own class (None
    entries, or ``num_classes``, are the null class). args / settings: :class:`SamplingArgs` as in ``sample``
    (seed 0 by default here; the notebook used cfg=3, top_k=900, top_p=0.95, more_smooth=True). All
    ``B * num_variations`` rows are drawn in one batch from one generator seeded with ``seed``.
    keep_first_scale: see the module docstring. sampler: a function with the signature of
    :func:`~var_lightning.transformer.sampling.sample` minus ``var, vae`` (e.g. ``FastSampler(var,
    vae).sample``); default the plain sampler. Both give the same tokens for the same seed.
    """
    check_compatible(var, vae)
    if num_variations < 1:
        raise ValueError(f"num_variations={num_variations} must be >= 1 (key num_variations)")
    device = var.pos_1LC.device
    image_B3HW = _check_image(image_B3HW).to(device)
    B, N, grid = image_B3HW.shape[0], int(num_variations), var.patch_nums[-1]
    keep_hw = to_token_grid(keep_mask.to(device), grid)
    keep_Bhw = keep_hw.unsqueeze(0) if keep_hw.ndim == 2 else keep_hw
    if keep_Bhw.shape[0] not in (1, B):
        raise ValueError(f"got {keep_Bhw.shape[0]} keep masks for {B} images; give one mask or one per image")
    label_B = _labels_per_image(var, label, B)

    image_tokens = vae.img_to_idx(image_B3HW)
    keep_idx = [t.repeat_interleave(N, dim=0) for t in image_tokens]
    keep_rows = keep_Bhw.repeat_interleave(N, dim=0) if keep_Bhw.shape[0] > 1 else keep_Bhw
    spec = EditSpec(keep_idx=keep_idx, keep_mask_BHW=keep_rows, keep_first_scale=keep_first_scale)
    draw = sampler if sampler is not None else functools.partial(sample, var, vae)
    a = SamplingArgs.of(args if args is not None else SamplingArgs(seed=0), **settings)
    out = draw(B * N, labels=label_B.repeat_interleave(N), args=a, generator=generator, edit=spec)
    reconstruction = vae.idx_to_img(image_tokens).add(1).mul(0.5)
    return EditResult(
        images=out.images,
        tokens=out.tokens,
        labels=out.labels,
        keep_mask=keep_Bhw,
        scale_masks=scale_masks(keep_Bhw, var.patch_nums, keep_first_scale),
        image_tokens=image_tokens,
        reconstruction=reconstruction,
    )


@dataclass(frozen=True)
class EditRequest:
    """One edit, resolved once: the image (B, 3, S, S) in [-1, 1] at the tokenizer's resolution, the keep mask
    at the token grid (1 = keep), the mode and the class to sample with (None: the null class)."""

    image_B3HW: torch.Tensor
    keep_hw: torch.Tensor
    mode: str
    label: int | None

    @classmethod
    def of(
        cls,
        var: VAR,
        vae: MultiScaleVQVAE,
        image_B3HW: torch.Tensor,
        region: torch.Tensor | Sequence[float],
        mode: str = "inpaint",
        label: int | None = None,
    ) -> EditRequest:
        """``region``: a box ``(x0, y0, x1, y1)`` (fractions or pixels) or a {0, 1} mask (token grid or pixels,
        1 = marked); ``mode``: inpaint, outpaint or class-edit (which needs ``label``, checked here)."""
        resolved = edit_label(mode, label, var.num_classes)
        grid = var.patch_nums[-1]
        if isinstance(region, torch.Tensor):
            region_hw = to_token_grid(region.float(), grid)
        else:
            region_hw = box_region(region, grid, vae.cfg.image_size)
        return cls(image_B3HW, keep_mask_for(region_hw, mode), mode, resolved)


def edit_region(
    var: VAR,
    vae: MultiScaleVQVAE,
    request: EditRequest,
    args: SamplingArgs | None = None,
    **options: Any,
) -> EditResult:
    """The one edit path of the commands, the app and the Python API: in-paint, out-paint or class-edit a
    resolved :class:`EditRequest`. ``options``: :func:`edit`'s keywords (num_variations, keep_first_scale,
    generator, sampler) and sampling fields over ``args``."""
    return edit(var, vae, request.image_B3HW, request.keep_hw, request.label, args, **options)
