"""Guarded collective helpers: no-ops in a single process, so model code never needs a process group.

torch is imported inside the functions: the command line reads ``rank_log_suffix`` (the per-process log file
name in conf/hydra) before anything else loads, and answers ``--help`` or a config error without torch."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def is_distributed() -> bool:
    """True when a default process group exists and has more than one rank."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks in place (no-op in one process) and return it."""
    if is_distributed():
        import torch.distributed as dist

        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def launch_rank() -> int:
    """This process's global rank as its launcher announced it (torchrun's RANK, SLURM's SLURM_PROCID,
    Lightning's NODE_RANK / LOCAL_RANK), known before (and after) any process group exists; 0 alone."""
    import os

    for var in ("RANK", "SLURM_PROCID"):
        if (
            os.environ.get(var, "").isdigit()
            and int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "2"))) > 1
        ):
            return int(os.environ[var])
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", "0")) or 0)
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "0") or 0)
    if node and per_node:
        return node * per_node + local
    return local if not node else node * 1000 + local  # unique even when the per-node count is unknown


def rank_log_suffix() -> str:
    """``""`` on rank 0, ``".rank<r>"`` elsewhere: each process writes its own log file."""
    r = launch_rank()
    return "" if r == 0 else f".rank{r}"
