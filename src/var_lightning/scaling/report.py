"""Scaling-law analysis of collected runs and its tables: CSV files, a Markdown report, a text summary.

``analyze`` fits the four paper metrics (L_last, L_avg, Err_last, Err_avg) against the parameter count
N over the runs' final values (Fig. 5) and against training compute over the Pareto frontier of all
validations (Fig. 6). A fit that cannot be made (too few runs with the metric, non-positive values) is
kept with its error instead of failing the report.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from var_lightning.scaling.collect import METRIC_NAMES, Collection, metric_key
from var_lightning.scaling.fit import PowerLawFit, fit_power_law, format_beta
from var_lightning.scaling.pareto import fit_frontier

METRIC_SYMBOLS = {
    "loss_last": "L_last",
    "loss_avg": "L_avg",
    "token_err_last": "Err_last",
    "token_err_avg": "Err_avg",
}
AGAINST_SYMBOLS = {"params": "N", "compute": "C_min"}


@dataclass
class ScalingFit:
    """A metric fitted against ``params`` (final values of the runs) or ``compute`` (Pareto frontier)."""

    metric: str
    against: str
    x: np.ndarray
    y: np.ndarray
    fit: PowerLawFit | None
    error: str | None = None

    @property
    def symbol(self) -> str:
        return METRIC_SYMBOLS.get(self.metric, self.metric)

    def describe(self) -> str:
        if self.fit is None:
            return f"{self.symbol} vs {AGAINST_SYMBOLS[self.against]}: no fit ({self.error})"
        return self.fit.describe(self.symbol, AGAINST_SYMBOLS[self.against])


@dataclass
class ScalingAnalysis:
    collection: Collection
    prefix: str
    vs_params: dict[str, ScalingFit] = field(default_factory=dict)
    vs_compute: dict[str, ScalingFit] = field(default_factory=dict)

    @property
    def fits(self) -> list[ScalingFit]:
        return [*self.vs_params.values(), *self.vs_compute.values()]


def analyze(
    collection: Collection, prefix: str = "val", metrics: Sequence[str] = METRIC_NAMES
) -> ScalingAnalysis:
    """Fit every metric against N (final values) and against compute (frontier of the histories)."""
    analysis = ScalingAnalysis(collection=collection, prefix=prefix)
    runs = collection.runs
    for metric in metrics:
        pairs = [(r.params, r.metric(metric, prefix)) for r in runs]
        pairs = [(n, v) for n, v in pairs if v is not None]
        x = np.asarray([p[0] for p in pairs], dtype=np.float64)
        y = np.asarray([p[1] for p in pairs], dtype=np.float64)
        try:
            fit, error = fit_power_law(x, y), None
        except ValueError as err:
            fit, error = None, f"{metric_key(metric, prefix)}: {err}"
        analysis.vs_params[metric] = ScalingFit(metric, "params", x, y, fit, error)

        curves = [r.curve(metric, prefix) for r in runs]
        try:
            front = fit_frontier(curves)
            analysis.vs_compute[metric] = ScalingFit(metric, "compute", front.compute, front.value, front.fit)
        except ValueError as err:
            empty = np.zeros(0)
            analysis.vs_compute[metric] = ScalingFit(
                metric, "compute", empty, empty, None, f"{metric_key(metric, prefix)}: {err}"
            )
    return analysis


# ---------------------------------------------------------------------------------------------- tables
def _fmt(value: float | int | None, kind: str = "g") -> str:
    if value is None:
        return "-"
    if kind == "params":
        return f"{value / 1e6:.1f}M"
    if kind == "sci":
        return f"{value:.3e}"
    return f"{value:.4g}"


def runs_rows(analysis: ScalingAnalysis) -> tuple[list[str], list[list]]:
    """Per run: name, depth, N, seed, FLOPs/image, images seen, compute, final metrics (raw values)."""
    header = [
        "name",
        "depth",
        "params",
        "seed",
        "flops_per_image",
        "images_seen",
        "compute",
        *METRIC_NAMES,
        "overrides",
    ]
    rows = []
    for r in analysis.collection.runs:
        metrics = [r.metric(m, analysis.prefix) for m in METRIC_NAMES]
        rows.append(
            [
                r.name,
                r.depth,
                r.params,
                r.seed,
                r.flops_per_image,
                r.images_seen,
                r.final_compute,
                *metrics,
                " ".join(r.overrides),
            ]
        )
    return header, rows


def fits_rows(analysis: ScalingAnalysis) -> tuple[list[str], list[list]]:
    """Per fit: metric, x (N or C), alpha, beta, r, points, equation, error (raw values)."""
    header = ["metric", "symbol", "x", "alpha", "beta", "r", "n", "equation", "error"]
    rows = []
    for f in analysis.fits:
        x_name = AGAINST_SYMBOLS[f.against]
        if f.fit is None:
            rows.append([f.metric, f.symbol, x_name, None, None, None, f.x.size, None, f.error])
        else:
            rows.append(
                [
                    f.metric,
                    f.symbol,
                    x_name,
                    f.fit.alpha,
                    f.fit.beta,
                    f.fit.r,
                    f.fit.n,
                    f.fit.equation(f.symbol, x_name),
                    None,
                ]
            )
    return header, rows


def _write_csv(path: str | os.PathLike, header: list[str], rows: list[list]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows([["" if v is None else v for v in row] for row in rows])
    return path


def write_runs_csv(analysis: ScalingAnalysis, path: str | os.PathLike) -> Path:
    return _write_csv(path, *runs_rows(analysis))


def write_fits_csv(analysis: ScalingAnalysis, path: str | os.PathLike) -> Path:
    return _write_csv(path, *fits_rows(analysis))


def _display_runs(analysis: ScalingAnalysis) -> tuple[list[str], list[list[str]]]:
    header = ["run", "depth", "N", "C (FLOPs)", *(METRIC_SYMBOLS[m] for m in METRIC_NAMES)]
    rows = [
        [r.name, str(r.depth), _fmt(r.params, "params"), _fmt(r.final_compute, "sci")]
        + [_fmt(r.metric(m, analysis.prefix)) for m in METRIC_NAMES]
        for r in analysis.collection.runs
    ]
    return header, rows


def _display_fits(analysis: ScalingAnalysis) -> tuple[list[str], list[list[str]]]:
    header = ["metric", "vs", "alpha", "beta", "r", "points", "fit"]
    rows = []
    for f in analysis.fits:
        x_name = AGAINST_SYMBOLS[f.against]
        if f.fit is None:
            rows.append([f.symbol, x_name, "-", "-", "-", str(f.x.size), f"no fit: {f.error}"])
        else:
            rows.append(
                [
                    f.symbol,
                    x_name,
                    f"{f.fit.alpha:.4g}",
                    format_beta(f.fit.beta),
                    f"{f.fit.r:.4f}",
                    str(f.fit.n),
                    f.describe(),
                ]
            )
    return header, rows


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(
        [fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*row) for row in rows]
    )


def _failed_lines(analysis: ScalingAnalysis, indent: str) -> list[str]:
    lines = []
    for job in analysis.collection.failed:
        lines.append(f"{indent}{job.name}: {job.reason}")
        lines += [f"{indent}    {line}" for line in job.log_tail]
    return lines


def markdown_report(analysis: ScalingAnalysis) -> str:
    """Runs, fits and failed jobs as Markdown."""
    c = analysis.collection
    parts = [
        "# VAR scaling laws",
        "",
        f"Sweep: `{c.root}`. Metric prefix: `{analysis.prefix}`. {len(c.runs)} completed run(s), {len(c.failed)} failed.",
        "Fits are `y = (beta * x)^alpha` by least squares in log-log space; r is the Pearson correlation of "
        "(log x, log y). N: parameters; C_min: training FLOPs on the Pareto frontier.",
        "",
        "## Runs",
        "",
        _markdown_table(*_display_runs(analysis)),
        "",
        "## Fits",
        "",
        _markdown_table(*_display_fits(analysis)),
        "",
    ]
    if c.failed:
        parts += ["## Failed jobs", "", "```", *_failed_lines(analysis, ""), "```", ""]
    return "\n".join(parts)


def text_summary(analysis: ScalingAnalysis) -> str:
    """Runs and fits as plain-text tables, then the failed jobs."""
    c = analysis.collection
    parts = [
        f"{len(c.runs)} completed run(s), {len(c.failed)} failed, in {c.root}",
        "",
        _text_table(*_display_runs(analysis)),
        "",
        _text_table(*_display_fits(analysis)),
    ]
    if c.failed:
        parts += ["", "Failed jobs:", *_failed_lines(analysis, "  ")]
    return "\n".join(parts)
