"""AR vs VAR at equal size and budget: the study behind ``make compare-ar`` (paper Table 3, rows 1-2).

One plan of command lines trains a tokenizer, VAR and the raster-order AR baseline (same depth, width,
tokenizer, batch and steps), a dataset classifier, and evaluates 500 samples of each model; then this
module measures sampling speed at several batch sizes and the tokenizer's reconstruction floor of both
token kinds, and writes the table (``README.md``), the numbers (``results.json``) and a plot of images/s
against batch size. Every step whose output exists is reused, so an interrupted study continues where it
stopped and the report can be rebuilt alone. At paper scale (``+scale=paper``) the same plan is printed as
GPU command lines instead of run.

Plain library code: the ``var-compare-ar`` command (:mod:`var_lightning.cli.compare_ar`) drives it.
"""

from __future__ import annotations

import functools
import json
import logging
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from var_lightning.checkpoints.load import load_models, load_tokenizer
from var_lightning.data.fit_to_model import fit_data_to_model
from var_lightning.evaluation.splits import dataset_split
from var_lightning.scaling.flops import model_flops, model_num_params
from var_lightning.transformer.ar import raster_tokens, raster_tokens_to_img
from var_lightning.transformer.config import SamplingArgs
from var_lightning.transformer.fast_sampling import build_sampler

log = logging.getLogger(__name__)

MODELS = ("ar", "var")
RECONSTRUCTIONS = ("multi_scale", "one_scale")
LABELS = {"ar": "AR (raster order)", "var": "VAR (next scale)"}


@dataclass
class Step:
    """One command of the plan: ``program`` (a console script) with Hydra ``args``; skipped when ``output``
    exists (``output=None``: always run)."""

    name: str
    program: str
    args: list[str]
    output: Path | None
    env: dict[str, str] = field(default_factory=dict)

    def command_line(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return " ".join(filter(None, [env, self.program, *map(shlex.quote, self.args)]))


@dataclass
class Settings:
    """What a study needs (the ``var-compare-ar`` config, resolved)."""

    out_dir: Path
    report_dir: Path
    var_experiment: str
    ar_experiment: str
    tokenizer_experiment: str
    tokenizer_ckpt: str | None
    classifier_ckpt: str | None
    train_overrides: list[str]
    eval_overrides: list[str]
    classifier_overrides: list[str]
    num_samples: int
    batch_sizes: list[int]
    speed_repeats: int
    device: str
    scale: str
    train_program: str = "var-train"  # a console script, or e.g. "torchrun --nproc_per_node=8 -m <module>"
    eval_program: str = "var-eval"
    model_eval_overrides: list[str] = field(default_factory=list)
    seed: int = 0

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Settings:
        c = dict(cfg)
        return cls(
            out_dir=Path(c["out_dir"]),
            report_dir=Path(c["report_dir"]),
            var_experiment=str(c["var_experiment"]),
            ar_experiment=str(c["ar_experiment"]),
            tokenizer_experiment=str(c["tokenizer_experiment"]),
            tokenizer_ckpt=c.get("tokenizer_ckpt"),
            classifier_ckpt=c.get("classifier_ckpt"),
            train_overrides=[str(a) for a in c.get("train_overrides") or []],
            eval_overrides=[str(a) for a in c.get("eval_overrides") or []],
            classifier_overrides=[str(a) for a in c.get("classifier_overrides") or []],
            num_samples=int(c["num_samples"]),
            batch_sizes=[int(b) for b in c["speed"]["batch_sizes"]],
            speed_repeats=int(c["speed"]["repeats"]),
            device=str(c["speed"]["device"]),
            scale=str(c.get("scale_name") or "cpu"),
            train_program=str(c.get("train_program") or "var-train"),
            eval_program=str(c.get("eval_program") or "var-eval"),
            model_eval_overrides=[str(a) for a in c.get("model_eval_overrides") or []],
            seed=int(c.get("seed", 0)),
        )

    def run_dir(self, name: str) -> Path:
        return self.out_dir / name

    def tokenizer_path(self) -> str:
        return self.tokenizer_ckpt or str(self.run_dir("tokenizer") / "checkpoints" / "last.ckpt")

    def classifier_path(self) -> str | None:
        if self.scale == "paper":
            return None  # Inception features (the paper's protocol)
        return self.classifier_ckpt or str(self.run_dir("classifier") / "classifier.pt")

    def ckpt(self, model: str) -> Path:
        return self.run_dir(model) / "checkpoints" / "last.ckpt"


def plan(s: Settings) -> list[Step]:
    """The study's commands in order (training, classifier, evaluation of both models and of the
    tokenizer's reconstructions)."""
    steps: list[Step] = []
    program, *lead = shlex.split(s.train_program)
    eval_program, *eval_lead = shlex.split(s.eval_program)
    # an interrupted run continues from its newest checkpoint (a finished one is skipped: its last.ckpt exists)
    resume = [] if any(o.startswith("resume=") for o in s.train_overrides) else ["resume=auto"]
    if s.tokenizer_ckpt is None:
        steps.append(Step("tokenizer", program, [*lead, f"experiment={s.tokenizer_experiment}",
                                                  f"hydra.run.dir={s.run_dir('tokenizer')}", *resume, *s.train_overrides],
                          Path(s.tokenizer_path())))  # fmt: skip
    for model, exp in (("var", s.var_experiment), ("ar", s.ar_experiment)):
        steps.append(Step(f"train {model}", program, [*lead, f"experiment={exp}",
                          f"model.tokenizer_ckpt={s.tokenizer_path()}", f"hydra.run.dir={s.run_dir(model)}",
                          *resume, *s.train_overrides], s.ckpt(model)))  # fmt: skip
    classifier = s.classifier_path()
    if classifier is not None and s.classifier_ckpt is None:
        steps.append(Step("classifier", "var-classifier", [f"hydra.run.dir={s.run_dir('classifier')}",
                          *s.classifier_overrides], Path(classifier)))  # fmt: skip
    features = ["extractor=classifier", f"extractor.path={classifier}"] if classifier else []
    kid = [f"metrics.kid_subset_size={min(100, s.num_samples)}"] if s.scale != "paper" else []
    for model in MODELS:
        args = [*eval_lead, f"ckpt_path={s.ckpt(model)}", f"generation.num_samples={s.num_samples}", *features, *kid,
                f"seed={s.seed}", f"hydra.run.dir={s.run_dir('eval_' + model)}", *s.eval_overrides,
                *s.model_eval_overrides]  # fmt: skip
        steps.append(
            Step(f"evaluate {model}", eval_program, args, s.run_dir("eval_" + model) / "report.json")
        )
    for kind in RECONSTRUCTIONS:
        npz = s.run_dir("reconstructions") / f"{kind}.npz"
        args = [*eval_lead, f"generation.samples={npz}", *features, *kid,
                f"hydra.run.dir={s.run_dir('eval_recon_' + kind)}", *s.eval_overrides]  # fmt: skip
        steps.append(Step(f"evaluate {kind} reconstructions", eval_program, args,
                          s.run_dir("eval_recon_" + kind) / "report.json"))  # fmt: skip
    return steps


def run_step(step: Step) -> None:
    """Run one command with this interpreter's console scripts; a failure raises with the command line."""
    exe = Path(sys.executable).parent / step.program
    argv = [str(exe) if exe.exists() else step.program, *step.args]
    log.info("[%s] %s", step.name, step.command_line())
    t0 = time.perf_counter()
    done = subprocess.run(argv, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"step {step.name!r} failed (exit {done.returncode}): {step.command_line()}")
    log.info("[%s] done in %.0f s", step.name, time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------- measurements
def reconstruction_sets(s: Settings, datamodule: Any, count: int) -> dict[str, Any]:
    """Write the tokenizer's reconstructions of ``count`` held-out (test split) images as ADM-layout .npz files
    (arr_0 uint8 NHWC, arr_1 labels), one per token kind (VAR's K-scale pyramid, the AR baseline's one-scale
    grid), and return their pixel MSE (images in [-1, 1]) and the count. Reused when the files exist."""
    from types import SimpleNamespace

    out = s.run_dir("reconstructions")
    mse_file = out / "mse.json"
    if mse_file.is_file() and all((out / f"{k}.npz").is_file() for k in ("multi_scale", "one_scale")):
        return json.loads(mse_file.read_text())
    out.mkdir(parents=True, exist_ok=True)
    vae = load_tokenizer(s.tokenizer_path(), map_location=s.device).eval()
    fit_data_to_model(SimpleNamespace(vae=vae), datamodule, check_classes=False)
    dataset = dataset_split(datamodule, "test", "data")
    n = min(count, len(dataset))
    arrays: dict[str, list[np.ndarray]] = {"multi_scale": [], "one_scale": []}
    sq = {"multi_scale": 0.0, "one_scale": 0.0}
    labels: list[int] = []
    with torch.no_grad():
        for start in range(0, n, 50):
            items = [dataset[i] for i in range(start, min(start + 50, n))]
            x = torch.stack([it[0] for it in items]).to(s.device)
            labels += [int(it[1]) for it in items]
            recs = {"multi_scale": vae.img_to_reconstruction(x),
                    "one_scale": raster_tokens_to_img(vae, raster_tokens(vae, x))}  # fmt: skip
            for k, r in recs.items():
                sq[k] += float((r - x).square().mean(dim=(1, 2, 3)).sum())
                u8 = ((r.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
                arrays[k].append(u8)
    for k, chunks in arrays.items():
        np.savez(out / f"{k}.npz", arr_0=np.concatenate(chunks), arr_1=np.asarray(labels, dtype=np.int64))
    result = {"count": n, "mse": {k: v / n for k, v in sq.items()}}
    mse_file.write_text(json.dumps(result, indent=2))
    return result


def _timed(fn: Any, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


@torch.no_grad()
def sampling_speeds(
    ckpts: Mapping[str, Path], batch_sizes: Sequence[int], repeats: int, device: str, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Images/s of each checkpoint's default sampler (fast; its own cfg / top-k / top-p) per batch size: after
    one warm-up call each, ``repeats`` rounds in which the models take turns (so drifting machine load hits
    both alike), the median per model; labels spread over the classes. Also the tokenizer decoder's share of
    the time (timed alone on the final latents), the same work for AR and VAR."""

    runs = {}
    for name, ckpt in ckpts.items():
        var, vae, info = load_models(ckpt, map_location=device)
        settings = SamplingArgs.of(**{k: info.sampling[k] for k in ("cfg", "top_k", "top_p", "more_smooth")})
        steps = len(var.patch_nums) if info.stage == "var" else var.L
        runs[name] = (build_sampler(var, vae, "fast"), vae, var.num_classes, settings, steps)
    out = {name: {"steps": r[4], "images_per_s": {}, "decode_share": {}, "sampling": r[3].settings(),
                  "threads": torch.get_num_threads()} for name, r in runs.items()}  # fmt: skip
    for B in batch_sizes:
        times: dict[str, list[float]] = {name: [] for name in runs}
        dec: dict[str, list[float]] = {name: [] for name in runs}
        last = {}
        for name, (
            draw,
            _,
            classes,
            settings,
            _,
        ) in runs.items():  # warm-up (allocations, CUDA graph capture)
            labels = torch.arange(B, device=device) % classes
            last[name] = draw(B, labels=labels, args=settings, seed=seed).f_hat
        for r in range(repeats):
            for name, (draw, vae, classes, settings, _) in runs.items():
                labels = torch.arange(B, device=device) % classes
                call = functools.partial(draw, B, labels=labels, args=settings, seed=seed + r + 1)
                times[name].append(_timed(call, device))
                dec[name].append(_timed(functools.partial(vae.fhat_to_img, last[name]), device))
        for name in runs:
            t = statistics.median(times[name])
            out[name]["images_per_s"][B] = B / t
            out[name]["decode_share"][B] = statistics.median(dec[name]) / t
            log.info("%s: batch %d, %.1f images/s (decoder %.0f%% of the time)", name, B, B / t,
                     100 * out[name]["decode_share"][B])  # fmt: skip
    return out


def model_facts(ckpt: Path) -> dict[str, Any]:
    """Parameters (counted on the module and by the analytic model), training FLOPs, the run's steps and
    images seen, and the final validation losses of a training run."""

    var, _, info = load_models(ckpt)
    run = ckpt.parent.parent
    metrics = json.loads((run / "metrics.json").read_text())
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    step = int(raw.get("global_step", 0))
    batch = (raw.get("var_lightning") or {}).get("global_batch")
    per_image = float(model_flops(var.cfg, info.stage)["train"])
    return {
        "stage": info.stage,
        "depth": var.cfg.depth,
        "width": var.cfg.width,
        "params": sum(p.numel() for p in var.parameters()),
        "params_model": model_num_params(var.cfg, info.stage),
        "train_flops_per_image": per_image,
        "steps": step,
        "global_batch": batch,
        "images_seen": step * batch if batch else None,
        "train_flops": per_image * step * batch if batch else None,
        "val_loss": metrics.get("val/loss"),
        "val_loss_last": metrics.get("val/loss_last"),
        "val_token_err_last": metrics.get("val/token_err_last"),
        "tokens": var.L if info.stage == "ar" else sum(p * p for p in var.patch_nums),
    }


def eval_metrics(report: Path) -> dict[str, Any]:
    d = json.loads(report.read_text())
    out = dict(d.get("metrics") or {})
    out["count"] = (d.get("samples") or {}).get("count")
    if d.get("real_baseline"):
        out["real_baseline"] = d["real_baseline"].get("metrics")
    return out
