"""The codec contract and the frame-folding helpers every codec shares.

A codec maps a video ``B×3×F×H×W`` in [-1, 1] to the space the backbone denoises
(``B×C×F×h×w`` with ``h = H / downsample``, ``w = W / downsample``) and back. Frames are
coded one by one: the frame axis is folded into the batch (``B·F`` images) and unfolded again.
Latent codecs are frozen (:class:`FrozenCodec`): their parameters never train, they stay in
eval mode whatever the parent model does, and ``encode`` runs without autograd.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class Codec(nn.Module):
    """Base class. ``latent_channels`` and ``downsample`` describe the latent grid."""

    latent_channels: int = 3
    downsample: int = 1
    # Whether latents are bounded to [-1, 1] (pixels); unbounded latents must not be clipped
    # by the sampler (singer.diffusion.diffusion_for_codec).
    bounded: bool = False

    def encode(self, video: torch.Tensor) -> torch.Tensor:  # B×3×F×H×W → B×C×F×h×w
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:  # B×C×F×h×w → B×3×F×H×W
        raise NotImplementedError

    def encode_frames(self, frames: torch.Tensor | None) -> torch.Tensor | None:
        """Conditioning frames B×3×M×H×W (or one frame, B×3×H×W) → latents of the same layout."""
        if frames is None:
            return None
        if frames.dim() == 4:
            return self.encode(frames.unsqueeze(2)).squeeze(2)
        return self.encode(frames)


# -- frame folding ----------------------------------------------------------------------------
def fold_frames(video: torch.Tensor) -> torch.Tensor:
    """``B×C×F×H×W`` → ``(B·F)×C×H×W`` (frame-major within each clip)."""
    b, c, f, h, w = video.shape
    return video.transpose(1, 2).reshape(b * f, c, h, w)


def unfold_frames(frames: torch.Tensor, batch: int) -> torch.Tensor:
    """``(B·F)×C×H×W`` → ``B×C×F×H×W``; inverse of :func:`fold_frames`."""
    n, c, h, w = frames.shape
    return frames.reshape(batch, n // batch, c, h, w).transpose(1, 2)


def map_frames(
    fn: Callable[[torch.Tensor], torch.Tensor], video: torch.Tensor, chunk: int = 0
) -> torch.Tensor:
    """Apply a per-image function ``N×C×H×W → N×C'×H'×W'`` to every frame of ``B×C×F×H×W``,
    at most ``chunk`` images per call (0: all at once)."""
    if video.dim() != 5:
        raise ValueError(f"expected a video B×C×F×H×W, got shape {tuple(video.shape)}")
    frames = fold_frames(video)
    if chunk and frames.shape[0] > chunk:
        out = torch.cat([fn(part) for part in frames.split(chunk)])
    else:
        out = fn(frames)
    return unfold_frames(out, video.shape[0])


class FrozenCodec(Codec):
    """A codec whose network never trains: no gradients, always eval mode."""

    def freeze(self) -> None:
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True):
        return super().train(False)  # e.g. dropout/statistics stay in inference behaviour

    def _check_size(self, video: torch.Tensor) -> None:
        h, w = video.shape[-2:]
        if h % self.downsample or w % self.downsample:
            raise ValueError(
                f"{type(self).__name__}: frame size {h}×{w} must be divisible by its downsample factor "
                f"{self.downsample}"
            )
