"""Log-log scaling plots in the style of the paper's Fig. 5 (metrics vs parameters) and Fig. 6 (metrics
vs training compute with the Pareto frontier).

Figures are drawn on matplotlib's Agg canvas without pyplot (no global backend or figure state), and
PNGs are saved without the "Software" metadata so the same data gives the same bytes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter

from var_lightning.scaling.collect import METRIC_NAMES
from var_lightning.scaling.report import AGAINST_SYMBOLS, ScalingAnalysis, ScalingFit

Y_LABELS = {
    "loss_last": "Test loss, last scale",
    "loss_avg": "Test loss, all scales",
    "token_err_last": "Token error rate, last scale",
    "token_err_avg": "Token error rate, all scales",
}
FIT_COLOR = "tab:red"


def _new_figure() -> Figure:
    fig = Figure(figsize=(11, 8.5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata={"Software": None})
    return path


def _draw_fit(ax: Axes, sf: ScalingFit, x_lo: float, x_hi: float) -> None:
    """Dashed fitted line over [x_lo, x_hi] with the equation and r as its legend label."""
    if sf.fit is None:
        ax.text(0.03, 0.05, f"no fit: {sf.error}", transform=ax.transAxes, fontsize=7, wrap=True)
        return
    xs = np.geomspace(x_lo, x_hi, 100)
    ax.plot(
        xs,
        sf.fit.predict(xs),
        "--",
        color=FIT_COLOR,
        lw=1.5,
        label=sf.fit.describe(sf.symbol, AGAINST_SYMBOLS[sf.against]),
    )


def _finish(ax: Axes, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))  # losses span < 1 decade: plain numbers
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%.3g"))
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper right")


def plot_vs_params(analysis: ScalingAnalysis, path: str | os.PathLike) -> Path:
    """Fig. 5: four panels (L_last, L_avg, Err_last, Err_avg vs N), run points and the power-law fit."""
    fig = _new_figure()
    axes = fig.subplots(2, 2)
    for letter, ax, metric in zip("abcd", axes.flat, METRIC_NAMES, strict=True):
        sf = analysis.vs_params[metric]
        if sf.x.size:
            ax.plot(sf.x, sf.y, "o", color="tab:blue", ms=6, label="runs")
            lo, hi = float(sf.x.min()), float(sf.x.max())
            _draw_fit(ax, sf, lo / 1.3, hi * 1.3)
        else:
            _draw_fit(ax, sf, 1.0, 1.0)
        _finish(ax, f"({letter}) {sf.symbol} vs N", "Model parameters N", Y_LABELS[metric])
    return _save(fig, path)


def plot_vs_compute(analysis: ScalingAnalysis, path: str | os.PathLike) -> Path:
    """Fig. 6: four panels of metric vs training compute, one curve per run coloured by model size,
    the Pareto frontier (red points) and its power-law fit (red dashes)."""
    fig = _new_figure()
    axes = fig.subplots(2, 2)
    runs = analysis.collection.runs
    params = np.asarray([r.params for r in runs], dtype=np.float64)
    log_n = np.log(params) if params.size else params
    span = float(np.ptp(log_n)) if params.size else 0.0
    cmap = colormaps["viridis"]
    for letter, ax, metric in zip("abcd", axes.flat, METRIC_NAMES, strict=True):
        for i, run in enumerate(runs):
            c, v = run.curve(metric, analysis.prefix)
            keep = (c > 0) & (v > 0)
            if not keep.any():
                continue
            shade = (log_n[i] - log_n.min()) / span if span > 0 else 0.5
            label = f"d{run.depth} ({run.params / 1e6:.1f}M)" if letter == "a" else None  # sizes once
            ax.plot(c[keep], v[keep], "-", color=cmap(0.85 * shade), lw=1.2, alpha=0.9, label=label)
        sf = analysis.vs_compute[metric]
        if sf.x.size:
            ax.plot(sf.x, sf.y, "o", color=FIT_COLOR, ms=3, label="Pareto frontier")
            _draw_fit(ax, sf, float(sf.x.min()), float(sf.x.max()))
        else:
            _draw_fit(ax, sf, 1.0, 1.0)
        _finish(ax, f"({letter}) {sf.symbol} vs C_min", "Training compute C (FLOPs)", Y_LABELS[metric])
    return _save(fig, path)
