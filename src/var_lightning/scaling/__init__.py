"""Scaling-law studies (paper Sec. 5.2): power-law fits, Pareto frontiers, an analytic FLOP model of the
VAR transformer, collection of Hydra multirun results, plots and reports.

Plain library code (torch, numpy, matplotlib); the ``var-scaling`` command is ``var_lightning.cli.scaling``.
"""

from var_lightning.scaling.collect import (
    Collection,
    FailedJob,
    RunResult,
    collect,
    find_job_dirs,
    history_entry,
    write_results,
)
from var_lightning.scaling.fit import PowerLawFit, fit_power_law
from var_lightning.scaling.flops import (
    ar_flops,
    ar_num_params,
    num_params,
    paper_num_params,
    training_compute,
    var_flops,
)
from var_lightning.scaling.pareto import FrontierFit, fit_frontier, frontier_of_runs, pareto_frontier
from var_lightning.scaling.report import ScalingAnalysis, ScalingFit, analyze

__all__ = [
    "ar_flops",
    "ar_num_params",
    "Collection",
    "FailedJob",
    "FrontierFit",
    "PowerLawFit",
    "RunResult",
    "ScalingAnalysis",
    "ScalingFit",
    "analyze",
    "collect",
    "find_job_dirs",
    "fit_frontier",
    "fit_power_law",
    "frontier_of_runs",
    "history_entry",
    "num_params",
    "paper_num_params",
    "pareto_frontier",
    "training_compute",
    "var_flops",
    "write_results",
]
