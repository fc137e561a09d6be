"""The metric contract: every metric in ``METRICS`` accumulates with ``update()`` and reports
with ``compute()``, so the evaluator streams clips through any set of metrics by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def nanmean(values) -> float:
    """Mean of the finite values (NaN when there are none, without a warning)."""
    data = np.asarray(values, dtype=np.float64)
    data = data[np.isfinite(data)]
    return float(data.mean()) if data.size else float("nan")


@dataclass
class EvalBatch:
    """One batch of evaluated clips.

    generated:   B×3×F×H×W in [-1, 1], the model's output.
    reference:   B×3×F×H×W in [-1, 1], the ground-truth clip (None when there is none).
    audio:       B×S mono waveform at ``sample_rate`` that drove the generation.
    cues:        B×F×K ground-truth per-frame cues in ``singer.data.synth.CUES`` order (or None).
    has_cues:    B bool, whether ``cues`` is real for that clip (prepared real data has none).
    clip_ids:    B identifiers of the clips the items (windows) come from.
    starts:      B first frame of each item within its clip (orders a clip's windows).
    causes:      B×F×C SynthSing audio causes in ``singer.data.dataset.CAUSES`` order (or None).
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
    starts: list[int] | None = None
    causes: torch.Tensor | None = None
    vocals: torch.Tensor | None = None
    mixture: torch.Tensor | None = None


class Metric:
    """Base class. Subclasses register with ``@METRICS.register(name)``.

    ``compute()`` returns ``{metric_name: value}`` (one metric may report several keys, e.g.
    ``sync_c`` and ``sync_d``). ``per_clip()`` returns ``{metric_name: [value per item]}``, one
    value per evaluated item (a window of a clip) in the order seen, for metrics defined per
    item (SSIM, PSNR, cue errors); set-level metrics (FID, FVD) return ``{}``. The evaluator
    averages items into clips and clips into independent units (speakers) before it bootstraps.
    A metric for which a clip is more than the mean of its windows (a correlation over the
    clip's frames) also implements ``clip_values()``.
    """

    name: str = ""
    # False for metrics that describe only the driving audio (the band ablation skips them).
    reads_video: bool = True
    # True for metrics that score how the video follows the audio or its truth (motion, sync):
    # the evaluator also computes them on the audio controls (another clip's audio, silence).
    audio_driven: bool = False

    def reset(self) -> None:
        raise NotImplementedError

    def update(self, batch: EvalBatch) -> None:
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        raise NotImplementedError

    def per_clip(self) -> dict[str, list[float]]:
        return {}

    def clip_values(self) -> dict[str, dict[str, float]] | None:
        """``{key: {clip_id: value}}`` computed over all items of each clip, or None when a
        clip's value is simply the mean of its items' ``per_clip()`` values."""
        return None
