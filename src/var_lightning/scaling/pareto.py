"""Pareto frontier of (training compute, metric) points over runs (paper Fig. 6) and its power-law fit.

Every validation of every run gives a point (C, L). The frontier is the best value reached with at most a
given compute, ``L_min(C) = min {L_i : C_i <= C}``; its corner points are the points that lower that
minimum. Fitting those corners gives the paper's ``L = (beta * C_min) ** alpha``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from var_lightning.scaling.fit import ArrayLike, PowerLawFit, fit_power_law


def pareto_frontier(compute: ArrayLike, value: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Corner points of the lower-left frontier: compute strictly increasing, value strictly decreasing.

    Points that cannot sit on log-log axes (non-finite, compute <= 0 or value <= 0, e.g. the step-0
    validation at zero compute) are dropped. Among points with equal compute only the lowest value counts.
    """
    c = np.asarray(compute, dtype=np.float64).reshape(-1)
    v = np.asarray(value, dtype=np.float64).reshape(-1)
    if c.shape != v.shape:
        raise ValueError(f"compute and value differ in length: {c.size} vs {v.size}")
    keep = np.isfinite(c) & np.isfinite(v) & (c > 0) & (v > 0)
    c, v = c[keep], v[keep]
    order = np.lexsort((v, c))  # by compute, then value
    front_c, front_v, best = [], [], np.inf
    for i in order:
        if v[i] < best:
            best = v[i]
            front_c.append(c[i])
            front_v.append(v[i])
    return np.asarray(front_c, dtype=np.float64), np.asarray(front_v, dtype=np.float64)


def frontier_of_runs(curves: Iterable[tuple[ArrayLike, ArrayLike]]) -> tuple[np.ndarray, np.ndarray]:
    """Frontier over several runs' (compute, value) curves pooled together."""
    cs, vs = [], []
    for c, v in curves:
        cs.append(np.asarray(c, dtype=np.float64).reshape(-1))
        vs.append(np.asarray(v, dtype=np.float64).reshape(-1))
    if not cs:
        return np.zeros(0), np.zeros(0)
    return pareto_frontier(np.concatenate(cs), np.concatenate(vs))


@dataclass(frozen=True)
class FrontierFit:
    """The frontier's corner points and the power law through them."""

    compute: np.ndarray
    value: np.ndarray
    fit: PowerLawFit


def fit_frontier(curves: Iterable[tuple[ArrayLike, ArrayLike]]) -> FrontierFit:
    """Build the frontier of the runs' curves and fit ``value = (beta * C) ** alpha`` to it.

    Raises ``ValueError`` when the frontier has fewer than 2 points.
    """
    c, v = frontier_of_runs(curves)
    if c.size < 2:
        raise ValueError(f"the Pareto frontier has {c.size} point(s) with positive compute; a fit needs 2")
    return FrontierFit(compute=c, value=v, fit=fit_power_law(c, v))
