"""The bottleneck filter hook between the UNet mid block and its up path (SINGER's SFM).

SFM (spectral-filtering module): a 2-D wavelet transform of the mid-block features of each
frame, a learnable gain per sub-band × channel, the inverse transform, and a sigmoid gate
computed from the features, on a residual path. Unlike the official code its gains start
at 1 (so the module is the identity at init), stay trainable, and it works at any
resolution; the wavelet maths lives in ``singer.wavelets.SpectralFilter2d``.

The backbone folds frames into the batch, so the filter sees ``(B·F)×C×h×w`` and acts on
every frame independently.
"""

from __future__ import annotations

import torch
from torch import nn

from singer.wavelets import SpectralFilter2d

BOTTLENECK_FILTERS = ("sfm", "none")
SFM_STREAM = 0x5F3_5F3  # XOR-ed into the seed of the SFM's own random stream


class SpectralBottleneck(nn.Module):
    """Per-frame SFM on mid features: ``(B·F)×C×h×w → (B·F)×C×h×w``, identity at init."""

    def __init__(self, channels: int, levels: int = 1, wavelet: str = "haar"):
        super().__init__()
        self.filter = SpectralFilter2d(channels, levels=levels, wavelet=wavelet, gate=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.filter(x)


def build_bottleneck_filter(
    name: str, channels: int, levels: int = 1, wavelet: str = "haar"
) -> nn.Module:
    """The module placed between the mid block and the up path.

    Args:
        name: ``"sfm"`` (per-frame spectral filter) or ``"none"`` (``nn.Identity``).
        channels: channel count of the mid features.
        levels: wavelet decomposition levels of the SFM.
        wavelet: wavelet name of the SFM (``haar``, ``db2``, ``sym4``, ...).
    """
    if name == "sfm":
        # Drawn from a stream of its own (derived from the one the backbone is built from), so
        # switching the filter off in an ablation leaves every other layer's initial weights as
        # they were.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(torch.initial_seed() ^ SFM_STREAM)
            return SpectralBottleneck(channels, levels=levels, wavelet=wavelet)
    if name == "none":
        return nn.Identity()
    raise ValueError(
        f"unknown bottleneck_filter '{name}'; choose one of: {', '.join(BOTTLENECK_FILTERS)}"
    )
