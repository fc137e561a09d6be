"""Fréchet metrics: FID on frames and FVD on clips, with real or offline feature networks.

Each metric streams the generated and the reference videos of every ``EvalBatch`` through a
feature network (``singer.metrics.features``), accumulates the mean and covariance of both
sets in float64 (``singer.metrics.frechet.RunningStats``) and reports the Fréchet distance
between the two Gaussians. They are set-level metrics: ``per_clip()`` is empty, and the
evaluator's confidence interval comes from repeating the evaluation over seeds.

Metrics (name = key in ``compute()``; arguments come from ``protocol.metric_kwargs.<name>``):

- ``fid``: feature net ``inception_v3``; ``weights`` (a local torchvision Inception-v3 state
  dict), ``sha256``, ``size`` (299), ``frame_stride``, ``device``.
- ``fvd``: feature net ``i3d``; ``weights`` (a local I3D RGB state dict), ``sha256``, ``size``
  (224), ``feature_layer`` (``logits`` | ``pool``), ``device``.
- ``fid_offline``: feature net ``offline_frame``; ``frame_stride``.
- ``fvd_offline``: feature net ``offline_clip``.
- ``frechet``: any registered feature net, ``features=<name>`` plus that net's arguments;
  reported as ``frechet/<features>``.

All take ``method`` (``auto`` | ``sqrtm`` | ``eigh`` | ``lowrank``, see ``frechet.py``; ``auto``
uses the exact low-rank route while a set is smaller than the feature dimension, ``sqrtm``
beyond), ``eps`` (the ``sqrtm`` offset) and ``batch_size``.
``fid``/``fvd`` need their weight file when they are built: without it they raise
``singer.weights.MissingWeightsError`` naming the protocol key to set, e.g.
``--set metric_kwargs.fid.weights=/path/inception_v3.pt``. ``fid_offline``/``fvd_offline`` need
nothing and are deterministic, but their values are on their own scale: never compare them with
published FID/FVD numbers.

FID pools every frame (every ``frame_stride``-th) of every clip into one set, FVD one feature
per clip. With fewer samples than feature dimensions (e.g. 8 clips for FVD) the covariances
are singular; the distance stays finite (see ``frechet.py``) but is biased upwards, so compare
values only at equal set sizes (a fixed evaluation protocol). Batches without a reference
video add to the generated set only; with no reference at all the value is NaN.
"""

from __future__ import annotations

import inspect

from singer.metrics.base import EvalBatch, Metric
from singer.metrics.features import FEATURE_NETS, build_feature_net
from singer.metrics.frechet import METHODS, RunningStats, frechet_from_stats
from singer.registry import METRICS


class FrechetMetric(Metric):
    """Fréchet distance between feature statistics of generated and reference videos."""

    name = "frechet"

    def __init__(
        self,
        features: str,
        *,
        key: str | None = None,
        frame_stride: int = 1,
        method: str = "auto",
        eps: float = 1e-6,
        **net_kwargs,
    ):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if int(frame_stride) < 1:
            raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
        self.features = features
        self.key = key or self.name
        self.net = build_feature_net(features, **net_kwargs)
        self.frame_stride = int(frame_stride)
        self.method = method
        self.eps = float(eps)
        self.reset()

    def reset(self) -> None:
        self.generated = RunningStats(self.net.dim or None)
        self.reference = RunningStats(self.net.dim or None)

    def update(self, batch: EvalBatch) -> None:
        self.generated.update(self.net.extract(batch.generated, self.frame_stride))
        if batch.reference is not None:
            self.reference.update(self.net.extract(batch.reference, self.frame_stride))

    def compute(self) -> dict[str, float]:
        return {
            self.key: frechet_from_stats(
                self.generated, self.reference, method=self.method, eps=self.eps
            )
        }

    def per_clip(self) -> dict[str, list[float]]:
        return {}


@METRICS.register("fid")
class FID(FrechetMetric):
    """FID: Fréchet distance of Inception-v3 pool features of frames (local weights, sha256)."""

    name = "fid"

    def __init__(
        self,
        weights: str | None = None,
        sha256: str | None = None,
        *,
        size: int = 299,
        frame_stride: int = 1,
        device: str = "auto",
        batch_size: int = 32,
        method: str = "auto",
        eps: float = 1e-6,
    ):
        super().__init__(
            "inception_v3",
            frame_stride=frame_stride,
            method=method,
            eps=eps,
            weights=weights,
            sha256=sha256,
            size=size,
            device=device,
            batch_size=batch_size,
            config_key="metric_kwargs.fid.weights",
            sha256_key="metric_kwargs.fid.sha256",
        )


@METRICS.register("fvd")
class FVD(FrechetMetric):
    """FVD: Fréchet distance of I3D features of clips (local weights, sha256)."""

    name = "fvd"

    def __init__(
        self,
        weights: str | None = None,
        sha256: str | None = None,
        *,
        size: int = 224,
        feature_layer: str = "logits",
        device: str = "auto",
        batch_size: int = 4,
        method: str = "auto",
        eps: float = 1e-6,
    ):
        super().__init__(
            "i3d",
            method=method,
            eps=eps,
            weights=weights,
            sha256=sha256,
            size=size,
            feature_layer=feature_layer,
            device=device,
            batch_size=batch_size,
            config_key="metric_kwargs.fvd.weights",
            sha256_key="metric_kwargs.fvd.sha256",
        )


@METRICS.register("fid_offline")
class FIDOffline(FrechetMetric):
    """Frame Fréchet distance on hand-designed offline features (no weights; not paper FID)."""

    name = "fid_offline"

    def __init__(
        self,
        *,
        frame_stride: int = 1,
        batch_size: int = 256,
        method: str = "auto",
        eps: float = 1e-6,
    ):
        super().__init__(
            "offline_frame",
            frame_stride=frame_stride,
            method=method,
            eps=eps,
            batch_size=batch_size,
        )


@METRICS.register("fvd_offline")
class FVDOffline(FrechetMetric):
    """Clip Fréchet distance on hand-designed offline features with temporal statistics (not paper FVD)."""

    name = "fvd_offline"

    def __init__(self, *, batch_size: int = 16, method: str = "auto", eps: float = 1e-6):
        super().__init__("offline_clip", method=method, eps=eps, batch_size=batch_size)


@METRICS.register("frechet")
class GenericFrechet(FrechetMetric):
    """Fréchet distance on any registered feature net (``features=...``), reported as ``frechet/<features>``."""

    name = "frechet"

    def __init__(self, features: str = "offline_frame", **kwargs):
        accepted = (
            inspect.signature(FEATURE_NETS[features]).parameters if features in FEATURE_NETS else {}
        )
        if "config_key" in accepted:  # errors about weight files name this metric's keys
            kwargs.setdefault("config_key", "metric_kwargs.frechet.weights")
            kwargs.setdefault("sha256_key", "metric_kwargs.frechet.sha256")
        super().__init__(features, key=f"frechet/{features}", **kwargs)
