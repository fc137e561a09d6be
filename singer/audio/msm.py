"""``msm``: the multi-scale spectral module (SINGER), our fixed version of the official one.

Pipeline: base features ``B×T×C`` (the ``mel`` or ``raw`` extractor) → L-level DWT along
time → each sub-band × a gain predicted from the noisy sample ``x_t`` and the timestep ``t``
→ IDWT → per-frame windows → tokens ``B×F×N×D``.

Differences from the official code (the method and its fixes: docs/architecture.md):

* L levels (1..4) and any discrete wavelet (haar, db2, sym4, ...), not one Haar level;
* the gains come from ``x_t`` *and* ``t``; no frozen random tensor, no file writes, every
  parameter trains; the last layer is zero-initialised, so all gains are exactly 1 at init
  and the module starts as the identity on the features.

Choices documented here:

* **Transform axis.** The DWT runs along time only. The official code also transformed
  across its token axis, but the channel axis of learned features has no order, so a DWT
  across it would mix unrelated channels. Instead the channels can be split into
  ``gain_groups`` groups, each with its own gain per sub-band (``gain_groups=1``, the default,
  is one scalar per sub-band as in the official code; ``gain_groups=C`` is one per channel).
* **Gain predictor.** ``x_t: B×C×F×H×W`` is averaged over width and over 4 horizontal strips
  of the height per frame, then over frames → ``B×C×4`` (the strips roughly separate the
  eyes / nose / mouth / chin regions of a face crop). ``h = Linear(strips) + Linear(sin_emb(t))``,
  then ``SiLU → Linear`` (zero-init) → ``gains = 2·σ(·)`` in (0, 2), shape ``B×(L+1)×G``.
* **No condition.** ``x_t=None`` uses an all-zero strip vector and ``t=None`` leaves out the
  timestep term, so with both ``None`` (audio alone) the gains come from the biases only:
  exactly 1 at init, a learned constant after training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from singer.audio.base import FeatureFrontend, build_base_extractor, timestep_embedding
from singer.registry import FRONTENDS
from singer.wavelets import (
    DEFAULT_MODE,
    band_names_1d,
    check_levels,
    check_wavelet,
    compute_dtype,
    dwt1d,
    idwt1d,
)

MAX_LEVELS = 4
NUM_STRIPS = 4


@FRONTENDS.register("msm")
class MSMFrontend(FeatureFrontend):
    """Multi-scale spectral module: L-level DWT of audio features, sub-band gains from x_t and t."""

    def __init__(
        self,
        *,
        base: str = "mel",
        levels: int = 2,
        wavelet: str = "haar",
        gain_groups: int = 1,
        cond_hidden: int = 64,
        hidden: int = 128,
        base_kwargs: dict | None = None,
        sample_rate: int = 16000,
        **common,
    ):
        check_levels(levels, low=1, high=MAX_LEVELS)
        check_wavelet(wavelet)
        encoder = build_base_extractor(base, sample_rate=sample_rate, **dict(base_kwargs or {}))
        super().__init__(encoder=encoder, hidden=hidden, sample_rate=sample_rate, **common)
        channels = encoder.channels
        if gain_groups < 1 or channels % gain_groups:
            raise ValueError(
                f"gain_groups must divide the {channels} feature channels, got {gain_groups}"
            )
        self.base = base
        self.levels = levels
        self.wavelet = wavelet
        self.mode = DEFAULT_MODE
        self.gain_groups = gain_groups
        self.cond_hidden = cond_hidden
        # Gain predictor: (x_t strips, t) → one gain per (sub-band, channel group).
        self.cond_proj = nn.Linear(self.cond_channels * NUM_STRIPS, cond_hidden)
        self.time_proj = nn.Linear(cond_hidden, cond_hidden)
        self.gain_out = nn.Linear(cond_hidden, (levels + 1) * gain_groups)
        # Zero-init: gains = 2·σ(0) = 1 exactly, for any x_t and t, until training moves it.
        nn.init.zeros_(self.gain_out.weight)
        nn.init.zeros_(self.gain_out.bias)

    @property
    def band_names(self) -> list[str]:
        """Sub-band names in gain order, e.g. ``["A3", "D3", "D2", "D1"]``."""
        return band_names_1d(self.levels)

    def strips(self, x_t: torch.Tensor) -> torch.Tensor:
        """Noisy sample ``B×C×F×H×W`` → per-channel means of 4 horizontal strips ``B×C×4``."""
        if x_t.dim() != 5 or x_t.shape[1] != self.cond_channels:
            raise ValueError(
                f"msm expects x_t of shape B×{self.cond_channels}×F×H×W (cond_channels={self.cond_channels}), "
                f"got {tuple(x_t.shape)}"
            )
        rows = x_t.float().mean(dim=-1)  # B×C×F×H
        batch, channels, frames, height = rows.shape
        strips = F.adaptive_avg_pool1d(rows.reshape(batch, channels * frames, height), NUM_STRIPS)
        return strips.view(batch, channels, frames, NUM_STRIPS).mean(dim=2)

    def band_gains(
        self, batch_size: int, x_t: torch.Tensor | None = None, t: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Gains ``B×(L+1)×G`` in (0, 2), in sub-band order ``[A_L, D_L, ..., D_1]``."""
        weight = self.cond_proj.weight
        if x_t is None:
            strips = weight.new_zeros(batch_size, self.cond_channels * NUM_STRIPS)
        else:
            strips = self.strips(x_t).flatten(1).to(weight.dtype)
        hidden = self.cond_proj(strips)
        if t is not None:
            t = torch.as_tensor(t, device=weight.device)
            t = t.expand(batch_size) if t.dim() == 0 else t
            hidden = hidden + self.time_proj(
                timestep_embedding(t, self.cond_hidden).to(weight.dtype)
            )
        logits = self.gain_out(F.silu(hidden))
        return 2.0 * torch.sigmoid(logits).view(batch_size, self.levels + 1, self.gain_groups)

    def filter_bands(self, features: torch.Tensor, gains: torch.Tensor) -> torch.Tensor:
        """DWT → per-band gains → IDWT along time.

        Args:
            features: ``B×T×C``.
            gains: ``B×(L+1)×G`` (``G`` divides ``C``; channel ``c`` uses group ``c // (C/G)``).

        Returns:
            ``B×T×C`` in the dtype of ``features``; equal to ``features`` when all gains are 1.
        """
        dtype = features.dtype
        signal = features.transpose(1, 2).to(compute_dtype(dtype))  # B×C×T
        channels, steps = signal.shape[1], signal.shape[2]
        per_channel = gains.to(signal.dtype).repeat_interleave(
            channels // gains.shape[-1], dim=-1
        )  # B×(L+1)×C
        coeffs = dwt1d(signal, self.wavelet, self.levels, self.mode)
        scaled = [band * per_channel[:, i, :, None] for i, band in enumerate(coeffs)]
        return idwt1d(scaled, self.wavelet, length=steps).transpose(1, 2).to(dtype)

    def transform(self, features, x_t, t):
        gains = self.band_gains(features.shape[0], x_t, t)
        return self.filter_bands(features, gains)
