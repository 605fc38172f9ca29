"""The two inference jobs every front end runs the same way: images per class, and an edit of one image.

``var-sample`` and ``var-edit`` (the commands) and ``var-app`` (the web app) call these, so the same
settings and seed give the same images everywhere. Sampling is batched as ``var-sample`` documents: the
label list is ``classes`` each repeated ``num_per_class`` times, cut into batches of ``batch_size``, batch
``b`` drawn with the seed ``seed * 100003 + b``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from var_lightning.seeds import batch_seed
from var_lightning.transformer.editing import EditResult, edit, edit_label, keep_mask_for, to_token_grid
from var_lightning.transformer.sampling import SampleOutput

Sampler = Callable[..., SampleOutput]


def sample_per_class(
    draw: Sampler,
    classes: Sequence[int],
    num_per_class: int,
    settings: dict[str, Any],
    seed: int,
    batch_size: int,
    device: torch.device,
    on_batch: Callable[[int, int], None] | None = None,
    scale_hook: Callable[[int, int, torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 3, H, W) in [0, 1] on the CPU, labels (N,)) for ``num_per_class`` images of each class.

    ``draw``: a sampler (``build_sampler``); ``settings``: cfg, top_k, top_p, more_smooth. ``on_batch(b,
    n_batches)`` after each batch; ``scale_hook(b, si, f_hat)`` after each scale of batch ``b``."""
    if num_per_class < 1 or batch_size < 1:
        raise ValueError(
            f"num_per_class={num_per_class} and batch_size={batch_size} must be >= 1 (keys num_per_class, batch_size)"
        )
    labels = torch.tensor([int(c) for c in classes]).repeat_interleave(int(num_per_class))
    n_batches = (len(labels) + batch_size - 1) // batch_size
    images = []
    for b in range(n_batches):
        lab = labels[b * batch_size : (b + 1) * batch_size]
        hook = None if scale_hook is None else (lambda si, f, b=b: scale_hook(b, si, f))
        out = draw(len(lab), labels=lab.to(device), seed=batch_seed(seed, b), scale_hook=hook, **settings)
        images.append(out.images.float().cpu())
        if on_batch is not None:
            on_batch(b, n_batches)
    return torch.cat(images), labels


@dataclass
class EditRequest:
    """What an edit needs besides the models: the image at the model's resolution (1, 3, S, S) in [-1, 1]
    and the marked region at the token grid (h, w) or pixels (S, S), 1 = marked."""

    image_13HW: torch.Tensor
    region: torch.Tensor
    mode: str = "inpaint"
    label: int | None = None


def run_edit(
    var: Any,
    vae: Any,
    request: EditRequest,
    settings: dict[str, Any],
    seed: int,
    num_variations: int,
    sampler: Sampler | None = None,
    keep_first_scale: bool = True,
) -> EditResult:
    """In-paint, out-paint or class-edit ``request`` (the conventions of :mod:`var_lightning.transformer.editing`)."""
    label = edit_label(request.mode, request.label, var.num_classes)
    region_hw = to_token_grid(request.region.float(), var.patch_nums[-1])
    keep_hw = keep_mask_for(region_hw, request.mode)
    return edit(
        var,
        vae,
        request.image_13HW,
        keep_hw,
        label=label,
        seed=seed,
        num_variations=num_variations,
        keep_first_scale=keep_first_scale,
        sampler=sampler,
        **settings,
    )
