"""The AR-vs-VAR study's report: the table (the experiment's ``README.md``), ``results.json`` and the plot of
images/s against batch size, from the measurements of :mod:`var_lightning.studies.ar_vs_var`."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from var_lightning.studies.ar_vs_var import LABELS, MODELS

log = logging.getLogger(__name__)


def _fmt(v: Any, spec: str = ".3f") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float) and spec == "sci":
        return f"{v:.3g}"
    return format(v, spec) if isinstance(v, (int, float)) else str(v)


def table(results: Mapping[str, Any], batch_sizes: Sequence[int]) -> str:
    """The markdown table: one row per model."""
    shown = [b for b in (1, 32) if b in batch_sizes] or list(batch_sizes[:2])
    n = results["var"]["eval"].get("count")
    head = ["model", "params", "training FLOPs", "final val loss, last scale", f"FID ({n} samples, domain)", "class acc",
            "sampling steps", *[f"img/s @ B={b}" for b in shown]]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in MODELS:
        r = results[m]
        f, e, sp = r["facts"], r["eval"], r["speed"]
        lines.append("| " + " | ".join([
            LABELS[m], f"{f['params'] / 1e6:.2f} M", _fmt(f["train_flops"], "sci"), _fmt(f["val_loss_last"]),
            _fmt(e.get("fid"), ".2f"), _fmt(e.get("class_acc"), ".3f"), str(sp["steps"]),
            *[_fmt(sp["images_per_s"].get(b) or sp["images_per_s"].get(str(b)), ".1f") for b in shown],
        ]) + " |")  # fmt: skip
    return "\n".join(lines)


def plot_speed(results: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for m in MODELS:
        rates = {int(k): v for k, v in results[m]["speed"]["images_per_s"].items()}
        bs = sorted(rates)
        ax.plot(
            bs, [rates[b] for b in bs], marker="o", label=f"{LABELS[m]}, {results[m]['speed']['steps']} steps"
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("images / s")
    ax.set_title(f"sampling speed ({results['device']})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def speedups(results: Mapping[str, Any]) -> dict[int, float]:
    a = {int(k): v for k, v in results["ar"]["speed"]["images_per_s"].items()}
    v = {int(k): x for k, x in results["var"]["speed"]["images_per_s"].items()}
    return {b: v[b] / a[b] for b in sorted(a) if b in v}


def write_report(results: Mapping[str, Any], report_dir: Path, command: str) -> Path:
    """README.md (table, plot, comparison with the paper), results.json and speed.png in ``report_dir``.
    Every statement in the text is computed from ``results`` (it holds for whatever the run measured)."""
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    plot_speed(results, report_dir / "speed.png")
    sb = [int(b) for b in results["batch_sizes"]]
    up = speedups(results)
    ar, var = results["ar"], results["var"]
    real = var["eval"].get("real_baseline") or {}
    rec = results["reconstruction"]
    fid = {m: results[m]["eval"].get("fid") for m in MODELS}
    floor = {"var": rec["multi_scale"].get("fid"), "ar": rec["one_scale"].get("fid")}
    acc = {m: results[m]["eval"].get("class_acc") for m in MODELS}
    steps = {m: results[m]["speed"]["steps"] for m in MODELS}
    flops = {m: results[m]["facts"]["train_flops"] for m in MODELS}
    b_lo, b_hi = min(up), max(up)
    dec = {m: {int(k): v for k, v in results[m]["speed"]["decode_share"].items()} for m in MODELS}
    n = var["eval"].get("count")
    better = "lower" if fid["var"] < fid["ar"] else "higher"
    excess = {m: (fid[m] or 0.0) - (floor[m] or 0.0) for m in MODELS}
    gap, floor_gap = (fid["ar"] or 0.0) - (fid["var"] or 0.0), (floor["ar"] or 0.0) - (floor["var"] or 0.0)
    smp = var["speed"]["sampling"]
    filters = ", ".join(f"{k} {smp[k]:g}" if smp[k] else f"{k} off" for k in ("top_k", "top_p"))
    text = f"""# AR vs VAR at equal size and budget

Written by `{command}` on {results["date"]} ({results["device"]}, {var["speed"]["threads"]} threads); every
number is in `results.json`. The paper's comparison is Table 3, rows 1-2: a raster-order AR transformer at
18.65 FID against VAR-d16 at 5.22 with nothing else changed, at 0.013x the inference cost; the abstract's
"20x faster" is the same comparison at 256 px.

Both models use the same tokenizer (`{results["tokenizer"]}`), depth {var["facts"]["depth"]}, width
{var["facts"]["width"]}, optimiser, batch ({var["facts"]["global_batch"]}) and number of optimizer steps
({var["facts"]["steps"]} and {ar["facts"]["steps"]}); both sample with their checkpoint's settings
(cfg {smp["cfg"]:g}, {filters.replace("_", "-")}). FID and class accuracy: {n} class-balanced samples per model, scored
with the dataset classifier's features against the validation split (a domain FID, not Inception's; FIDs from
different feature extractors are not comparable).

{table(results, sb)}

![images per second against batch size](speed.png)

## What the numbers say

* **Quality.** VAR's FID is {better} than AR's ({_fmt(fid["var"], ".2f")} vs {_fmt(fid["ar"], ".2f")}, ratio
  AR / VAR {_fmt((fid["ar"] or 0) / max(fid["var"] or 1e-9, 1e-9), ".2f")}; the paper: 18.65 / 5.22 = 3.57) and its
  class accuracy {_fmt(acc["var"], ".3f")} vs {_fmt(acc["ar"], ".3f")}. The floors: real images scored the same
  way give FID {_fmt(real.get("fid"), ".2f")} (class accuracy {_fmt(real.get("class_acc"), ".3f")}); the tokenizer's
  reconstructions of {rec["count"]} test images give FID {_fmt(floor["var"], ".2f")} from VAR's
  {results["tokens"]["var"]}-token pyramid (MSE {rec["mse"]["multi_scale"]:.4f}) and {_fmt(floor["ar"], ".2f")} from
  the AR baseline's {results["tokens"]["ar"]}-token one-scale grid (MSE {rec["mse"]["one_scale"]:.4f}). No model
  can beat the reconstructions of its own tokens: VAR is {_fmt(excess["var"], ".2f")} FID above its floor, AR
  {_fmt(excess["ar"], ".2f")} above its own. Of the AR - VAR gap of {_fmt(gap, ".2f")} FID, {_fmt(floor_gap, ".2f")}
  is the difference of the two floors (the tokens) and {_fmt(gap - floor_gap, ".2f")} what remains above them (the
  models and the order). The paper's AR row has its own one-scale tokenizer (VQGAN); ours reuses the
  multi-scale tokenizer at one scale, whose shared codebook was trained for K-scale residuals.
* **Speed.** One sampling step is one forward pass over the new tokens with a KV cache: AR takes one per token
  ({steps["ar"]} here for an 8x8 grid, 256 at 256 px), VAR one per scale ({steps["var"]} here, 10 at 256 px),
  each over a whole scale at once. Measured VAR / AR images per second:
  {", ".join(f"{up[b]:.1f}x at B={b}" for b in up)}. The step ratio is {steps["ar"] / steps["var"]:.1f}x here
  (25.6x at 256 px; the paper measures ~20x on a GPU). {"Below" if up[b_lo] < steps["ar"] / steps["var"] else "Against"}
  it: VAR's steps carry more tokens
  ({results["tokens"]["var"]} in all against {results["tokens"]["ar"]}), and both pay the same tokenizer decode,
  {100 * dec["var"][b_lo]:.0f}% of VAR's time at B={b_lo} and {100 * dec["var"][b_hi]:.0f}% at B={b_hi} on this
  machine. On a GPU a small step is launch-bound, so at batch 1 the time follows the step count more closely.
* **Training compute.** At the same steps and batch, training FLOPs follow the tokens per image: VAR
  {_fmt(flops["var"], "sci")}, AR {_fmt(flops["ar"], "sci")} (the scaling package's FLOP model,
  `var_lightning.scaling.flops.ar_flops`).
* **Loss.** The last-scale losses are cross-entropies over different targets (VAR: the last scale's residual
  tokens given all coarser scales; AR: one-scale tokens given the previous ones in raster order), so they show
  each model's fit, not a like-for-like ranking.

## Reproduce

    make compare-ar                       # this table on CPU; re-running reuses finished steps (outputs/ar_vs_var)
    make compare-ar ARGS="+scale=paper"   # the GPU command lines of the paper-sized run (VAR-d16 vs AR-d16, ImageNet 256)

The study's code ships in the package so `var-compare-ar` runs from an installed wheel: the plan
`src/var_lightning/studies/ar_vs_var.py`, this report `src/var_lightning/studies/ar_vs_var_report.py`, its
config `conf/compare_ar.yaml`.
"""
    path = report_dir / "README.md"
    path.write_text(text)
    return path
