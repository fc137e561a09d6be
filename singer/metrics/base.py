"""The metric contract: every metric in ``METRICS`` accumulates with ``update()`` and reports
with ``compute()``, so the evaluator streams clips through any set of metrics by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class EvalBatch:
    """One batch of evaluated clips.

    generated:   B×3×F×H×W in [-1, 1], the model's output.
    reference:   B×3×F×H×W in [-1, 1], the ground-truth clip (None when there is none).
    audio:       B×S mono waveform at ``sample_rate`` that drove the generation.
    cues:        B×F×K ground-truth per-frame cues in ``singer.data.synth.CUES`` order (or None).
    has_cues:    B bool, whether ``cues`` is real for that clip (prepared real data has none).
    clip_ids:    B identifiers, for per-clip reports.
    vocals:      B×S clean voice of ``audio`` when it is known (SynthSing with accompaniment), else None.
    mixture:     B×S soundtrack before vocal separation (``audio`` is then the separator's output), or None.
    """

    generated: torch.Tensor
    reference: torch.Tensor | None
    audio: torch.Tensor
    sample_rate: int
    fps: float
    cues: torch.Tensor | None = None
    has_cues: torch.Tensor | None = None
    clip_ids: list[str] | None = None
    vocals: torch.Tensor | None = None
    mixture: torch.Tensor | None = None


class Metric:
    """Base class. Subclasses register with ``@METRICS.register(name)``.

    ``compute()`` returns ``{metric_name: value}`` (one metric may report several keys, e.g.
    ``sync_c`` and ``sync_d``). ``per_clip()`` returns ``{metric_name: [value per clip]}`` for
    metrics defined per clip (SSIM, PSNR, cue errors), which the evaluator bootstraps for
    confidence intervals; set-level metrics (FID, FVD) return ``{}``.
    """

    name: str = ""
    # False for metrics that describe only the driving audio (the band ablation skips them).
    reads_video: bool = True

    def reset(self) -> None:
        raise NotImplementedError

    def update(self, batch: EvalBatch) -> None:
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        raise NotImplementedError

    def per_clip(self) -> dict[str, list[float]]:
        return {}
