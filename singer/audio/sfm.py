"""``sfm``: spectral filtering of the audio features along time (``SpectralFilter1d``).

Base features ``B×T×C`` (``mel`` or ``raw`` extractor) → L-level DWT along time → a learnable
gain per (sub-band, channel), initialised to 1 → IDWT → input-dependent sigmoid gate with a
residual path (``x + gate·(filtered − x)``) → per-frame windows → tokens ``B×F×N×D``.
A fresh module leaves the features unchanged, and the gains train with the rest.
"""

from __future__ import annotations

from singer.audio.base import FeatureFrontend, build_base_extractor
from singer.registry import FRONTENDS
from singer.wavelets import SpectralFilter1d


@FRONTENDS.register("sfm")
class SFMFrontend(FeatureFrontend):
    """Base audio features → SpectralFilter1d along time (identity at init, gated) → tokens."""

    def __init__(
        self,
        *,
        base: str = "mel",
        levels: int = 2,
        wavelet: str = "haar",
        gate: bool = True,
        hidden: int = 128,
        base_kwargs: dict | None = None,
        sample_rate: int = 16000,
        **common,
    ):
        encoder = build_base_extractor(base, sample_rate=sample_rate, **dict(base_kwargs or {}))
        super().__init__(encoder=encoder, hidden=hidden, sample_rate=sample_rate, **common)
        self.base = base
        self.filter = SpectralFilter1d(encoder.channels, levels=levels, wavelet=wavelet, gate=gate)

    def transform(self, features, x_t, t):
        """Features ``B×T×C`` → filtered ``B×T×C``; ``x_t`` and ``t`` are ignored."""
        return self.filter(features.transpose(1, 2)).transpose(1, 2)
