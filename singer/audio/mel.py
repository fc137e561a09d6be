"""``mel``: log-mel spectrogram (100 Hz) + a small conv encoder, windowed ±k frames → tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from singer.audio.base import FeatureExtractor, FeatureFrontend
from singer.registry import FRONTENDS

NORMALIZATIONS = ("global", "utterance", "none")
# Fixed affine map for normalize="global": log-mel power of speech/singing at ordinary levels
# (|wav| up to ~0.5) lies roughly in [-11.5, 8]; this maps it to roughly [-2, 3].
LOG_MEL_SHIFT = 4.0
LOG_MEL_SCALE = 4.0
LOG_FLOOR = 1e-5


class MelFeatures(FeatureExtractor):
    """Waveform ``B×S`` → log-mel → conv encoder → features ``B×T×C``.

    ``T = 1 + S // hop_length`` (frames are centred: frame ``i`` at ``i·hop`` samples, so
    ``offset = 0``). ``normalize`` chooses how the log-mel is scaled before the encoder:

    * ``"global"`` (default): a fixed affine map (``(log_mel + 4) / 4``). Keeps absolute
      loudness, which drives mouth opening on the synthetic benchmark.
    * ``"utterance"``: per-utterance, per-mel-bin mean/variance normalisation over time.
      Robust to recording gain, but it discards the absolute level of each clip.
    * ``"none"``: the raw log-mel.
    """

    def __init__(
        self,
        *,
        sample_rate: int = 16000,
        n_mels: int = 64,
        n_fft: int = 400,
        hop_length: int = 160,
        channels: int = 32,
        normalize: str = "global",
    ):
        super().__init__()
        if normalize not in NORMALIZATIONS:
            raise ValueError(
                f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}"
            )
        self.channels = channels
        self.rate = sample_rate / hop_length
        self.offset = 0.0
        self.n_fft = n_fft
        self.normalize = normalize
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=n_fft,
            hop_length=hop_length,
            n_mels=n_mels,
            center=True,
            power=2.0,
        )
        self.net = nn.Sequential(
            nn.Conv1d(n_mels, channels, kernel_size=3, padding=1),
            nn.GELU(),
            nn.Conv1d(channels, channels, kernel_size=3, padding=1),
        )

    def log_mel(self, wav: torch.Tensor) -> torch.Tensor:
        """Waveform ``B×S`` → normalised log-mel ``B×n_mels×T`` (float32)."""
        wav = wav.float()
        # Centred STFT frames reflect-pad by n_fft/2, which needs at least that many samples.
        if wav.shape[-1] <= self.n_fft // 2:
            wav = F.pad(wav, (0, self.n_fft // 2 + 1 - wav.shape[-1]))
        logmel = torch.log(self.mel(wav).clamp_min(LOG_FLOOR))
        if self.normalize == "global":
            return (logmel + LOG_MEL_SHIFT) / LOG_MEL_SCALE
        if self.normalize == "utterance":
            mean = logmel.mean(dim=-1, keepdim=True)
            std = logmel.std(dim=-1, keepdim=True, unbiased=False)
            return (logmel - mean) / (std + 1e-5)
        return logmel

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        logmel = self.log_mel(wav).to(self.net[0].weight.dtype)
        return self.net(logmel).transpose(1, 2)  # B×T×C


@FRONTENDS.register("mel")
class MelFrontend(FeatureFrontend):
    """Log-mel spectrogram (100 Hz) + small conv encoder, windowed ±k frames → tokens."""

    feature_extractor = MelFeatures

    def __init__(
        self,
        *,
        n_mels: int = 64,
        n_fft: int = 400,
        hop_length: int = 160,
        channels: int = 32,
        normalize: str = "global",
        hidden: int = 128,
        sample_rate: int = 16000,
        **common,
    ):
        encoder = MelFeatures(
            sample_rate=sample_rate,
            n_mels=n_mels,
            n_fft=n_fft,
            hop_length=hop_length,
            channels=channels,
            normalize=normalize,
        )
        super().__init__(encoder=encoder, hidden=hidden, sample_rate=sample_rate, **common)
