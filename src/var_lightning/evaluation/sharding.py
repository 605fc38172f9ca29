"""Which sample each rank draws, with which seed, and how per-rank results are put back together.

The evaluation sample set is fixed before any rank starts: N labels, class-balanced and shuffled with
the run's seed (so each contiguous split of the set, as the ADM evaluator's Inception Score uses, sees
all classes), cut into global batches of ``batch_size``. Batch ``b`` is drawn with the seed
``batch_seed(seed, b)`` and belongs to rank ``b % world_size``. Every sample therefore has the same
label and the same noise whether one GPU or eight draw it: numbers reproduce across world sizes, and
no two batches (or ranks) ever share a seed (reusing one seed per batch is a known way to get a wrong
FID with the published code).

The collectives are guarded: in one process (no process group) they return their input.

Shapes: N samples, B batch, D any trailing dims.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from var_lightning.distributed import is_distributed


def class_balanced_labels(
    num_classes: int | None = None,
    num_per_class: int | None = None,
    num_samples: int | None = None,
    classes: Sequence[int] | None = None,
    seed: int = 0,
    shuffle: bool = True,
) -> torch.Tensor:
    """(N,) int64 labels: ``num_per_class`` of each class (the paper's 50 x 1000), or ``num_samples`` spread
    round-robin (class counts differ by at most one). ``classes`` restricts the set (default all
    ``num_classes``). ``shuffle`` permutes them with ``seed`` (a CPU generator: the same on any machine)."""
    if classes is None:
        if num_classes is None or num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        classes = range(num_classes)
    classes_C = torch.as_tensor(list(classes), dtype=torch.long)
    if classes_C.numel() == 0:
        raise ValueError("the class list is empty")
    if (num_per_class is None) == (num_samples is None):
        raise ValueError(
            f"give exactly one of num_per_class and num_samples (got {num_per_class}, {num_samples})"
        )
    if num_per_class is not None:
        if num_per_class < 1:
            raise ValueError(f"num_per_class must be >= 1, got {num_per_class}")
        labels_N = classes_C.repeat_interleave(int(num_per_class))
    else:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        labels_N = classes_C.repeat(math.ceil(num_samples / classes_C.numel()))[:num_samples]
    if shuffle:
        perm = torch.randperm(labels_N.numel(), generator=torch.Generator().manual_seed(int(seed)))
        labels_N = labels_N[perm]
    return labels_N


def num_batches(n: int, batch_size: int) -> int:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return math.ceil(n / batch_size)


def rank_batches(n: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[tuple[int, slice]]:
    """The (global batch index, sample slice) pairs rank ``rank`` draws: batches b with b % world == rank."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
    return [
        (b, slice(b * batch_size, min((b + 1) * batch_size, n)))
        for b in range(rank, num_batches(n, batch_size), world_size)
    ]


def contiguous_shard(n: int, rank: int = 0, world_size: int = 1) -> range:
    """Indices of rank ``rank``'s share of ``n`` items (contiguous, sizes differ by at most one, no
    padding: unlike ``DistributedSampler`` nothing is counted twice)."""
    return range(n * rank // world_size, n * (rank + 1) // world_size)


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_rows(t_ND: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's rows (rank 0's first); ranks may hold different numbers of rows. Every
    rank receives the result, on the input's device. A no-op in one process."""
    if not is_distributed():
        return t_ND
    dev = _collective_device()
    x_ND = t_ND.detach().to(dev).contiguous()
    count = torch.tensor([x_ND.shape[0]], device=dev, dtype=torch.long)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    sizes = [int(c.item()) for c in counts]
    pad = max(sizes) - x_ND.shape[0]
    if pad:
        x_ND = torch.cat([x_ND, x_ND.new_zeros((pad, *x_ND.shape[1:]))])
    parts = [torch.empty_like(x_ND) for _ in sizes]
    dist.all_gather(parts, x_ND)
    return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)]).to(t_ND.device)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (e.g. the output directory that rank 0 chose)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
