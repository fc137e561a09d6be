"""``identity``: pixel space, the default codec."""

from __future__ import annotations

import torch

from singer.codecs.base import Codec
from singer.registry import CODECS


@CODECS.register("identity")
class IdentityCodec(Codec):
    """Pixel space: the backbone denoises RGB frames directly."""

    bounded = True

    def __init__(self, channels: int = 3):
        super().__init__()
        self.latent_channels = channels

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        return video

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.clamp(-1.0, 1.0)
