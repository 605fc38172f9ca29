"""Sizing that fits the machine and the model: DataLoader workers and the image size.

``num_workers: null`` picks the worker count from the CPUs this process may use, shared among the processes
of the node (one per GPU under DDP): ``min(8, cpus // local_processes - 1)``, so a 2-core laptop gets one
worker and an 8-GPU node with 96 cores gets 8 per GPU. ``image_size: null`` is filled in from the model at
startup (its schedule's last scale x the tokenizer's downsampling), so ``data=imagenet`` fits any experiment.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)
MAX_AUTO_WORKERS = 8


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def local_processes() -> int:
    """Processes that will share this node's CPUs: torchrun's LOCAL_WORLD_SIZE, else one per visible GPU."""
    if os.environ.get("LOCAL_WORLD_SIZE"):
        return max(1, int(os.environ["LOCAL_WORLD_SIZE"]))
    try:
        import torch

        return max(1, torch.cuda.device_count())
    except Exception:  # noqa: BLE001 - no CUDA build, no driver: one process
        return 1


def auto_num_workers(key: str = "data.num_workers") -> int:
    """DataLoader workers for this process when the config says null (see the module docstring)."""
    cpus, procs = usable_cpus(), local_processes()
    n = max(0, min(MAX_AUTO_WORKERS, cpus // procs - 1))
    log.info(
        "%s=null: %d DataLoader workers (%d usable CPUs, %d process(es) on this node)", key, n, cpus, procs
    )
    return n


def resolve_num_workers(value: int | None, key: str = "data.num_workers") -> int:
    if value is None:
        return auto_num_workers(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(
            f"{key}={value!r} must be an integer >= 0, or null for a count that fits the machine"
        )
    return value


def check_image_size(value: int | None, key: str = "data.image_size", minimum: int = 1) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(
            f"{key}={value!r} must be an integer >= {minimum}, or null for the model's image size"
        )
    return value


def schedule_hint(image_size: int, downsample: int, patch_nums: list[int] | tuple[int, ...]) -> str:
    """How to train on ``image_size`` px images instead: the scale schedule (and tokenizer downsampling) that
    fits them, derived from the current schedule's shape (each scale at the same fraction of the last)."""
    f = int(downsample)
    if image_size % f:
        below, above = image_size - image_size % f, image_size - image_size % f + f
        return (f"; to use images of another size, pick one the tokenizer's {f}x downsampling divides "
                f"(e.g. data.image_size={below or above} or {above}) and end the schedule at size/{f}")  # fmt: skip
    n = image_size // f
    last = max(int(patch_nums[-1]), 1)
    scaled = sorted({1, n, *(max(1, min(n, round(int(p) * n / last))) for p in patch_nums)})
    return (
        f"; to train on {image_size}x{image_size} images instead, end the schedule at {image_size}/{f}={n}: "
        f"schedule.patch_nums=[{','.join(map(str, scaled))}] (the tokenizer stage trains with it; the VAR stage "
        f"needs a tokenizer trained with it, model.tokenizer_ckpt). README: 'Your own folder, at another resolution'"
    )


class ImageSizeMixin:
    """``image_size`` that may stay None until the model fills it in (``fit_image_size``)."""

    _image_size: int | None

    @property
    def image_size(self) -> int | None:
        return self._image_size

    @image_size.setter
    def image_size(self, value: int | None) -> None:
        self._image_size = value

    def fit_image_size(self, size: int, why: str, hint: str = "") -> None:
        """Take ``size`` when none was configured; a configured size that differs is an error (``hint``: how to
        make the model fit the configured size instead)."""
        if self.image_size is None:
            log.info("data.image_size=null: using %d (%s)", size, why)
            self.image_size = int(size)
        elif int(self.image_size) != int(size):
            raise ValueError(f"data.image_size={self.image_size} does not fit the model: {why}, so images must be "
                             f"{size}x{size} (set data.image_size={size}, or null to take it from the model){hint}")  # fmt: skip

    def require_image_size(self) -> int:
        if self.image_size is None:
            raise ValueError(
                "data.image_size is null and no model filled it in: set data.image_size (var-train and var-eval set it "
                "from the model)"
            )
        return int(self.image_size)
