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

from var_lightning.evaluation.sharding import batch_seed
from var_lightning.transformer.editing import EditResult, edit, edit_label, keep_mask_for, to_token_grid
from var_lightning.transformer.sampling import SampleOutput

Sampler = Callable[..., SampleOutput]


def _norm_name(name: Any) -> str:
    return " ".join(str(name).lower().replace("_", " ").replace("-", " ").split())


def parse_class(
    value: Any,
    class_names: Sequence[str] | None,
    num_classes: int,
    key: str | None = "class",
    what: str = "class",
) -> int:
    """The one class parser of every command and the app: an id (an int or digits), the app's picker text
    (``"207: golden retriever"``) or one of the model's class names (case, ``_``, ``-`` and spaces ignored).

    Errors name the value and, for commands, the key (``key``); the app passes ``key=None`` and a ``what``
    ("class to paint") instead."""
    said = f"{key}={value}" if key else f"{what} {str(value).strip()!r}"
    tail = f" (key {key})" if key else ""
    if value is None or isinstance(value, bool) or str(value).strip() == "":
        raise ValueError(f"{key}: no class given{tail}" if key else f"pick a {what}")
    text = str(value).strip()
    head = text.split(":", 1)[0].strip()
    if isinstance(value, int) or head.lstrip("-").isdigit():
        c = int(head)
    else:
        names = [_norm_name(n) for n in (class_names or [])]
        if not names:
            raise ValueError(
                f"{said}: this model stores no class names; give a class id 0..{num_classes - 1}{tail}"
            )
        if _norm_name(text) not in names:
            shown = ", ".join(repr(n) for n in list(class_names or [])[:20]) + (
                ", ..." if len(class_names or []) > 20 else ""
            )
            raise ValueError(
                f"{said} is neither a class id nor one of this model's class names ({shown}); give a name or an id"
                f"{tail}"
            )
        c = names.index(_norm_name(text))
    if not 0 <= c < num_classes:
        said = f"{key}={c}" if key else f"{what} {c}"
        raise ValueError(
            f"{said} is out of range: this model has {num_classes} classes (0..{num_classes - 1}){tail}"
        )
    return c


def check_classes(
    classes: Sequence[Any], num_classes: int, key: str = "classes", class_names: Sequence[str] | None = None
) -> list[int]:
    """A list of classes (ids or names, see :func:`parse_class`), each in range."""
    if isinstance(classes, (str, int)):
        classes = [classes]
    out = []
    for c in classes:
        try:
            out.append(parse_class(c, class_names, num_classes, key=None, what="class"))
        except ValueError as e:
            if "out of range" not in str(e):
                raise ValueError(f"{key}={list(classes)}: {e} (key {key})") from None
            out.append(int(str(c).split(":", 1)[0]))
    if not out:
        raise ValueError(f"{key}: no class given; pick at least one (key {key})")
    bad = [c for c in out if not 0 <= c < num_classes]
    if bad:
        raise ValueError(
            f"{key}={out}: {bad[0]} is out of range; this model has {num_classes} classes (0..{num_classes - 1}) "
            f"(key {key})"
        )
    return out


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
