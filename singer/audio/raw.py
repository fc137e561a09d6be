"""``raw``: a learned strided 1-D conv encoder on the waveform (about 100 Hz features)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from singer.audio.base import FeatureExtractor, FeatureFrontend
from singer.registry import FRONTENDS


class RawFeatures(FeatureExtractor):
    """Waveform ``B×S`` → learned features ``B×T×C`` with ``T = ceil(S / prod(strides))``.

    Each conv has ``kernel = 2·stride`` and ``padding = stride / 2``, so output ``i`` of a layer
    is centred on input step ``(i + 0.5)·stride``; for the whole stack feature ``i`` is centred
    at ``(i + 0.5)·hop`` samples (``offset = 0.5``). Default strides 4·4·10 = 160 samples,
    i.e. 100 Hz at 16 kHz. No normalisation layers: absolute loudness stays in the features.
    """

    def __init__(
        self, *, sample_rate: int = 16000, channels: int = 32, strides: tuple[int, ...] = (4, 4, 10)
    ):
        super().__init__()
        strides = tuple(int(s) for s in strides)
        if not strides or any(s < 2 or s % 2 for s in strides):
            raise ValueError(
                f"strides must be even integers >= 2 (kernel = 2·stride, padding = stride/2), got {strides}"
            )
        self.hop = math.prod(strides)
        self.channels = channels
        self.rate = sample_rate / self.hop
        self.offset = 0.5
        layers: list[nn.Module] = []
        in_channels = 1
        for i, stride in enumerate(strides):
            layers.append(
                nn.Conv1d(
                    in_channels,
                    channels,
                    kernel_size=2 * stride,
                    stride=stride,
                    padding=stride // 2,
                )
            )
            if i < len(strides) - 1:
                layers.append(nn.GELU())
            in_channels = channels
        self.net = nn.Sequential(*layers)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        # Right-pad to a whole number of hops: every layer then divides its length exactly,
        # which keeps the (i + 0.5)·hop alignment and allows any S (even S < hop).
        steps = max(1, math.ceil(wav.shape[-1] / self.hop))
        wav = F.pad(wav, (0, steps * self.hop - wav.shape[-1]))
        weight_dtype = self.net[0].weight.dtype
        return self.net(wav.to(weight_dtype).unsqueeze(1)).transpose(1, 2)  # B×T×C


@FRONTENDS.register("raw")
class RawFrontend(FeatureFrontend):
    """Learned strided conv encoder on the raw waveform (~100 Hz), windowed ±k frames → tokens."""

    feature_extractor = RawFeatures

    def __init__(
        self,
        *,
        channels: int = 32,
        strides: tuple[int, ...] = (4, 4, 10),
        hidden: int = 128,
        sample_rate: int = 16000,
        **common,
    ):
        encoder = RawFeatures(sample_rate=sample_rate, channels=channels, strides=tuple(strides))
        super().__init__(encoder=encoder, hidden=hidden, sample_rate=sample_rate, **common)
