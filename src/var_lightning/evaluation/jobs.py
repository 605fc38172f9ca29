"""What var-eval's jobs share: where they run (:class:`Context`, one process or torchrun's), the data module,
the feature extractor (rank 0 first: it may download the weights), the metric settings and the reference
statistics."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset

from var_lightning.evaluation.extractors import FeatureExtractor, build_extractor
from var_lightning.evaluation.fid import GaussianStats
from var_lightning.evaluation.generation import (
    MetricSettings,
)
from var_lightning.evaluation.reference import reference_stats
from var_lightning.evaluation.scores import KID_DEFAULT_SUBSET
from var_lightning.evaluation.sharding import (
    barrier,
    contiguous_shard,
)
from var_lightning.evaluation.splits import datamodule_source_id, dataset_split
from var_lightning.inference.devices import resolve_device

log = logging.getLogger("var_lightning.eval")
MODES = ("generation", "loss", "reconstruction")


@dataclass
class Context:
    """Where a var-eval job runs, and the two config operations that need Hydra (done by the entry point:
    this module does not import it): building the data module and turning a config node into plain
    containers."""

    rank: int
    world_size: int
    device: torch.device
    make_datamodule: Callable[[Any], Any] = lambda cfg: None
    to_plain: Callable[[Any], Any] = lambda node: node


def init_distributed(device_name: str, **hooks: Any) -> Context:
    """Join the torchrun process group when launched by torchrun (one process otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context(0, 1, resolve_device(device_name), **hooks)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank) if use_cuda else resolve_device(device_name)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Context(dist.get_rank(), dist.get_world_size(), device, **hooks)


def _require(value: Any, key: str, why: str) -> Any:
    if value is None or value == "":
        raise ValueError(f"{key} is not set: {why}")
    return value


def _datamodule(cfg: Any, ctx: Context) -> Any | None:
    return ctx.make_datamodule(cfg.data) if cfg.get("data") else None


def _extractor(cfg: Any, ctx: Context) -> FeatureExtractor:
    """Rank 0 builds first (it may download the weights), then the others load the same file."""
    if ctx.rank != 0:
        barrier()
    extractor = build_extractor(ctx.to_plain(cfg.extractor), "extractor")
    if ctx.rank == 0:
        barrier()
    return extractor.to(ctx.device)


def _settings(cfg: Any, extractor: FeatureExtractor) -> MetricSettings:
    m = cfg.metrics
    return MetricSettings(
        fid_method=m.fid_method,
        is_splits=m.is_splits,
        pr_k=m.pr_k,
        precision_recall=m.precision_recall,
        kid=m.kid,
        kid_subsets=m.kid_subsets,
        kid_subset_size=m.kid_subset_size or KID_DEFAULT_SUBSET,  # null: resolved against the set sizes
        class_accuracy=extractor.name == "classifier",
    )


def _reference(cfg: Any, extractor: FeatureExtractor, dm: Any, keep: bool) -> GaussianStats:
    common = dict(
        count=cfg.reference_count, keep_features=keep, batch_size=cfg.batch_size, num_workers=cfg.num_workers
    )
    if cfg.reference:
        try:
            stats = reference_stats(cfg.reference, extractor, cfg.cache_dir, **common)
        except ValueError as err:
            raise ValueError(
                f"reference={cfg.reference} (reference_count={cfg.reference_count}): {err}"
            ) from err
        stats.meta["source"] = str(Path(cfg.reference).resolve())
        return stats
    if dm is None:
        raise ValueError(
            "generation mode needs a reference: set reference=/path/to/VIRTUAL_imagenet256_labeled.npz (or an "
            "image folder), or choose a data config (data=...) whose reference_split is the reference"
        )
    dataset = dataset_split(dm, cfg.reference_split, "reference_split")
    if cfg.reference_count is not None and cfg.reference_count > len(dataset):
        raise ValueError(
            f"reference_count={cfg.reference_count} but the {cfg.reference_split} split has {len(dataset)} images"
        )
    ident = datamodule_source_id(dm, cfg.reference_split, len(dataset))
    if cfg.reference_count is not None and cfg.reference_count < len(dataset):  # a seeded, unbiased subset
        dataset = Subset(dataset, seeded_subset(len(dataset), cfg.reference_count, cfg.seed))
        ident += f":subset{cfg.reference_count}:seed{cfg.seed}"
    stats = reference_stats(dataset, extractor, cfg.cache_dir, source_id=ident, **common)
    stats.meta["source"] = f"{type(dm).__name__} {cfg.reference_split} split: {ident}"
    return stats


def _loader(cfg: Any, ctx: Context, dataset: Any) -> DataLoader:
    shard = Subset(dataset, contiguous_shard(len(dataset), ctx.rank, ctx.world_size))
    return DataLoader(shard, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers)


def seeded_subset(size: int, n: int, seed: int) -> list[int]:
    """``n`` distinct indices of ``range(size)``, a seeded random pick (all of them, in order, when n = size)."""
    if n >= size:
        return list(range(size))
    return sorted(torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:n].tolist())
