"""Power-law fits ``y = (beta * x) ** alpha`` by least squares in log-log space (paper Eq. 9-10).

Taking logs gives the line ``log y = alpha * log x + alpha * log beta``: the slope is alpha, the
intercept is ``alpha * log beta``, and the Pearson correlation r of (log x, log y) measures how straight
the line is (the paper reports r near -0.998 for loss and token error rate against parameters N).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ArrayLike = Sequence[float] | np.ndarray


def _as_positive_1d(values: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has non-finite values ({arr[~np.isfinite(arr)][:3].tolist()} ...)")
    if np.any(arr <= 0):
        raise ValueError(
            f"{name} must be strictly positive for a power-law (log-log) fit; got {arr[arr <= 0][:3].tolist()}"
        )
    return arr


def format_beta(beta: float) -> str:
    """Scientific notation with two significant digits and a short exponent: 2.0e-5, 4.9e-2, 1.3e3."""
    mantissa, exponent = f"{beta:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


@dataclass(frozen=True)
class PowerLawFit:
    """``y = (beta * x) ** alpha`` fitted on ``n`` points; ``r`` is the Pearson r of (log x, log y)."""

    alpha: float
    beta: float
    r: float
    n: int

    def predict(self, x: ArrayLike | float) -> np.ndarray | float:
        """y at x (a float for a scalar x, an array otherwise)."""
        if np.isscalar(x):
            return float((self.beta * float(x)) ** self.alpha)
        return (self.beta * np.asarray(x, dtype=np.float64)) ** self.alpha

    def equation(self, y_name: str = "L", x_name: str = "X") -> str:
        """The paper's form, e.g. ``L = (2.0e-5 N)^-0.23``."""
        return f"{y_name} = ({format_beta(self.beta)} {x_name})^{self.alpha:.2g}"

    def describe(self, y_name: str = "L", x_name: str = "X") -> str:
        """Equation and correlation, e.g. ``L = (2.0e-5 N)^-0.23, r = -0.998``."""
        return f"{self.equation(y_name, x_name)}, r = {self.r:.3f}"

    def __str__(self) -> str:
        return self.describe()


def fit_power_law(x: ArrayLike, y: ArrayLike) -> PowerLawFit:
    """Least-squares fit of ``log y = alpha log x + alpha log beta``.

    x, y: positive, finite, same length, at least 2 points and at least 2 distinct x. Raises
    ``ValueError`` with the reason otherwise, and when y does not change with x (alpha = 0 leaves beta
    undefined).
    """
    x_arr, y_arr = _as_positive_1d(x, "x"), _as_positive_1d(y, "y")
    if x_arr.shape != y_arr.shape:
        raise ValueError(f"x and y differ in length: {x_arr.size} vs {y_arr.size}")
    if x_arr.size < 2:
        raise ValueError(f"a power-law fit needs at least 2 points, got {x_arr.size}")
    log_x, log_y = np.log(x_arr), np.log(y_arr)
    if np.ptp(log_x) == 0:
        raise ValueError(f"all x values are equal ({x_arr[0]:g}); a fit needs at least 2 distinct x")
    if np.ptp(log_y) == 0:
        raise ValueError(f"all y values are equal ({y_arr[0]:g}); alpha = 0 leaves beta undefined")
    slope, intercept = np.polyfit(log_x, log_y, deg=1)
    alpha = float(slope)
    if alpha == 0.0:
        raise ValueError("the fitted slope is exactly 0; alpha = 0 leaves beta undefined")
    log_beta = float(intercept) / alpha
    if abs(log_beta) > 700:
        raise ValueError(f"alpha = {alpha:.3g} is so close to 0 that beta = exp({log_beta:.3g}) overflows")
    beta = math.exp(log_beta)
    r = float(np.corrcoef(log_x, log_y)[0, 1])
    return PowerLawFit(alpha=alpha, beta=beta, r=r, n=int(x_arr.size))
