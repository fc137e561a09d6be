"""``tiny_ae``: latents of the harness's own per-frame autoencoder, frozen.

:class:`TinyAutoencoder` is trained by ``python -m singer.train model=autoencoder``
(``singer.models.autoencoder``); :class:`TinyAECodec` loads that run's checkpoint.
``C = 4``, ``downsample = 4`` by default.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from singer.codecs.base import FrozenCodec, map_frames
from singer.registry import CODECS
from singer.weights import MissingWeightsError

AE_ARCH_KEYS = ("latent_channels", "downsample", "base_channels", "max_channels", "regularizer")
AE_REGULARIZERS = ("none", "l2", "kl")
AE_STATE_PREFIX = "ae."  # the autoencoder ModelSpec keeps its network under ``.ae``
AE_TRAIN_COMMAND = "python -m singer.train model=autoencoder trainer=cpu_tiny out_dir=runs/tiny_ae"


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(channels, 8), channels)


class _ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            _group_norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            _group_norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class TinyAutoencoder(nn.Module):
    """Per-frame 2-D convolutional autoencoder: ``N×3×H×W`` ↔ ``N×C×H/d×W/d``.

    ``k = log2(downsample)`` stride-2 stages (widths ``min(base·2^i, max_channels)``), one
    residual block per stage, mirrored by nearest-neighbour upsampling in the decoder. No
    ``tanh`` bounds the latent. Its scale is instead fixed by statistics: in training mode every
    forward pass updates running per-channel means and standard deviations of the encoder's
    output (buffers ``latent_mean``, ``latent_std``, like BatchNorm's running statistics, but
    outside the reconstruction path). :meth:`encode` returns ``(z - latent_mean) / latent_std``,
    so latents of the training data have about zero mean and unit variance, as the diffusion
    schedule assumes; :meth:`decode` inverts it. The buffers are saved with the weights and are
    fixed once the autoencoder is frozen as a codec (the role of SD's ``scaling_factor``).

    ``regularizer``: ``none``; ``l2`` (penalise ``mean(z²)``); ``kl`` (the encoder predicts a
    mean and a log-variance, training samples from it, and the penalty is the KL divergence to
    N(0, I); :meth:`encode` uses the mean).
    """

    STATS_MOMENTUM = 0.05

    def __init__(
        self,
        latent_channels: int = 4,
        downsample: int = 4,
        base_channels: int = 32,
        max_channels: int = 128,
        regularizer: str = "l2",
    ):
        super().__init__()
        levels = int(math.log2(downsample)) if downsample >= 1 else -1
        if levels < 0 or 2**levels != downsample:
            raise ValueError(
                f"tiny_ae downsample must be a power of two (1, 2, 4, 8, ...), got {downsample}"
            )
        if regularizer not in AE_REGULARIZERS:
            raise ValueError(
                f"tiny_ae regularizer must be one of {AE_REGULARIZERS}, got '{regularizer}'"
            )
        self.latent_channels = int(latent_channels)
        self.downsample = int(downsample)
        self.regularizer = regularizer
        widths = [min(base_channels * 2**i, max_channels) for i in range(levels + 1)]
        out_channels = latent_channels * (2 if regularizer == "kl" else 1)

        enc: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, padding=1)]
        for i in range(levels):
            enc += [
                _ResBlock(widths[i]),
                nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1),
            ]
        enc += [
            _ResBlock(widths[-1]),
            _group_norm(widths[-1]),
            nn.SiLU(),
            nn.Conv2d(widths[-1], out_channels, 3, padding=1),
        ]
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [
            nn.Conv2d(latent_channels, widths[-1], 3, padding=1),
            _ResBlock(widths[-1]),
        ]
        for i in reversed(range(levels)):
            dec += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(widths[i + 1], widths[i], 3, padding=1),
                _ResBlock(widths[i]),
            ]
        dec += [_group_norm(widths[0]), nn.SiLU(), nn.Conv2d(widths[0], 3, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

        self.register_buffer("latent_mean", torch.zeros(latent_channels))
        self.register_buffer("latent_std", torch.ones(latent_channels))
        self.register_buffer("stats_count", torch.zeros((), dtype=torch.long))

    # raw (unnormalised) latents ------------------------------------------------------------
    def encode_raw(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``N×3×H×W`` → (mean ``N×C×h×w``, log-variance or None)."""
        out = self.encoder(frames)
        if self.regularizer == "kl":
            mean, logvar = out.chunk(2, dim=1)
            return mean, logvar.clamp(-30.0, 20.0)
        return out, None

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    @torch.no_grad()
    def update_stats(self, z: torch.Tensor) -> None:
        """Fold a batch of raw latents into the running per-channel mean and std."""
        z = z.detach().float().transpose(0, 1).reshape(self.latent_channels, -1)
        mean, std = z.mean(dim=1), z.std(dim=1, unbiased=False).clamp_min(1e-4)
        momentum = max(
            self.STATS_MOMENTUM, 1.0 / float(self.stats_count + 1)
        )  # the first batch sets them
        self.latent_mean.lerp_(mean.to(self.latent_mean.dtype), momentum)
        self.latent_std.lerp_(std.to(self.latent_std.dtype), momentum)
        self.stats_count += 1

    def forward(
        self, frames: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass on ``N×3×H×W`` → (reconstruction, raw latent, regulariser value)."""
        mean, logvar = self.encode_raw(frames)
        if logvar is not None:
            noise = torch.randn(
                mean.shape, generator=generator, device=mean.device, dtype=mean.dtype
            )
            z = mean + torch.exp(0.5 * logvar) * noise if self.training else mean
            reg = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        else:
            z = mean
            reg = mean.pow(2).mean() if self.regularizer == "l2" else mean.new_zeros(())
        if self.training:
            self.update_stats(mean)
        return self.decode_raw(z), z, reg

    # normalised latents (what a codec hands to the diffusion model) -------------------------
    def _stat(self, name: str, like: torch.Tensor) -> torch.Tensor:
        return getattr(self, name).to(like.dtype).view(1, -1, 1, 1)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """``N×3×H×W`` → ``N×C×h×w``, about unit variance on the training data."""
        mean, _ = self.encode_raw(frames)
        return (mean - self._stat("latent_mean", mean)) / self._stat("latent_std", mean)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """``N×C×h×w`` → ``N×3×H×W``."""
        z = latents * self._stat("latent_std", latents) + self._stat("latent_mean", latents)
        return self.decode_raw(z)


def _ae_checkpoint_file(checkpoint: str | Path) -> Path:
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise MissingWeightsError(
            f"codec=tiny_ae: `codec.checkpoint={checkpoint}` is not an autoencoder checkpoint "
            f"(no file at {path}).\n"
            f"  Give a run directory of `python -m singer.train model=autoencoder` or its checkpoints/last.pt; "
            f"train one with\n      {AE_TRAIN_COMMAND}\n"
            f"  then use `codec=tiny_ae codec.checkpoint=runs/tiny_ae`."
        )
    return path


@CODECS.register("tiny_ae")
class TinyAECodec(FrozenCodec):
    """Latents of the harness's own autoencoder, trained with ``model=autoencoder`` (frozen).

    ``checkpoint``: the autoencoder's run directory or its ``checkpoints/last.pt`` (loaded with
    ``weights_only=True``; the EMA weights unless ``use_ema=False``). The architecture comes from
    that checkpoint's config; architecture keys given here must agree with it. ``"random"``
    builds a randomly initialised autoencoder from the keys given here instead (tests and speed
    benchmarks only: its latents carry no learned structure).
    """

    def __init__(
        self,
        checkpoint: str | None = None,
        use_ema: bool = True,
        chunk: int = 0,
        latent_channels: int | None = None,
        downsample: int | None = None,
        base_channels: int | None = None,
        max_channels: int | None = None,
        regularizer: str | None = None,
    ):
        super().__init__()
        given = {
            "latent_channels": latent_channels,
            "downsample": downsample,
            "base_channels": base_channels,
            "max_channels": max_channels,
            "regularizer": regularizer,
        }
        given = {k: v for k, v in given.items() if v is not None}
        self.chunk = int(chunk)
        if checkpoint is None or str(checkpoint).strip() in ("", "None", "null"):
            raise MissingWeightsError(
                "codec=tiny_ae needs a trained autoencoder, but `codec.checkpoint` is not set.\n"
                f"  Train one on your data first:\n      {AE_TRAIN_COMMAND}\n"
                "  (add `data=prepared data.cache_dir=...` for your own videos), then train SINGER in its latent "
                "space with\n      python -m singer.train codec=tiny_ae codec.checkpoint=runs/tiny_ae\n"
                "  `codec.checkpoint=random` uses an untrained autoencoder (tests and benchmarks only)."
            )
        if str(checkpoint) == "random":
            self.ae = TinyAutoencoder(**given)
            self.source = "random"
        else:
            path = _ae_checkpoint_file(checkpoint)
            state = torch.load(path, map_location="cpu", weights_only=True)
            saved = state.get("config") if isinstance(state, dict) else None
            model_cfg = (saved or {}).get("model") or {}
            if model_cfg.get("name") != "autoencoder":
                raise ValueError(
                    f"codec.checkpoint={checkpoint}: {path} is a checkpoint of model "
                    f"'{model_cfg.get('name')}', not of the autoencoder (train one with `{AE_TRAIN_COMMAND}`)"
                )
            arch = {k: model_cfg[k] for k in AE_ARCH_KEYS if k in model_cfg}
            clash = {k: (v, arch[k]) for k, v in given.items() if k in arch and arch[k] != v}
            if clash:
                text = ", ".join(
                    f"codec.{k}={v!r} but the checkpoint has {a!r}" for k, (v, a) in clash.items()
                )
                raise ValueError(
                    f"codec=tiny_ae: {text}; leave these keys null to take them from the checkpoint"
                )
            self.ae = TinyAutoencoder(**{**given, **arch})
            weights = state["ema" if use_ema else "model"]
            own = {
                k[len(AE_STATE_PREFIX) :]: v
                for k, v in weights.items()
                if k.startswith(AE_STATE_PREFIX)
            }
            self.ae.load_state_dict(own)
            self.source = str(path)
        self.latent_channels = self.ae.latent_channels
        self.downsample = self.ae.downsample
        self.freeze()

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        self._check_size(video)
        return map_frames(self.ae.encode, video, self.chunk)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return map_frames(self.ae.decode, latents, self.chunk).clamp(-1.0, 1.0)
