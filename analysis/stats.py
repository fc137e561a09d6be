"""Aggregation over seeds (or runs) with percentile-bootstrap confidence intervals.

The interval itself is the evaluator's :func:`singer.bootstrap.bootstrap_ci`, so a
CI in a notebook means the same thing as a CI in ``eval/metrics.json``. Here the resampled
units are runs (usually the seeds of one configuration): with one run per group the interval
collapses to the point and ``n`` says so.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis.runs import require_columns
from singer.bootstrap import bootstrap_ci

AGG_COLUMNS = ("mean", "ci_lo", "ci_hi", "n")


def aggregate(
    frame: pd.DataFrame,
    by: Sequence[str],
    value: str = "value",
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per group of ``by``: ``mean`` of ``value``, its bootstrap ``ci_lo`` / ``ci_hi``
    and ``n`` (finite values). Groups keep their first-appearance order; missing keys in ``by``
    form their own group rather than vanishing."""
    by = list(by)
    require_columns(frame, [*by, value], "the frame to aggregate")
    rows = []
    if frame.empty:
        return pd.DataFrame(columns=[*by, *AGG_COLUMNS])
    for key, group in frame.groupby(by, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        values = pd.to_numeric(group[value], errors="coerce").to_numpy(dtype=np.float64)
        estimate, lo, hi = bootstrap_ci(values, n=n_boot, alpha=alpha, seed=seed)
        rows.append(
            {
                **dict(zip(by, key)),
                "mean": estimate,
                "ci_lo": lo,
                "ci_hi": hi,
                "n": int(np.isfinite(values).sum()),
            }
        )
    return pd.DataFrame(rows, columns=[*by, *AGG_COLUMNS])


def format_ci(mean: float, lo: float, hi: float, digits: int = 4) -> str:
    """``"0.123 [0.1, 0.15]"`` for tables; ``"–"`` for a missing value."""
    if not np.isfinite(mean):
        return "–"
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo == hi == mean:
        return f"{mean:.{digits}g}"
    return f"{mean:.{digits}g} [{lo:.{digits}g}, {hi:.{digits}g}]"
