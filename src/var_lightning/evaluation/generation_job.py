"""var-eval's generation job: FID / IS / precision / recall / KID of a checkpoint's samples (or of existing
ones) against a reference, with a real-images baseline scored the same way. On a small folder what can be
adapted is (KID's subset size, the baseline split), logged and kept in the report's ``notes``."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from var_lightning.checkpoints.load import LoadedModels
from var_lightning.data.fit_to_model import fit_data_to_model
from var_lightning.evaluation import npz, report
from var_lightning.evaluation.extra_fd import (
    EXTRA_FD,
    InceptionSpatial,
    TeeEvaluator,
    check_names,
    extra_distances,
)
from var_lightning.evaluation.extractors import FeatureExtractor, InceptionTF, build_extractor
from var_lightning.evaluation.fid import GaussianStats
from var_lightning.evaluation.generation import (
    GenerationEvaluator,
    MetricSettings,
    measure_dataset,
    sample_and_measure,
    score,
)
from var_lightning.evaluation.jobs import (
    Context,
    _datamodule,
    _extractor,
    _reference,
    _require,
    _settings,
    log,
    seeded_subset,
)
from var_lightning.evaluation.reference import iter_uint8_batches, source_length
from var_lightning.evaluation.scores import is_split_rule, resolve_kid_subset, sample_count_note
from var_lightning.evaluation.sharding import (
    barrier,
    broadcast_object,
    class_balanced_labels,
    contiguous_shard,
)
from var_lightning.evaluation.splits import dataset_split
from var_lightning.inference.devices import autocast_context
from var_lightning.inference.grids import save_pngs
from var_lightning.inference.models import load_for_inference, sampling_for
from var_lightning.seeds import SEED_RULE


def cfg_values(generation: Any) -> list[float | None]:
    """``generation.cfg`` as a list: one value (or None, the checkpoint's own) or several (a guidance sweep,
    e.g. ``generation.cfg=[1.0,1.5]``: FID without and with guidance in one run)."""
    value = generation.get("cfg") if hasattr(generation, "get") else generation.cfg
    if value is None or isinstance(value, (int, float)):
        return [value]
    values = [float(v) for v in value]
    if not values or len(set(values)) != len(values):
        raise ValueError(f"generation.cfg={list(value)}: give one value or distinct values, e.g. [1.0,1.5]")
    return values


def _sample_checkpoint(
    cfg: Any, ctx: Context, evaluator: GenerationEvaluator, out_dir: Path, models: LoadedModels,
    cfg_value: float | None = None,
) -> dict:  # fmt: skip
    g = cfg.generation
    var, info = models.var, models.info
    given = {k: g.get(k) for k in ("cfg", "top_k", "top_p", "more_smooth")}
    settings, draw = sampling_for(cfg, models, {**given, "cfg": cfg_value}, prefix="generation.")
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
            out = draw(labels_B.numel(), labels=labels_B.to(ctx.device), args=settings, seed=seed)
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
            **settings.settings(),
            "sampler": cfg.sampler,
            "seed": cfg.seed,
            "seed_rule": SEED_RULE.replace("batch index", "global batch index"),
            "batch_size": cfg.batch_size,
            "precision": cfg.precision,
            "device": ctx.device.type,
            "world_size": ctx.world_size,
            "label_order": "class-balanced, shuffled with seed",
        },
    }


def _expected_samples(cfg: Any, models: LoadedModels | None) -> int:
    """How many images will be scored: the existing samples' count, or what generation.* asks for."""
    g = cfg.generation
    if g.samples:
        return int(source_length(Path(g.samples)) or 0)
    n_classes = len(g.classes) if g.classes is not None else models.var.num_classes
    return int(g.num_samples) if g.num_samples else int(g.num_per_class) * n_classes


def _measure_existing(cfg: Any, ctx: Context, evaluator: GenerationEvaluator) -> dict:
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
    cfg: Any,
    ctx: Context,
    dm: Any,
    extractor: FeatureExtractor,
    settings: MetricSettings,
    count: int,
    ref: GaussianStats | None,
    split: str | None,
    extras: dict[str, FeatureExtractor] | None = None,
    extra_refs: dict[str, GaussianStats] | None = None,
) -> dict | None:
    """Held-out real images scored exactly like the samples (the extra distances too): what "as good as real
    data" reads as."""

    if not split:
        return None
    _require(dm, "data", "real_baseline_split needs a data config (data=...)")
    dataset = dataset_split(dm, split, "real_baseline_split")
    n = min(count, len(dataset))
    picked = seeded_subset(len(dataset), n, cfg.seed)  # not the first n: an ImageFolder is sorted by class
    shard = contiguous_shard(n, ctx.rank, ctx.world_size)
    fd_only = replace(settings, precision_recall=False, kid=False, class_accuracy=False)
    evaluator = TeeEvaluator(
        GenerationEvaluator(extractor, settings),
        {name: GenerationEvaluator(e, fd_only) for name, e in (extras or {}).items()},
    )
    measure_dataset(
        dataset,
        evaluator,
        indices=[picked[i] for i in shard],
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
    )
    gathered, gathered_extra = evaluator.gather(), evaluator.gather_extras()
    if ctx.rank != 0:
        return None
    metrics = score(gathered, ref, settings, device=ctx.device)
    if extras:
        metrics.update(extra_distances(gathered_extra, extra_refs or {}))
    out = {"split": split, "count": n, "selection": f"seeded random subset (seed {cfg.seed})" if n < len(dataset)
           else "all", "metrics": metrics}  # fmt: skip
    return out


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


def _extra_extractors(cfg: Any, ctx: Context, main: FeatureExtractor) -> dict[str, FeatureExtractor]:
    """metrics.extra_fd's extractors; sFID reads the FID Inception's own network when that is the main one."""

    out: dict[str, FeatureExtractor] = {}
    for name in check_names(list(cfg.metrics.get("extra_fd") or [])):
        if name == "sfid" and type(main) is InceptionTF:
            out[name] = InceptionSpatial(share=main)
            continue
        if ctx.rank != 0:
            barrier()
        out[name] = build_extractor({"name": EXTRA_FD[name]}, "metrics.extra_fd").to(ctx.device)
        if ctx.rank == 0:
            barrier()
    return out


def run_generation(cfg: Any, out_dir: Path, ctx: Context) -> dict | None:

    extractor = _extractor(cfg, ctx)
    extras = _extra_extractors(cfg, ctx, extractor)  # before sampling: a missing network fails now, not after
    settings = _settings(cfg, extractor)
    dm = _datamodule(cfg, ctx)
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
    extra_refs = {n: _reference(cfg, e, dm, False) for n, e in extras.items()} if ctx.rank == 0 else {}
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
    count_note = sample_count_note(_expected_samples(cfg, models), extractor.feature_dim)
    notes += [count_note] if count_note else []
    for note in notes if ctx.rank == 0 else []:
        log.warning(note)
    values = cfg_values(cfg.generation) if models is not None else [None]
    sweep = []  # (cfg, fields, metrics, skipped, count) per guidance value; the first is the report's own
    fd_only = replace(settings, precision_recall=False, kid=False, class_accuracy=False)
    for value in values:
        evaluator = TeeEvaluator(
            GenerationEvaluator(extractor, settings),
            {n: GenerationEvaluator(e, fd_only) for n, e in extras.items()},
        )
        if models is None:
            fields = _measure_existing(cfg, ctx, evaluator)
        else:
            where = out_dir if len(values) == 1 else out_dir / f"cfg_{value:g}"
            fields = _sample_checkpoint(cfg, ctx, evaluator, where, models, value)
        gathered = evaluator.gather()
        gathered_extra = evaluator.gather_extras()
        skipped: dict[str, str] = dict(extractor.unavailable)  # e.g. no IS from a head-less Inception
        metrics = (
            score(gathered, ref, settings, device=ctx.device, skipped=skipped) if ctx.rank == 0 else None
        )
        if ctx.rank == 0 and extras:  # sFID / FD-DINOv2 of the same images, each against its own reference
            metrics.update(extra_distances(gathered_extra, extra_refs))
        if kid_size is None and kid_note:
            skipped["kid"] = kid_note
        sweep.append((value, fields, metrics, skipped, gathered.count))
    _, fields, metrics, skipped, _ = sweep[0]
    baseline = _real_baseline(
        cfg, ctx, dm, extractor, settings, gathered.count, ref, baseline_split, extras, extra_refs
    )
    if ctx.rank != 0:
        return None
    ref_meta = {k: ref.meta.get(k) for k in ("source", "stats_from", "cache_path", "cache_hit")}
    ref_meta["count"] = ref.count
    if extras:  # which network and which reference statistics each extra distance used
        ref_meta["extra_fd"] = {
            n: {"extractor": report.extractor_info(e), "cache_path": extra_refs[n].meta.get("cache_path"),
                "count": extra_refs[n].count}
            for n, e in extras.items()
        }  # fmt: skip
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
    if len(sweep) > 1:  # FID with and without guidance: one column and one point of the plot per value
        out["cfg_sweep"] = [{"cfg": v, "metrics": m, "skipped_metrics": sk, "samples": f["samples"]}
                            for v, f, m, sk, _ in sweep]  # fmt: skip
        out["cfg_sweep_plot"] = str(plot_cfg_sweep(out["cfg_sweep"], out_dir / "fid_vs_cfg.png", baseline))
        columns = {f"cfg {v:g}": m for v, _, m, _, _ in sweep}
    if baseline is not None:
        columns[f"real ({baseline['split']}, n={baseline['count']})"] = baseline["metrics"]
    return out | {"_table": columns}


def plot_cfg_sweep(sweep: list[dict], path: Path, baseline: dict | None = None) -> Path:
    """FID (and IS when scored) against the guidance scale, one point per value; the real-images baseline's
    FID as a dotted line (the floor at this sample size)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [e["cfg"] for e in sweep]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(xs, [e["metrics"]["fid"] for e in sweep], "o-", label="FID (lower is better)")
    if baseline is not None and baseline["metrics"].get("fid") is not None:
        ax.axhline(baseline["metrics"]["fid"], ls=":", color="gray",
                   label=f"real images ({baseline['split']}, n={baseline['count']})")  # fmt: skip
        ax.legend(loc="best", fontsize="small")
    ax.set_xlabel("classifier-free guidance scale (cfg)")
    ax.set_ylabel("FID")
    if all(e["metrics"].get("is") is not None for e in sweep):
        twin = ax.twinx()
        twin.plot(xs, [e["metrics"]["is"] for e in sweep], "s--", color="tab:orange", label="IS")
        twin.set_ylabel("Inception Score")
    ax.set_title(f"FID vs cfg ({sweep[0]['samples']['count']} samples each)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
