"""What every audio front-end shares: the interface, per-frame windowing and token projection.

A front-end turns a mono waveform ``B×S`` (16 kHz) into audio tokens ``B×F×N×D`` for the F
video frames. :class:`FeatureFrontend` (raw, mel, msm, sfm) does it in these steps:

1. ``features(wav)``: a feature sequence ``B×T×C`` at ``rate`` Hz (a :class:`FeatureExtractor`),
   then ``transform`` (msm/sfm filter it here; identity otherwise);
2. :func:`frame_windows`: for each video frame, the features within ±``window`` video frames
   of that frame's centre → ``B×F×W×C`` (zero-padded past the ends of the audio);
3. :class:`TokenProjector`: window → ``N`` tokens of size ``D``.

Time alignment: video frame ``f`` is centred at ``(f + 0.5) / fps`` seconds and feature ``i``
at ``(i + offset) / rate`` seconds, with ``offset`` given by the extractor. Any ``S`` works;
frames past the end of the audio see zeros.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from singer.registry import FRONTENDS


def window_length(window: int, rate: float, fps: float) -> int:
    """Number of feature steps ``W`` that cover ``2·window + 1`` video frames at ``rate`` Hz."""
    return max(1, int(math.floor((2 * window + 1) * rate / fps + 0.5)))


def frame_windows(
    features: torch.Tensor,
    *,
    rate: float,
    num_frames: int,
    fps: float,
    window: int,
    offset: float = 0.5,
) -> torch.Tensor:
    """Gather, for each video frame, the features within ±``window`` frames of its centre.

    Args:
        features: ``B×T×C`` at ``rate`` Hz; feature ``i`` is centred at ``(i + offset) / rate`` s.
        num_frames: ``F``, the number of video frames.
        fps: video frame rate; frame ``f`` is centred at ``(f + 0.5) / fps`` s.
        window: ``k``; the window spans ``2k + 1`` video frames.

    Returns:
        ``B×F×W×C`` with ``W = window_length(window, rate, fps)``; positions before the first
        or after the last feature are zero.
    """
    if features.dim() != 3:
        raise ValueError(f"features must be B×T×C, got {tuple(features.shape)}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    batch, steps, channels = features.shape
    width = window_length(window, rate, fps)
    if steps == 0:
        return features.new_zeros(batch, num_frames, width, channels)
    device = features.device
    # Fractional feature index of every frame centre; the window takes the W features whose
    # centres fall in [centre − W/2, centre + W/2), i.e. the first index is ceil(centre − W/2).
    # The epsilon keeps float error from moving an exact integer boundary up by one.
    centres = (torch.arange(num_frames, device=device, dtype=torch.float64) + 0.5) * (
        rate / fps
    ) - offset
    first = torch.ceil(centres - width / 2 - 1e-9).long()
    index = first[:, None] + torch.arange(width, device=device)[None, :]  # F×W
    valid = (index >= 0) & (index < steps)
    gathered = features[:, index.clamp(0, steps - 1)]  # B×F×W×C
    return gathered * valid[None, :, :, None].to(features.dtype)


def sample_at_frames(
    features: torch.Tensor, *, rate: float, num_frames: int, fps: float, offset: float = 0.5
) -> torch.Tensor:
    """Linearly interpolate a feature sequence at the video frame centres.

    Args:
        features: ``B×T×C`` at ``rate`` Hz; feature ``i`` is centred at ``(i + offset) / rate`` s.

    Returns:
        ``B×F×C``: the features at ``(f + 0.5) / fps`` s. The sequence is treated as zero one
        step beyond either end, so frames past the end of the audio fade to zero.
    """
    steps = features.shape[1]
    padded = torch.nn.functional.pad(features, (0, 0, 1, 1))  # B×(T+2)×C, zero at both ends
    position = (torch.arange(num_frames, device=features.device, dtype=torch.float64) + 0.5) * (
        rate / fps
    )
    position = (position - offset + 1.0).clamp(0.0, steps + 1.0)  # index into ``padded``
    lower = position.floor().long().clamp(max=steps + 1)
    upper = (lower + 1).clamp(max=steps + 1)
    frac = (position - lower.to(position.dtype)).to(features.dtype)[None, :, None]
    return padded[:, lower] * (1.0 - frac) + padded[:, upper] * frac


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of diffusion timesteps ``t: B`` → ``B×dim`` (float32)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half
    )
    angles = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, emb.new_zeros(emb.shape[0], 1)], dim=-1)
    return emb


class FeatureExtractor(nn.Module):
    """Waveform ``B×S`` → features ``B×T×C``.

    Subclasses set ``channels`` (C), ``rate`` (Hz) and ``offset`` (feature ``i`` is centred at
    ``(i + offset) / rate`` seconds). Their constructors take ``sample_rate`` plus their own
    keyword arguments.
    """

    channels: int
    rate: float
    offset: float = 0.5


class TokenProjector(nn.Module):
    """Per-frame feature window ``B×F×W×C`` → tokens ``B×F×N×D``.

    Flatten the window, ``Linear → SiLU → Linear`` to ``N·D``, then LayerNorm per token so the
    tokens enter cross-attention at a fixed scale. There is deliberately no normalisation of
    the input features: a per-step norm would discard their overall level (loudness).
    """

    def __init__(self, width: int, channels: int, tokens: int, dim: int, hidden: int = 128):
        super().__init__()
        self.tokens, self.dim = tokens, dim
        self.mlp = nn.Sequential(
            nn.Linear(width * channels, hidden),
            nn.SiLU(),
            nn.Linear(hidden, tokens * dim),
        )
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        batch, frames = windows.shape[:2]
        x = windows.flatten(2)
        x = self.mlp(x).view(batch, frames, self.tokens, self.dim)
        return self.norm_out(x)


class AudioFrontend(nn.Module):
    """Base class: waveform ``B×S`` (+ optional noisy sample and timestep) → tokens ``B×F×N×D``.

    Shared constructor keywords: ``sample_rate`` (Hz), ``fps`` (video frames per second),
    ``window`` (±k video frames around each frame), ``dim`` (D), ``tokens`` (N) and
    ``cond_channels`` (channels of the noisy sample ``x_t``, for front-ends that gate on it).
    """

    # The feature extractor class a front-end is built around; msm/sfm reuse it as their base.
    feature_extractor: type[FeatureExtractor] | None = None

    def __init__(
        self,
        *,
        sample_rate: int = 16000,
        fps: float = 25,
        window: int = 2,
        dim: int = 64,
        tokens: int = 4,
        cond_channels: int = 3,
    ):
        super().__init__()
        if window < 0:
            raise ValueError(f"window must be >= 0 video frames, got {window}")
        if dim < 1 or tokens < 1:
            raise ValueError(f"dim and tokens must be >= 1, got dim={dim}, tokens={tokens}")
        self.sample_rate = sample_rate
        self.fps = fps
        self.window = window
        self.dim = dim
        self.tokens = tokens
        self.cond_channels = cond_channels

    def check_wav(self, wav: torch.Tensor) -> torch.Tensor:
        if wav.dim() != 2:
            raise ValueError(f"waveform must be B×S (mono), got shape {tuple(wav.shape)}")
        return wav

    def window_width(self, rate: float) -> int:
        """``W``: feature steps at ``rate`` Hz in one per-frame window of ``2·window + 1`` frames."""
        return window_length(self.window, rate, self.fps)

    def windows(
        self, features: torch.Tensor, num_frames: int, *, rate: float, offset: float
    ) -> torch.Tensor:
        """Features ``B×T×C`` → per-frame windows ``B×F×W×C`` with this front-end's fps and window."""
        return frame_windows(
            features,
            rate=rate,
            num_frames=num_frames,
            fps=self.fps,
            window=self.window,
            offset=offset,
        )

    def forward(
        self,
        wav: torch.Tensor,
        num_frames: int,
        x_t: torch.Tensor | None = None,
        t: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``wav: B×S``, ``x_t: B×C×F×H×W``, ``t: B`` (int64) → tokens ``B×F×N×D``."""
        raise NotImplementedError


class FeatureFrontend(AudioFrontend):
    """A front-end built as: extractor → ``transform`` (identity here) → windows → tokens.

    ``raw`` and ``mel`` use it as is; ``msm`` and ``sfm`` override :meth:`transform` to
    filter the feature sequence before windowing.
    """

    def __init__(self, *, encoder: FeatureExtractor, hidden: int = 128, **common):
        super().__init__(**common)
        self.encoder = encoder
        self.projector = TokenProjector(
            self.window_width(encoder.rate), encoder.channels, self.tokens, self.dim, hidden=hidden
        )

    def features(self, wav: torch.Tensor) -> torch.Tensor:
        """Waveform ``B×S`` → base features ``B×T×C`` at ``self.encoder.rate`` Hz."""
        return self.encoder(self.check_wav(wav))

    def transform(
        self, features: torch.Tensor, x_t: torch.Tensor | None, t: torch.Tensor | None
    ) -> torch.Tensor:
        """Hook for subclasses: features ``B×T×C`` → ``B×T×C``."""
        return features

    def forward(
        self,
        wav: torch.Tensor,
        num_frames: int,
        x_t: torch.Tensor | None = None,
        t: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``wav: B×S``, ``x_t: B×C×F×H×W``, ``t: B`` → tokens ``B×F×N×D``."""
        feats = self.transform(self.features(wav), x_t, t)
        windows = self.windows(
            feats, num_frames, rate=self.encoder.rate, offset=self.encoder.offset
        )
        return self.projector(windows)


def build_base_extractor(base: str, *, sample_rate: int, **kwargs) -> FeatureExtractor:
    """Instantiate the feature extractor of the front-end registered as ``base`` (e.g. mel, raw)."""
    frontend_cls = FRONTENDS.get(base)
    extractor_cls = getattr(frontend_cls, "feature_extractor", None)
    if extractor_cls is None:
        usable = [
            n
            for n in FRONTENDS.names()
            if getattr(FRONTENDS.get(n), "feature_extractor", None) is not None
        ]
        raise ValueError(
            f"front-end '{base}' has no feature extractor to build on; use one of: {', '.join(usable)}"
        )
    return extractor_cls(sample_rate=sample_rate, **kwargs)
