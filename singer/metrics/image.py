"""Frame-wise fidelity to the reference clip: SSIM and PSNR.

Both use torchmetrics' functional implementations on frames mapped from [-1, 1] to [0, 1]
(clamped) with ``data_range=1``, RGB channels averaged as torchmetrics does:

``ssim``
    Gaussian-window SSIM (``sigma`` 1.5, 11×11 window, ``k1`` 0.01, ``k2`` 0.03; the settings of
    Wang et al. 2004), averaged over the window positions that lie inside the frame (5 px
    borders are left out, as in the reference code and in
    ``skimage.metrics.structural_similarity(gaussian_weights=True, use_sample_covariance=False)``,
    which it matches; torchmetrics' own average would also count the reflect-padded border),
    then over the RGB channels. A clip's value is the mean over its frames.
``psnr``
    ``10·log10(1 / MSE)`` in dB per frame, averaged over the clip's frames. A frame identical to
    its reference has an infinite PSNR; per-frame values are capped at ``max_db`` (100 dB) so
    that means stay finite.

``compute()`` is the mean over clips (every clip weighs the same, matching the per-clip values
the evaluator bootstraps); ``per_clip()`` gives one value per clip in the order seen. Clips of
a batch without a reference get NaN and are left out of the mean.
"""

from __future__ import annotations

import torch

from singer.metrics.base import EvalBatch, Metric, nanmean
from singer.registry import METRICS


def _frames01(video: torch.Tensor) -> torch.Tensor:
    """``B×3×F×H×W`` in [-1, 1] → ``B·F×3×H×W`` float32 in [0, 1]."""
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(f"video must be B×3×F×H×W, got shape {tuple(video.shape)}")
    frames = video.detach().float().permute(0, 2, 1, 3, 4).reshape(-1, 3, *video.shape[-2:])
    return ((frames + 1.0) / 2.0).clamp(0.0, 1.0)


class _FrameMetric(Metric):
    """Per-frame score against the reference, averaged per clip, then over clips."""

    name = ""

    def reset(self) -> None:
        self.values: list[float] = []

    def frame_scores(self, generated: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def update(self, batch: EvalBatch) -> None:
        clips, frames = batch.generated.shape[0], batch.generated.shape[2]
        if batch.reference is None:
            self.values.extend([float("nan")] * clips)
            return
        if batch.reference.shape != batch.generated.shape:
            raise ValueError(
                f"{self.name}: generated {tuple(batch.generated.shape)} and reference "
                f"{tuple(batch.reference.shape)} differ in shape"
            )
        scores = self.frame_scores(
            _frames01(batch.generated), _frames01(batch.reference).to(batch.generated.device)
        )
        per_clip = scores.detach().double().cpu().reshape(clips, frames).mean(dim=1)
        self.values.extend(float(v) for v in per_clip)

    def compute(self) -> dict[str, float]:
        return {self.name: nanmean(self.values)}

    def per_clip(self) -> dict[str, list[float]]:
        return {self.name: list(self.values)}


@METRICS.register("ssim")
class SSIM(_FrameMetric):
    """SSIM to the reference frames (torchmetrics, Gaussian window), mean per clip."""

    name = "ssim"

    def __init__(self, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03):
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.sigma, self.k1, self.k2 = float(sigma), float(k1), float(k2)
        # torchmetrics' (and scikit-image's) Gaussian window: truncated at 3.5 sigma, 11 px for sigma 1.5
        self.pad = int(3.5 * self.sigma + 0.5)
        self.window = 2 * self.pad + 1
        self.reset()

    def frame_scores(self, generated: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        # lazy: start-up: torchmetrics takes seconds, which importing the metrics does without
        from torchmetrics.functional.image import structural_similarity_index_measure

        if min(generated.shape[-2:]) < self.window:
            raise ValueError(
                f"ssim needs frames of at least {self.window} px, got {tuple(generated.shape[-2:])}"
            )
        _, full = structural_similarity_index_measure(
            generated.double(),
            reference.double(),
            gaussian_kernel=True,
            sigma=self.sigma,
            kernel_size=self.window,
            reduction="none",
            data_range=1.0,
            k1=self.k1,
            k2=self.k2,
            return_full_image=True,
        )
        # torchmetrics' own mean also counts border pixels whose window reaches into its reflect
        # padding; keep only windows that lie inside the frame (Wang et al.'s code, scikit-image).
        if self.pad > 0:
            full = full[..., self.pad : -self.pad, self.pad : -self.pad]
        return full.reshape(full.shape[0], -1).mean(dim=1)


@METRICS.register("psnr")
class PSNR(_FrameMetric):
    """PSNR (dB) to the reference frames (torchmetrics, data range 1), mean per clip."""

    name = "psnr"

    def __init__(self, max_db: float = 100.0):
        if not max_db > 0:
            raise ValueError(f"max_db must be > 0, got {max_db}")
        self.max_db = float(max_db)
        self.reset()

    def frame_scores(self, generated: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        # lazy: start-up: torchmetrics takes seconds (see SSIM)
        from torchmetrics.functional.image import peak_signal_noise_ratio

        # In float64, so that frames that differ by tiny amounts still get exact values.
        scores = peak_signal_noise_ratio(
            generated.double(), reference.double(), data_range=1.0, reduction="none", dim=(1, 2, 3)
        )
        return torch.nan_to_num(scores, nan=self.max_db, posinf=self.max_db).clamp(max=self.max_db)
