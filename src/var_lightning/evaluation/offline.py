"""var-eval's three jobs (the entry point :mod:`var_lightning.cli.evaluate` parses and validates the command
line, then calls :func:`run`): generation metrics of a checkpoint's samples or of existing ones, test loss
and token error over a data split, and reconstruction metrics of a tokenizer, each ending in a report.

Under torchrun every process samples its share (global batch b, seed ``seed * 100003 + b``, on rank
``b % world``), so the images do not depend on the number of GPUs; rank 0 packs the ADM ``.npz``,
scores and writes ``report.json``. ``cfg`` is the composed ``eval`` config (read by attribute).
"""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from var_lightning.data.fit_to_model import fit_data_to_model
from var_lightning.evaluation import report
from var_lightning.evaluation.generation_job import run_generation
from var_lightning.evaluation.jobs import MODES, Context, _datamodule, _extractor, _loader, _require
from var_lightning.evaluation.recon import ReconstructionMetrics, build_lpips
from var_lightning.evaluation.splits import dataset_split
from var_lightning.evaluation.token_metrics import accumulate_token_metrics
from var_lightning.inference.devices import autocast_context, resolve_device
from var_lightning.inference.models import load_for_inference
from var_lightning.objectives.losses import next_scale_losses, raster_losses


def run_loss(cfg: Any, out_dir: Path, ctx: Context) -> dict | None:
    dm = _require(
        _datamodule(cfg, ctx), "data", "loss mode needs a data config (data=imagenet data.root=...)"
    )
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
def _tokenizer(cfg: Any, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """The tokenizer of any checkpoint kind (a tokenizer alone, or the one inside a VAR checkpoint)."""
    models = load_for_inference(cfg, device, require_var=False)
    return models.vae.to(device).eval(), models.info.as_dict()


def run_reconstruction(cfg: Any, out_dir: Path, ctx: Context) -> dict | None:
    r = cfg.reconstruction
    dm = _require(_datamodule(cfg, ctx), "data", "reconstruction mode needs a data config (data=...)")
    extractor = _extractor(cfg, ctx) if r.rfid else None
    lpips_spec = ctx.to_plain(r.lpips) if r.lpips is not None else None
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


def run(cfg: Any, out_dir: Path, ctx: Context | None = None) -> dict | None:
    """Run ``cfg.mode``; on rank 0 write ``out_dir/report.json``, print the table and return the report."""
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
    for metric, why in (result.get("skipped_metrics") or {}).items():  # a missing row is never silent
        print(f"not computed: {metric}: {why}")
    for note in result.get("notes") or []:  # what limits the numbers above, where the reader looks
        print(f"note: {note}")
    print(f"report: {path}")
    return result
