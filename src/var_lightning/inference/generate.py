"""Images per class, as every front end draws them (``var-sample``, ``var-app``, ``var-eval``'s grids), so the
same settings and seed give the same images everywhere (an edit's one path is
:func:`var_lightning.transformer.editing.edit_region`). Sampling is batched as ``var-sample`` documents: the
label list is ``classes`` each repeated ``num_per_class`` times, cut into batches of ``batch_size``, batch
``b`` drawn with the seed ``seed * 100003 + b``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from var_lightning.seeds import batch_seed
from var_lightning.transformer.config import SamplingArgs
from var_lightning.transformer.sampling import SampleOutput

Sampler = Callable[..., SampleOutput]


def check_counts(num_per_class: int, batch_size: int) -> None:
    """The one check of the image counts (``var-sample`` runs it before loading a model)."""
    if num_per_class < 1 or batch_size < 1:
        raise ValueError(
            f"num_per_class={num_per_class} and batch_size={batch_size} must be >= 1 (keys num_per_class, batch_size)"
        )


def sample_per_class(
    draw: Sampler,
    classes: Sequence[int],
    num_per_class: int,
    settings: SamplingArgs,
    seed: int,
    batch_size: int,
    device: torch.device,
    on_batch: Callable[[int, int], None] | None = None,
    scale_hook: Callable[[int, int, torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 3, H, W) in [0, 1] on the CPU, labels (N,)) for ``num_per_class`` images of each class.

    ``draw``: a sampler (``build_sampler``); ``settings``: the sampling arguments (batch ``b`` seeded as above). ``on_batch(b,
    n_batches)`` after each batch; ``scale_hook(b, si, f_hat)`` after each scale of batch ``b``."""
    check_counts(num_per_class, batch_size)
    labels = torch.tensor([int(c) for c in classes]).repeat_interleave(int(num_per_class))
    n_batches = (len(labels) + batch_size - 1) // batch_size
    images = []
    for b in range(n_batches):
        lab = labels[b * batch_size : (b + 1) * batch_size]
        hook = None if scale_hook is None else (lambda si, f, b=b: scale_hook(b, si, f))
        out = draw(len(lab), labels=lab.to(device), args=settings, seed=batch_seed(seed, b), scale_hook=hook)
        images.append(out.images.float().cpu())
        if on_batch is not None:
            on_batch(b, n_batches)
    return torch.cat(images), labels
