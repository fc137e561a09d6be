"""Independent units, paired differences and verdicts: the statistics every reported number uses.

Windows of one clip, and clips of one speaker, are not independent: they share a face, a voice
and (for windows) the same seconds of audio. So every interval here resamples **units**
(speakers: a clip's ``speaker_id``, or its source video when no speaker is known, see
``singer.data.dataset.clip_group``): item values are averaged into their clip, clips into their
unit, and the bootstrap draws units.

Comparisons are **paired**: two arms (front-ends, levels, baselines) are evaluated on the same
clips with the same noise, so their difference is taken unit by unit, and over training seeds
seed by seed. :func:`paired_difference` resamples seeds and units together (a two-stage
bootstrap), so an interval reflects both how much the answer depends on which speakers were
held out and how much on which seed trained the model. A difference is **resolved** only when
its interval excludes 0; otherwise it is a **tie**, reported as plainly as a win.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from singer.bootstrap import bootstrap_ci


def group_mean(values: Sequence[float], groups: Sequence[str]) -> dict[str, float]:
    """``{group: mean of its finite values}`` (NaN for a group with none), in first-seen order."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for value, group in zip(values, groups, strict=True):
        sums.setdefault(group, 0.0)
        counts.setdefault(group, 0)
        if value is not None and np.isfinite(value):
            sums[group] += float(value)
            counts[group] += 1
    return {g: sums[g] / counts[g] if counts[g] else float("nan") for g in sums}


def to_units(clip_values: Mapping[str, float], unit_of_clip: Mapping[str, str]) -> dict[str, float]:
    """Clip values ``{clip: v}`` → unit values ``{unit: mean over its clips}``."""
    clips = list(clip_values)
    return group_mean([clip_values[c] for c in clips], [unit_of_clip[c] for c in clips])


@dataclass(frozen=True)
class Interval:
    """An estimate with its bootstrap interval over ``n`` independent units."""

    estimate: float
    lo: float
    hi: float
    n: int
    unit: str = "speakers"

    @property
    def resolved(self) -> bool:
        """The interval excludes 0 (with at least 2 units behind it)."""
        return self.n >= 2 and np.isfinite(self.lo) and (self.lo > 0 or self.hi < 0)

    @property
    def verdict(self) -> str:
        if not np.isfinite(self.estimate):
            return "n/a"
        if not self.resolved:
            return "tie"
        return "resolved (+)" if self.estimate > 0 else "resolved (−)"

    def format(self, digits: int = 3) -> str:
        """``0.412 [0.301, 0.520] (n=8 speakers)``: every interval shows its unit count."""
        if not np.isfinite(self.estimate):
            return f"n/a (n={self.n} {self.unit})"
        if not np.isfinite(self.lo):
            return f"{self.estimate:.{digits}f} (n={self.n} {self.unit}: no interval)"
        return f"{self.estimate:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}] (n={self.n} {self.unit})"

    def to_dict(self) -> dict:
        def clean(x: float):
            return float(x) if np.isfinite(x) else None

        return {
            "estimate": clean(self.estimate),
            "ci": [clean(self.lo), clean(self.hi)],
            "n": self.n,
            "unit": self.unit,
            "verdict": self.verdict,
        }


def unit_interval(
    unit_values: Mapping[str, float],
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    unit: str = "speakers",
) -> Interval:
    """Mean over units with its percentile-bootstrap interval (units resampled)."""
    values = np.asarray([v for v in unit_values.values()], dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size < 2:
        estimate = float(values.mean()) if values.size else float("nan")
        return Interval(estimate, float("nan"), float("nan"), int(values.size), unit)
    estimate, lo, hi = bootstrap_ci(values, n=n_boot, alpha=alpha, seed=seed)
    return Interval(estimate, lo, hi, int(values.size), unit)


def paired_difference(
    a: Mapping[int, Mapping[str, float]],
    b: Mapping[int, Mapping[str, float]],
    *,
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    unit: str = "speakers",
) -> tuple[Interval, float]:
    """``a − b`` paired by training seed and unit: ``(interval, seed-to-seed SD of the mean)``.

    ``a`` and ``b`` are ``{training seed: {unit: value}}``. Only (seed, unit) cells present and
    finite in both count. The estimate is the mean over seeds of each seed's mean over units.
    The interval is a two-stage bootstrap: draw seeds with replacement, then units with
    replacement (the same units for every drawn seed, which keeps the pairing of arms on units),
    and take the mean of the differences. With one seed it reduces to a bootstrap over units.
    """
    seeds = sorted(set(a) & set(b))
    units = sorted({u for s in seeds for u in set(a[s]) & set(b[s])})
    diff = np.full((len(seeds), len(units)), np.nan)
    for i, s in enumerate(seeds):
        for j, u in enumerate(units):
            if u in a[s] and u in b[s]:
                diff[i, j] = float(a[s][u]) - float(b[s][u])
    usable = np.isfinite(diff).any(axis=0)
    diff = diff[:, usable]
    n_units = int(diff.shape[1])
    if not seeds or n_units == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, unit), float("nan")
    with np.errstate(invalid="ignore"), _quiet():
        per_seed = np.nanmean(diff, axis=1)
    estimate = float(np.nanmean(per_seed))
    spread = float(np.nanstd(per_seed, ddof=1)) if np.isfinite(per_seed).sum() > 1 else float("nan")
    if n_units < 2:
        return Interval(estimate, float("nan"), float("nan"), n_units, unit), spread
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    for k in range(n_boot):
        rows = rng.integers(0, len(seeds), len(seeds))
        cols = rng.integers(0, n_units, n_units)
        with _quiet():
            stats[k] = np.nanmean(np.nanmean(diff[np.ix_(rows, cols)], axis=1))
    stats = stats[np.isfinite(stats)]
    lo, hi = (
        np.quantile(stats, [alpha / 2.0, 1.0 - alpha / 2.0]) if stats.size else (np.nan, np.nan)
    )
    return Interval(
        estimate, float(min(lo, estimate)), float(max(hi, estimate)), n_units, unit
    ), spread


class _quiet:
    """Silence numpy's all-NaN-slice warnings inside a block (the NaNs are handled)."""

    def __enter__(self):
        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def derangement(groups: Sequence[str], seed: int = 0) -> list[int]:
    """A permutation ``p`` with ``groups[p[i]] != groups[i]`` for every ``i`` (fixed by ``seed``).

    The audio control gives item ``i`` the audio of item ``p[i]``: another clip, and another
    speaker wherever the data allow (with one group only, another item of it). Raises
    ``ValueError`` with fewer than 2 items.
    """
    n = len(groups)
    if n < 2:
        raise ValueError("an audio derangement needs at least 2 evaluation items")
    rng = np.random.default_rng(seed)
    distinct = len(set(groups)) > 1
    largest = max(list(groups).count(g) for g in set(groups))
    across = distinct and largest <= n - largest  # a cross-group derangement exists
    for _ in range(10_000):
        p = rng.permutation(n)
        if across and all(groups[p[i]] != groups[i] for i in range(n)):
            return [int(i) for i in p]
        if not across and all(p[i] != i for i in range(n)):
            return [int(i) for i in p]
    # Constructive fallback: shift within the order sorted by group (rarely needed).
    order = sorted(range(n), key=lambda i: groups[i])
    shift = largest if across else 1
    p = [0] * n
    for k, i in enumerate(order):
        p[i] = order[(k + shift) % n]
    return p
