"""Percentile-bootstrap confidence intervals, used for every number the evaluator reports.

Resampling is over the independent units of a table (clips, seeds, cross-validation folds);
the caller decides which units those are and passes one value per unit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Statistic = Callable[[np.ndarray], float]


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    stat: Statistic = np.mean,
    n: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``(estimate, lo, hi)``: ``stat(values)`` and its ``1 − alpha`` percentile-bootstrap interval.

    ``values`` is a 1-D sequence with one value per independent unit. Non-finite values (a
    correlation of a constant cue, a fold whose target has no variance) are dropped first.
    No finite value gives ``(nan, nan, nan)``; a single one gives ``(v, v, v)``: one unit
    carries no information about spread, and the table should show that rather than invent it.
    The resamples are drawn from ``numpy.random.default_rng(seed)``, so the interval is
    reproducible.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if n < 1:
        raise ValueError(f"n must be >= 1 resamples, got {n}")
    data = np.asarray(values, dtype=np.float64).ravel()
    data = data[np.isfinite(data)]
    if data.size == 0:
        return float("nan"), float("nan"), float("nan")
    estimate = float(stat(data))
    if data.size == 1:
        return estimate, estimate, estimate
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, data.size, size=(n, data.size))
    resampled = data[picks]
    # np.mean & co. take axis=; an arbitrary callable is applied row by row.
    try:
        stats = np.asarray(stat(resampled, axis=1), dtype=np.float64)  # type: ignore[call-arg]
        if stats.shape != (n,):
            raise TypeError
    except TypeError:
        stats = np.array([stat(row) for row in resampled], dtype=np.float64)
    lo, hi = np.quantile(stats, [alpha / 2.0, 1.0 - alpha / 2.0])
    # The percentile interval of a skewed statistic may exclude the point estimate by a hair
    # of floating-point error; keep the reported triple ordered.
    return estimate, float(min(lo, estimate)), float(max(hi, estimate))
