"""Fréchet distance between Gaussians fitted to two feature sets, and its running statistics.

The Fréchet (2-Wasserstein) distance between ``N(mu1, S1)`` and ``N(mu2, S2)`` is

    d² = ||mu1 − mu2||² + tr(S1) + tr(S2) − 2·tr((S1·S2)^½)

and is what FID (Inception features of frames) and FVD (I3D features of clips) report. All
arithmetic here is float64 on the CPU, so the value depends only on the features.

``tr((S1·S2)^½)`` is computed in one of two ways (``method``):

- ``"sqrtm"`` (default; what the common FID tools do): ``scipy.linalg.sqrtm(S1 @ S2)``. With
  fewer samples than feature dimensions both covariances are singular; if the square root comes
  back non-finite, it is recomputed on ``(S1 + eps·I)(S2 + eps·I)`` (the usual offset, ``eps``
  = 1e-6 by default). The product of two PSD matrices has real, non-negative eigenvalues, so the
  square root is real in exact arithmetic: round-off imaginary parts are dropped when they are
  small (|imag| ≤ ``imag_tol``·max(1, |diag|)); larger ones mean the numerics broke down, and
  the eigenvalue route below is used instead, with a warning.
- ``"eigh"``: ``S1·S2`` is similar to the symmetric PSD ``R·S2·R`` with ``R = S1^½`` (from a
  symmetric eigendecomposition, negative round-off eigenvalues clipped to 0), so the trace is
  the sum of the square roots of that matrix's eigenvalues. Exact for singular covariances
  (no offset needed), real by construction, and several times faster for 2048-d features.

- ``"lowrank"``: with centred samples ``A`` (n1×D) and ``B`` (n2×D), ``S1·S2`` has the same
  non-zero eigenvalues as ``M·Mᵀ`` with ``M = A·Bᵀ / √((n1−1)(n2−1))``, so the trace is the sum
  of the singular values of the small n1×n2 matrix ``M``. Exact, and far cheaper when the sets
  are smaller than the feature dimension (a tiny evaluation with 2048-d Inception features),
  but it needs the samples themselves.
- ``"auto"`` (what the metrics use): ``"lowrank"`` when both sets kept their samples (see
  :class:`RunningStats`: it keeps them while they are fewer than the feature dimensions),
  ``"sqrtm"`` otherwise.

They agree to round-off on well-conditioned inputs (see ``tests/test_metrics.py``).

:class:`RunningStats` accumulates the mean and covariance of features batch by batch (Chan et
al.'s pairwise update of the mean and the scatter matrix), so a whole evaluation set never sits
in memory and the result does not depend on how it was batched (up to round-off).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg

METHODS = ("auto", "sqrtm", "eigh", "lowrank")


def _as_stats(mu, sigma) -> tuple[np.ndarray, np.ndarray]:
    mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
    sigma = np.atleast_2d(np.asarray(sigma, dtype=np.float64))
    if mu.ndim != 1 or sigma.shape != (mu.size, mu.size):
        raise ValueError(
            f"need a D mean and a D×D covariance, got shapes {mu.shape} and {sigma.shape}"
        )
    return mu, sigma


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a (numerically) PSD matrix; negative eigenvalues clipped to 0."""
    values, vectors = np.linalg.eigh((sigma + sigma.T) / 2.0)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def trace_sqrt_product_eigh(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``tr((S1·S2)^½)`` through the eigenvalues of ``S1^½·S2·S1^½`` (see the module docstring)."""
    root = _psd_sqrt(np.asarray(sigma1, dtype=np.float64))
    middle = root @ np.asarray(sigma2, dtype=np.float64) @ root
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2.0)
    return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())


def trace_sqrt_product_sqrtm(
    sigma1: np.ndarray, sigma2: np.ndarray, *, eps: float = 1e-6, imag_tol: float = 1e-3
) -> float:
    """``tr((S1·S2)^½)`` with ``scipy.linalg.sqrtm`` (see the module docstring for the fallbacks)."""
    sigma1 = np.asarray(sigma1, dtype=np.float64)
    sigma2 = np.asarray(sigma2, dtype=np.float64)
    with warnings.catch_warnings():  # scipy warns on singular input; the checks below decide
        warnings.simplefilter("ignore")
        root = linalg.sqrtm(sigma1 @ sigma2)
        if not np.all(np.isfinite(root)):
            offset = np.eye(sigma1.shape[0]) * eps
            root = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if not np.all(np.isfinite(root)):
        warnings.warn(
            "sqrtm of the covariance product is not finite; using the eigenvalue route",
            stacklevel=3,
        )
        return trace_sqrt_product_eigh(sigma1, sigma2)
    if np.iscomplexobj(root):
        diagonal = np.diagonal(root)
        scale = max(1.0, float(np.abs(diagonal.real).max(initial=0.0)))
        if float(np.abs(diagonal.imag).max(initial=0.0)) > imag_tol * scale:
            warnings.warn(
                f"sqrtm of the covariance product has imaginary parts up to {np.abs(diagonal.imag).max():.3g}; "
                "using the eigenvalue route",
                stacklevel=3,
            )
            return trace_sqrt_product_eigh(sigma1, sigma2)
        root = root.real
    return float(np.trace(root))


def frechet_distance(
    mu1, sigma1, mu2, sigma2, *, method: str = "sqrtm", eps: float = 1e-6
) -> float:
    """Squared Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` (float64).

    ``method`` is ``"sqrtm"`` or ``"eigh"`` (module docstring; ``"auto"`` means ``"sqrtm"``
    here, as there are no samples). Tiny negative results from round-off (identical sets) are
    clipped to 0, so the value is always finite and ≥ 0 for finite inputs.
    """
    if method == "auto":
        method = "sqrtm"
    if method not in ("sqrtm", "eigh"):
        raise ValueError(
            f"method must be 'sqrtm' or 'eigh' for a distance between statistics, got {method!r}"
        )
    mu1, sigma1 = _as_stats(mu1, sigma1)
    mu2, sigma2 = _as_stats(mu2, sigma2)
    if mu1.shape != mu2.shape:
        raise ValueError(f"feature dimensions differ: {mu1.size} vs {mu2.size}")
    diff = mu1 - mu2
    if method == "eigh":
        cross = trace_sqrt_product_eigh(sigma1, sigma2)
    else:
        cross = trace_sqrt_product_sqrtm(sigma1, sigma2, eps=eps)
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * cross)
    return max(value, 0.0)


def frechet_distance_from_samples(x, y) -> float:
    """Squared Fréchet distance between the Gaussians fitted to samples ``x`` (n1×D) and ``y``
    (n2×D), through the ``"lowrank"`` route (exact; both sets need ≥ 2 samples)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(
            f"need two N×D sample sets with the same D, got shapes {x.shape} and {y.shape}"
        )
    n1, n2 = len(x), len(y)
    if n1 < 2 or n2 < 2:
        raise ValueError(f"each set needs at least 2 samples, got {n1} and {n2}")
    a, b = x - x.mean(axis=0), y - y.mean(axis=0)
    diff = x.mean(axis=0) - y.mean(axis=0)
    trace1 = float((a * a).sum()) / (n1 - 1)
    trace2 = float((b * b).sum()) / (n2 - 1)
    cross = float(np.linalg.svd(a @ b.T, compute_uv=False).sum()) / np.sqrt((n1 - 1) * (n2 - 1))
    return max(float(diff @ diff + trace1 + trace2 - 2.0 * cross), 0.0)


class RunningStats:
    """Streaming mean and covariance of D-dimensional features, in float64.

    ``update(x)`` takes ``N×D`` features (numpy or torch); ``mean`` and ``cov`` (unbiased,
    ``N − 1`` in the denominator) are available once at least one (two, for ``cov``) rows were
    seen.

    While fewer than ``D`` rows have been seen, the rows themselves are kept (``samples``; at
    most D×D numbers, the size of a covariance) and the statistics are computed from them on
    demand, so small sets can use the exact and cheap ``"lowrank"`` distance without ever
    forming a D×D matrix. From ``D`` rows on, the rows are folded into a running mean and
    scatter matrix, merged batch by batch with the pairwise update of Chan, Golub & LeVeque
    (which keeps the scatter centred and so avoids the cancellation of a raw sum of outer
    products), and ``samples`` is None.
    """

    def __init__(self, dim: int | None = None):
        self.dim = dim
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self._rows: list[np.ndarray] | None = []
        self._mean: np.ndarray | None = None
        self._scatter: np.ndarray | None = None

    @property
    def samples(self) -> np.ndarray | None:
        """The rows seen so far (``count×D``), or None once ``D`` or more were seen."""
        if self._rows is None:
            return None
        return np.concatenate(self._rows) if self._rows else np.zeros((0, self.dim or 0))

    def update(self, features) -> None:
        if hasattr(features, "detach"):
            features = features.detach().cpu().double().numpy()
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"features must be N×D, got shape {x.shape}")
        if x.shape[0] == 0:
            return
        if self.dim is None:
            self.dim = x.shape[1]
        if x.shape[1] != self.dim:
            raise ValueError(f"features have {x.shape[1]} dimensions, expected {self.dim}")
        if not np.all(np.isfinite(x)):
            raise ValueError("features contain NaN or inf")
        if self._rows is not None:
            if self.count + len(x) < self.dim:
                self._rows.append(x.copy())
                self.count += len(x)
                return
            x = np.concatenate([*self._rows, x])  # switch to running statistics
            self._rows, self.count = None, 0
            self._mean, self._scatter = np.zeros(self.dim), np.zeros((self.dim, self.dim))
        n = x.shape[0]
        batch_mean = x.mean(axis=0)
        centred = x - batch_mean
        total = self.count + n
        delta = batch_mean - self._mean
        self._scatter += centred.T @ centred
        self._scatter += np.outer(delta, delta) * (self.count * n / total)
        self._mean += delta * (n / total)
        self.count = total

    @property
    def mean(self) -> np.ndarray:
        if self.count < 1:
            raise ValueError("no features were accumulated")
        if self._rows is not None:
            return self.samples.mean(axis=0)
        return self._mean.copy()

    @property
    def cov(self) -> np.ndarray:
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 samples, got {self.count}")
        if self._rows is not None:
            return np.atleast_2d(np.cov(self.samples, rowvar=False))
        return self._scatter / (self.count - 1)


def frechet_from_stats(
    a: RunningStats, b: RunningStats, *, method: str = "auto", eps: float = 1e-6
) -> float:
    """Fréchet distance between two accumulated feature sets; NaN when either has < 2 samples.

    ``method="auto"`` takes the ``"lowrank"`` route when both sets still hold their samples and
    ``"sqrtm"`` otherwise; ``"lowrank"`` without samples is an error.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if a.count < 2 or b.count < 2:
        return float("nan")
    samples_a, samples_b = a.samples, b.samples
    have_samples = samples_a is not None and samples_b is not None
    if method == "lowrank" or (method == "auto" and have_samples):
        if not have_samples:
            raise ValueError(
                "method='lowrank' needs the samples, which are dropped once a set has >= D of them"
            )
        return frechet_distance_from_samples(samples_a, samples_b)
    return frechet_distance(a.mean, a.cov, b.mean, b.cov, method=method, eps=eps)
