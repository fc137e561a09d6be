"""Pixel ↔ latent codecs: the seam between the data and the backbone.

A codec maps a video ``B×3×F×H×W`` in [-1, 1] to the space the backbone denoises
(``B×C×F×h×w``) and back. ``identity`` keeps pixel space; latent codecs (a VAE, a small
autoencoder) register here under their own names.
"""

from __future__ import annotations

import torch
from torch import nn

from singer.registry import CODECS


class Codec(nn.Module):
    """Base class. ``latent_channels`` and ``downsample`` describe the latent grid."""

    latent_channels: int = 3
    downsample: int = 1

    def encode(self, video: torch.Tensor) -> torch.Tensor:  # B×3×F×H×W → B×C×F×h×w
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:  # B×C×F×h×w → B×3×F×H×W
        raise NotImplementedError


@CODECS.register("identity")
class IdentityCodec(Codec):
    """Pixel space: the backbone denoises RGB frames directly."""

    def __init__(self, channels: int = 3):
        super().__init__()
        self.latent_channels = channels

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        return video

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.clamp(-1.0, 1.0)
