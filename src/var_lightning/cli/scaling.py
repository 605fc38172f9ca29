"""``var-scaling MULTIRUN_DIR``: fit the paper's scaling laws (Sec. 5.2) to a sweep of VAR trainings.

Collects every job under MULTIRUN_DIR (see ``var_lightning.scaling.collect`` for the ``results.json``
contract), fits L_last, L_avg, Err_last, Err_avg against parameters N and against training compute on the
Pareto frontier, and writes to ``--out`` (default ``MULTIRUN_DIR/scaling``): ``scaling_fits.csv``,
``scaling_runs.csv``, ``scaling.md``, ``scaling_vs_params.png`` and ``scaling_vs_compute.png``.
Failed or crashed jobs are listed and skipped. Exit code 0 with at least 2 completed runs, else 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from var_lightning.scaling.collect import collect
from var_lightning.scaling.plots import plot_vs_compute, plot_vs_params
from var_lightning.scaling.report import (
    analyze,
    markdown_report,
    text_summary,
    write_fits_csv,
    write_runs_csv,
)

MIN_RUNS = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="var-scaling",
        description="Fit VAR scaling laws (loss and token error vs parameters and compute) to a Hydra multirun.",
    )
    parser.add_argument(
        "multirun_dir", type=Path, help="Hydra multirun/sweep directory (or any tree above job dirs)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="output directory (default: MULTIRUN_DIR/scaling)"
    )
    parser.add_argument(
        "--metric-prefix",
        default="val",
        help="metric key prefix in results.json, e.g. val -> val/loss_avg (default: val)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    root: Path = args.multirun_dir
    if not root.is_dir():
        print(f"var-scaling: error: {root} is not a directory", file=sys.stderr)
        return 1
    collection = collect(root)
    analysis = analyze(collection, prefix=args.metric_prefix)
    print(text_summary(analysis))
    if len(collection.runs) < MIN_RUNS:
        print(
            f"var-scaling: error: {len(collection.runs)} completed run(s) under {root}, a scaling fit needs at least "
            f"{MIN_RUNS} (failed or crashed jobs: {len(collection.failed)}, listed above)",
            file=sys.stderr,
        )
        return 1
    out: Path = args.out if args.out is not None else root / "scaling"
    out.mkdir(parents=True, exist_ok=True)
    written = [
        write_fits_csv(analysis, out / "scaling_fits.csv"),
        write_runs_csv(analysis, out / "scaling_runs.csv"),
        plot_vs_params(analysis, out / "scaling_vs_params.png"),
        plot_vs_compute(analysis, out / "scaling_vs_compute.png"),
    ]
    md = out / "scaling.md"
    md.write_text(markdown_report(analysis))
    written.append(md)
    print("\nwrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
