"""Vocal separation quality: SI-SDR of the driving audio against the clean voice.

SI-SDR (scale-invariant signal-to-distortion ratio, Le Roux et al. 2019) of an estimate ``ŝ``
of a reference ``s``, both with their means removed: with ``α = ⟨ŝ, s⟩ / ‖s‖²``,

    SI-SDR = 10·log10(‖α·s‖² / ‖α·s − ŝ‖²)   dB.

It ignores the estimate's gain, and counts everything else that differs from the voice (music
left in, voice removed, artefacts) as distortion. The mixture itself scores about its
voice-to-music ratio; a separator is judged by the *improvement*, its SI-SDR minus the
mixture's, on the same clip.

``si_sdr`` (per clip) reads ``EvalBatch.audio`` as the estimate and ``EvalBatch.vocals`` as the
reference; ``EvalBatch.mixture``, when given, adds the mixture's score and the improvement:

- ``separation/si_sdr``: SI-SDR of ``audio`` (dB);
- ``separation/si_sdr_mixture``: SI-SDR of ``mixture`` (dB);
- ``separation/si_sdr_improvement``: the difference, per clip.

Clips without a clean voice (every clip of a dataset without accompaniment) and silent
references are NaN. ``python -m singer.separation.measure`` fills the fields from SynthSing's
``vocals/`` files and reports the three keys with bootstrap CIs over clips.
"""

from __future__ import annotations

import torch

from singer.metrics.base import EvalBatch, Metric, nanmean
from singer.registry import METRICS
from singer.separation.base import si_sdr

KEYS = (
    "separation/si_sdr",
    "separation/si_sdr_mixture",
    "separation/si_sdr_improvement",
)


@METRICS.register("si_sdr")
class SISDR(Metric):
    """SI-SDR (dB) of the driving audio against the clean voice, and its gain over the mixture, per clip."""

    name = "si_sdr"
    reads_video = False  # describes the audio the model was driven by, not the video

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.values: dict[str, list[float]] = {key: [] for key in KEYS}

    def update(self, batch: EvalBatch) -> None:
        self.update_audio(batch.audio, batch.vocals, batch.mixture)

    def update_audio(
        self,
        estimate: torch.Tensor,
        vocals: torch.Tensor | None,
        mixture: torch.Tensor | None = None,
    ) -> None:
        """Add clips: ``estimate`` ``B×S``, their clean ``vocals`` and ``mixture`` (``B×S`` or None)."""
        estimate = torch.as_tensor(estimate).detach().double().cpu()
        estimate = estimate.reshape(estimate.shape[0], -1)
        count = estimate.shape[0]
        if vocals is None:
            for key in KEYS:
                self.values[key].extend([float("nan")] * count)
            return
        vocals = torch.as_tensor(vocals).detach().double().cpu().reshape(count, -1)
        scores = si_sdr(estimate, vocals).tolist()
        self.values[KEYS[0]].extend(scores)
        if mixture is None:
            base = [float("nan")] * count
        else:
            mixture = torch.as_tensor(mixture).detach().double().cpu().reshape(count, -1)
            base = si_sdr(mixture, vocals).tolist()
        self.values[KEYS[1]].extend(base)
        self.values[KEYS[2]].extend(s - b for s, b in zip(scores, base, strict=True))

    def compute(self) -> dict[str, float]:
        return {key: nanmean(values) for key, values in self.values.items()}

    def per_clip(self) -> dict[str, list[float]]:
        return {key: list(values) for key, values in self.values.items()}
