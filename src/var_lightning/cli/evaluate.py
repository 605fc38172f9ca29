"""`var-eval`: generation metrics, test loss / token error, or reconstruction metrics, with a JSON report.

    # the paper's ImageNet 256 protocol (50 per class, cfg 1.5, top-k 900, top-p 0.96, PNG), 8 GPUs
    torchrun --nproc_per_node=8 -m var_lightning.cli.evaluate ckpt_path=var_d16.ckpt \
        reference=VIRTUAL_imagenet256_labeled.npz hydra.run.dir=outputs/eval/d16
    var-eval mode=loss ckpt_path=var.ckpt data=imagenet data.root=/data/imagenet
    var-eval mode=reconstruction ckpt_path=tokenizer.ckpt data=imagenet data.root=/data/imagenet

Under torchrun every process samples its share (global batch b, seed ``seed * 100003 + b``, on rank
``b % world``), so the images do not depend on the number of GPUs; rank 0 packs the ADM ``.npz``,
scores and writes ``report.json``. The report names everything a number depends on (extractor and its
weights, resize mode, reference, sample count, sampling settings, versions): compare two numbers only
when ``var_lightning.evaluation.report.incomparable_reasons`` finds no difference. See docs/evaluation.md.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Subset

from var_lightning.checkpoints.loading import LoadedModels
from var_lightning.cli.validate import checked_main, validate_config
from var_lightning.evaluation import npz, report
from var_lightning.evaluation.extractors import FeatureExtractor, build_extractor
from var_lightning.evaluation.fid import GaussianStats
from var_lightning.evaluation.generation import (
    GenerationEvaluator,
    MetricSettings,
    measure_dataset,
    sample_and_measure,
    score,
)
from var_lightning.evaluation.recon import ReconstructionMetrics, build_lpips
from var_lightning.evaluation.reference import iter_uint8_batches, reference_stats, source_length
from var_lightning.evaluation.scores import KID_DEFAULT_SUBSET, is_split_rule, resolve_kid_subset
from var_lightning.evaluation.sharding import (
    barrier,
    broadcast_object,
    class_balanced_labels,
    contiguous_shard,
)
from var_lightning.evaluation.splits import datamodule_source_id, dataset_split
from var_lightning.evaluation.token_metrics import accumulate_token_metrics
from var_lightning.inference.devices import autocast_context, resolve_device
from var_lightning.inference.grids import save_pngs
from var_lightning.inference.models import inference_sampler, load_for_inference, sampling_settings
from var_lightning.training.ar_module import raster_losses
from var_lightning.training.objectives import next_scale_losses
from var_lightning.training.wiring import fit_data_to_model

log = logging.getLogger("var_lightning.eval")
MODES = ("generation", "loss", "reconstruction")


@dataclass
class Context:
    rank: int
    world_size: int
    device: torch.device


def init_distributed(device_name: str) -> Context:
    """Join the torchrun process group when launched by torchrun (one process otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context(0, 1, resolve_device(device_name))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank) if use_cuda else resolve_device(device_name)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Context(dist.get_rank(), dist.get_world_size(), device)


def _require(value: Any, key: str, why: str) -> Any:
    if value is None or value == "":
        raise ValueError(f"{key} is not set: {why}")
    return value


def _datamodule(cfg: DictConfig) -> Any | None:
    return instantiate(cfg.data) if cfg.get("data") else None


def _extractor(cfg: DictConfig, ctx: Context) -> FeatureExtractor:
    """Rank 0 builds first (it may download the weights), then the others load the same file."""
    if ctx.rank != 0:
        barrier()
    extractor = build_extractor(OmegaConf.to_container(cfg.extractor, resolve=True), "extractor")
    if ctx.rank == 0:
        barrier()
    return extractor.to(ctx.device)


def _settings(cfg: DictConfig, extractor: FeatureExtractor) -> MetricSettings:
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


def _reference(cfg: DictConfig, extractor: FeatureExtractor, dm: Any, keep: bool) -> GaussianStats:
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


# --------------------------------------------------------------------------------------------- generation
def _sample_checkpoint(
    cfg: DictConfig, ctx: Context, evaluator: GenerationEvaluator, out_dir: Path, models: LoadedModels
) -> dict:
    g = cfg.generation
    var, info = models.var, models.info
    settings = sampling_settings(g, models, prefix="generation.")
    draw = inference_sampler(cfg, models)
    classes = list(range(var.num_classes)) if g.classes is None else [int(c) for c in g.classes]
    bad = [c for c in classes if not 0 <= c < var.num_classes]
    if bad:
        raise ValueError(
            f"generation.classes: {bad[0]} is out of range; this model has {var.num_classes} classes "
            f"(0..{var.num_classes - 1}) (key generation.classes)"
        )
    count = dict(num_samples=g.num_samples) if g.num_samples else dict(num_per_class=g.num_per_class)
    labels_N = class_balanced_labels(classes=classes, seed=cfg.seed, **count)
    png_dir = out_dir / "samples"

    def generate(labels_B: torch.Tensor, seed: int) -> torch.Tensor:
        with autocast_context(ctx.device, cfg.precision):
            out = draw(labels_B.numel(), labels=labels_B.to(ctx.device), seed=seed, **settings)
        return out.images.float()

    def write_pngs(images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> None:
        save_pngs(images, png_dir, [f"{i:06d}.png" for i in index.tolist()])

    if ctx.rank == 0:
        log.info(
            "sampling %d images (%d classes) on %d process(es)",
            labels_N.numel(),
            len(classes),
            ctx.world_size,
        )
    sample_and_measure(
        generate,
        labels_N,
        cfg.batch_size,
        cfg.seed,
        evaluator,
        ctx.rank,
        ctx.world_size,
        on_batch=write_pngs if g.save_png else None,
    )
    barrier()
    npz_path = None
    if g.save_png and g.pack_npz and ctx.rank == 0:
        npz_path = npz.pack_samples(
            png_dir, out_dir / "samples.npz", expected=labels_N.numel(), labels=labels_N
        )
        log.info("packed %s (arr_0 uint8 NHWC, arr_1 labels) for the ADM evaluator", npz_path)
    return {
        "model": info.as_dict(),
        "samples": {
            "count": labels_N.numel(),
            "num_classes": len(classes),
            "num_per_class": None if g.num_samples else g.num_per_class,
            "png_dir": str(png_dir) if g.save_png else None,
            "npz": None if npz_path is None else str(npz_path),
            "format": "png",
        },
        "sampling": {
            **settings,
            "sampler": cfg.sampler,
            "seed": cfg.seed,
            "seed_rule": "seed * 100003 + global batch index",
            "batch_size": cfg.batch_size,
            "precision": cfg.precision,
            "device": ctx.device.type,
            "world_size": ctx.world_size,
            "label_order": "class-balanced, shuffled with seed",
        },
    }


def _expected_samples(cfg: DictConfig, models: LoadedModels | None) -> int:
    """How many images will be scored: the existing samples' count, or what generation.* asks for."""
    g = cfg.generation
    if g.samples:
        return int(source_length(Path(g.samples)) or 0)
    n_classes = len(g.classes) if g.classes is not None else models.var.num_classes
    return int(g.num_samples) if g.num_samples else int(g.num_per_class) * n_classes


def _measure_existing(cfg: DictConfig, ctx: Context, evaluator: GenerationEvaluator) -> dict:
    source = Path(cfg.generation.samples)
    labels = npz.read_labels(source) if source.is_file() else None
    if labels is None:  # a PNG folder or a pack without arr_1: the requested classes are unknown
        evaluator.settings = replace(evaluator.settings, class_accuracy=False)
    start = 0
    for b, x_B3HW in enumerate(iter_uint8_batches(source, cfg.batch_size)):
        if b % ctx.world_size == ctx.rank:
            index_B = torch.arange(start, start + x_B3HW.shape[0])
            label_B = (
                torch.as_tensor(labels[index_B.numpy()]) if labels is not None else torch.zeros_like(index_B)
            )
            evaluator.update(x_B3HW, label_B, index_B)
        start += x_B3HW.shape[0]
    return {"samples": {"count": start, "source": str(source.resolve()), "labels": labels is not None}}


def _real_baseline(
    cfg: DictConfig,
    ctx: Context,
    dm: Any,
    extractor: FeatureExtractor,
    settings: MetricSettings,
    count: int,
    ref: GaussianStats | None,
    split: str | None,
) -> dict | None:
    """Held-out real images scored exactly like the samples: what "as good as real data" reads as."""
    if not split:
        return None
    _require(dm, "data", "real_baseline_split needs a data config (data=...)")
    dataset = dataset_split(dm, split, "real_baseline_split")
    n = min(count, len(dataset))
    picked = seeded_subset(len(dataset), n, cfg.seed)  # not the first n: an ImageFolder is sorted by class
    shard = contiguous_shard(n, ctx.rank, ctx.world_size)
    evaluator = GenerationEvaluator(extractor, settings)
    measure_dataset(
        dataset,
        evaluator,
        indices=[picked[i] for i in shard],
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
    )
    gathered = evaluator.gather()
    if ctx.rank != 0:
        return None
    out = {"split": split, "count": n, "selection": f"seeded random subset (seed {cfg.seed})" if n < len(dataset)
           else "all", "metrics": score(gathered, ref, settings, device=ctx.device)}  # fmt: skip
    return out


def seeded_subset(size: int, n: int, seed: int) -> list[int]:
    """``n`` distinct indices of ``range(size)``, a seeded random pick (all of them, in order, when n = size)."""
    if n >= size:
        return list(range(size))
    return sorted(torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:n].tolist())


def check_disjoint_splits(dm: Any, reference_split: str, baseline_split: str) -> tuple[str, str | None]:
    """The split the real baseline reads, and a note when it is not the one asked for. It must not be the
    reference's own images (its FID would be ~0 against itself). ``test`` on a folder whose test split is its
    reference (an ImageFolder with only train/ and val/) reads a seeded subset of ``train`` instead, with the
    note; any other overlap is refused."""
    source = getattr(dm, "split_source", None)

    def same(a: str, b: str) -> bool:
        return a == b or (source is not None and source(a) == source(b))

    if same(baseline_split, reference_split):
        if baseline_split == "test" != reference_split and not same("train", reference_split):
            where = f" ({source(reference_split)})" if source is not None else ""
            return "train", (
                f"real_baseline_split=test reads the same images as reference_split={reference_split}{where} (the "
                f"folder has no test/ split), so the real baseline is a seeded random subset of train instead; "
                f"add a test/ folder for held-out images"
            )
        where = f" ({source(reference_split)})" if source is not None else ""
        raise ValueError(
            f"real_baseline_split={baseline_split} reads the same images as reference_split={reference_split}{where}: "
            f"the baseline would score the reference against itself (FID ~0). For an ImageFolder with only "
            f"train/ and val/, use real_baseline_split=train (a seeded random subset of the training images), add a "
            f"test/ folder, or give reference=<an .npz or image folder> (key real_baseline_split)"
        )
    return baseline_split, None


def run_generation(cfg: DictConfig, out_dir: Path, ctx: Context) -> dict | None:
    extractor = _extractor(cfg, ctx)
    settings = _settings(cfg, extractor)
    dm = _datamodule(cfg)
    models = None if cfg.generation.samples else load_for_inference(cfg, ctx.device)
    if dm is not None:  # real images at the samples' size: the model's, or the existing samples'
        if models is not None:
            fit_data_to_model(models, dm, check_classes=False)
        elif getattr(dm, "image_size", 0) is None:
            first = next(iter_uint8_batches(Path(cfg.generation.samples), 1))
            dm.fit_image_size(int(first.shape[-1]), f"the samples in {cfg.generation.samples} are that size")
    notes: list[str] = []  # what was adapted to a small folder: logged, and kept in report.json
    baseline_split = cfg.real_baseline_split or None
    if baseline_split and dm is not None and not cfg.reference:
        baseline_split, note = check_disjoint_splits(
            dm, cfg.reference_split, baseline_split
        )  # before sampling
        notes += [note] if note else []
    keep = settings.precision_recall or settings.kid
    ref = _reference(cfg, extractor, dm, keep) if ctx.rank == 0 else None  # first: fail before sampling
    problem, kid_size, kid_note = None, settings.kid_subset_size, None
    if settings.kid and ctx.rank == 0:  # refuse before sampling 50k images, not after
        try:
            n_real = ref.count if ref.features is not None else None
            kid_size, kid_note = resolve_kid_subset(
                cfg.metrics.kid_subset_size, _expected_samples(cfg, models), n_real
            )
        except ValueError as err:
            problem = str(err)
    problem, kid_size, kid_note = broadcast_object((problem, kid_size, kid_note))
    if problem:
        raise ValueError(problem)
    if settings.kid:
        settings = replace(
            settings, kid=kid_size is not None, kid_subset_size=kid_size or settings.kid_subset_size
        )
        notes += [kid_note] if kid_note else []
    for note in notes if ctx.rank == 0 else []:
        log.warning(note)
    evaluator = GenerationEvaluator(extractor, settings)
    if models is None:
        fields = _measure_existing(cfg, ctx, evaluator)
    else:
        fields = _sample_checkpoint(cfg, ctx, evaluator, out_dir, models)
    gathered = evaluator.gather()
    skipped: dict[str, str] = {}
    metrics = score(gathered, ref, settings, device=ctx.device, skipped=skipped) if ctx.rank == 0 else None
    if kid_size is None and kid_note:
        skipped["kid"] = kid_note
    baseline = _real_baseline(cfg, ctx, dm, extractor, settings, gathered.count, ref, baseline_split)
    if ctx.rank != 0:
        return None
    ref_meta = {k: ref.meta.get(k) for k in ("source", "stats_from", "cache_path", "cache_hit")}
    ref_meta["count"] = ref.count
    out = report.report_header(
        "generation",
        extractor,
        metrics=metrics,
        real_baseline=baseline,
        reference=ref_meta,
        metric_settings={
            **asdict(settings),
            "is_split_rule": is_split_rule(settings.is_splits, gathered.count),
        },
        skipped_metrics=skipped,
        notes=notes,
        seed=cfg.seed,
        **fields,
    )
    columns = {"generated": metrics}
    if baseline is not None:
        columns[f"real ({baseline['split']}, n={baseline['count']})"] = baseline["metrics"]
    return out | {"_table": columns}


# --------------------------------------------------------------------------------------------- loss
def _loader(cfg: DictConfig, ctx: Context, dataset: Any) -> DataLoader:
    shard = Subset(dataset, contiguous_shard(len(dataset), ctx.rank, ctx.world_size))
    return DataLoader(shard, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers)


def run_loss(cfg: DictConfig, out_dir: Path, ctx: Context) -> dict | None:
    dm = _require(_datamodule(cfg), "data", "loss mode needs a data config (data=imagenet data.root=...)")
    models = load_for_inference(cfg, ctx.device)
    fit_data_to_model(models, dm)
    dataset = dataset_split(dm, cfg.loss.split, "loss.split")
    smoothing = float(models.info.hyper_parameters.get("train", {}).get("label_smoothing", 0.0))
    losses = raster_losses if models.info.stage == "ar" else next_scale_losses
    metrics = accumulate_token_metrics(
        functools.partial(losses, models.var, models.vae, label_smoothing=smoothing),
        _loader(cfg, ctx, dataset),
        ctx.device,
        cfg.loss.limit_batches,
        functools.partial(autocast_context, ctx.device, cfg.precision),
    )
    if ctx.rank != 0:
        return None
    out = report.report_header(
        "loss",
        model=models.info.as_dict(),
        split=cfg.loss.split,
        data=type(dm).__name__,
        metrics=metrics,
        precision=cfg.precision,
        world_size=ctx.world_size,
    )
    return out | {"_table": {cfg.loss.split: metrics}}


# --------------------------------------------------------------------------------------------- reconstruction
def _tokenizer(cfg: DictConfig, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """The tokenizer of any checkpoint kind (a tokenizer alone, or the one inside a VAR checkpoint)."""
    models = load_for_inference(cfg, device, require_var=False)
    return models.vae.to(device).eval(), models.info.as_dict()


def run_reconstruction(cfg: DictConfig, out_dir: Path, ctx: Context) -> dict | None:
    r = cfg.reconstruction
    dm = _require(_datamodule(cfg), "data", "reconstruction mode needs a data config (data=...)")
    extractor = _extractor(cfg, ctx) if r.rfid else None
    lpips_spec = OmegaConf.to_container(r.lpips, resolve=True) if r.lpips is not None else None
    lpips = build_lpips(lpips_spec, "reconstruction.lpips")
    if isinstance(lpips, torch.nn.Module):
        lpips.to(ctx.device)
    vae, model_info = _tokenizer(cfg, ctx.device)
    fit_data_to_model(SimpleNamespace(vae=vae), dm)
    metrics = ReconstructionMetrics(extractor, lpips, device=ctx.device)
    with torch.no_grad():
        for i, (img_B3HW, _) in enumerate(
            _loader(cfg, ctx, dataset_split(dm, r.split, "reconstruction.split"))
        ):
            if r.limit_batches is not None and i >= r.limit_batches:
                break
            img_B3HW = img_B3HW.to(ctx.device).float()
            with autocast_context(ctx.device, cfg.precision):
                rec_B3HW = vae.img_to_reconstruction(img_B3HW)
            metrics.update(img_B3HW, rec_B3HW.float())
    values = metrics.sync_().compute()
    if ctx.rank != 0:
        return None
    notes = (
        {"lpips": "random backbone: NOT LPIPS"} if lpips_spec and lpips_spec.get("random_backbone") else {}
    )
    out = report.report_header(
        "reconstruction",
        extractor,
        model=model_info,
        split=r.split,
        metrics=values,
        num_images=int(metrics.sums[0].item()),
        lpips=lpips_spec,
        notes=notes,
        world_size=ctx.world_size,
    )
    return out | {"_table": {r.split: values}}


# --------------------------------------------------------------------------------------------- entry point
def run(cfg: DictConfig, out_dir: Path, ctx: Context | None = None) -> dict | None:
    """Run ``cfg.mode``; on rank 0 write ``out_dir/report.json``, print the table and return the report."""
    validate_config(cfg, "eval")
    if cfg.mode not in MODES:
        raise ValueError(f"mode={cfg.mode!r}: choose one of {', '.join(MODES)}")
    ctx = ctx or Context(0, 1, resolve_device(cfg.device))
    torch.manual_seed(cfg.seed)
    runner = {"generation": run_generation, "loss": run_loss, "reconstruction": run_reconstruction}[cfg.mode]
    result = runner(cfg, out_dir, ctx)
    if result is None:
        return None
    table = result.pop("_table")
    path = report.write_report(result, out_dir / "report.json")
    from rich.console import Console

    Console().print(report.metrics_table(table, title=f"var-eval {cfg.mode}"))
    print(f"report: {path}")
    return result


@checked_main("eval", "var-eval")
def main(cfg: DictConfig) -> None:
    ctx = init_distributed(cfg.device)
    out_dir = Path(broadcast_object(HydraConfig.get().runtime.output_dir))  # rank 0's run directory
    try:
        run(cfg, out_dir, ctx)
    finally:
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
