"""Pixel ↔ latent codecs: the seam between the data and the backbone.

A codec maps a video ``B×3×F×H×W`` in [-1, 1] to the space the backbone denoises
(``B×C×F×h×w`` with ``h = H / downsample``, ``w = W / downsample``) and back. Frames are
coded one by one: the frame axis is folded into the batch (``B·F`` images) and unfolded again.

* ``identity``: pixel space (the default).
* ``sd_vae``: a pretrained diffusers ``AutoencoderKL`` (Stable Diffusion's VAE) from a local
  folder, frozen; ``C = 4``, ``downsample = 8`` for SD1.x.
* ``tiny_ae``: :class:`TinyAutoencoder`, a small per-frame convolutional autoencoder that the
  harness trains itself (``python -m singer.train model=autoencoder``), loaded from that run's
  checkpoint and frozen; ``C = 4``, ``downsample = 4`` by default.

Latent codecs are frozen: their parameters never train, they stay in eval mode whatever the
parent model does, and ``encode`` runs without autograd.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from singer.registry import CODECS
from singer.weights import MissingWeightsError, resolve_weights


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


# -- tiny_ae: the harness's own autoencoder ---------------------------------------------------
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


# -- sd_vae: a pretrained Stable Diffusion VAE from a local folder -----------------------------
SD_VAE_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
SD_VAE_HINT = (
    "on a machine with network access save a diffusers AutoencoderKL, e.g.\n"
    '      python -c "from diffusers import AutoencoderKL; '
    "AutoencoderKL.from_pretrained('stabilityai/sd-vae-ft-mse').save_pretrained('sd-vae')\"\n"
    "    and copy the folder (config.json + diffusion_pytorch_model.safetensors) here; a full Stable "
    "Diffusion pipeline folder with a vae/ subfolder works too."
)


def _sd_vae_folder(path: str | Path | None) -> tuple[Path, str | None, Path]:
    """(folder, subfolder or None, weight file) of a diffusers AutoencoderKL, or a clear error."""
    folder = Path(str(path)).expanduser() if path not in (None, "") else None
    if folder is not None:
        for sub in (None, "vae"):
            root = folder / sub if sub else folder
            if (root / "config.json").is_file():
                for name in SD_VAE_WEIGHT_FILES:
                    if (root / name).is_file():
                        return folder, sub, root / name
    where = f"`codec.path={path}` ({'not a folder' if folder is None or not folder.is_dir() else 'incomplete'})"
    raise MissingWeightsError(
        f"codec=sd_vae needs a diffusers AutoencoderKL folder on this machine, but {where}.\n"
        f"  Put the folder there, holding config.json and diffusion_pytorch_model.safetensors (or a Stable "
        f"Diffusion folder with them under vae/), or set `codec.path=/path/to/sd-vae`; pin the weight file "
        f"with `codec.sha256=<sha256sum of diffusion_pytorch_model.safetensors>`.\n"
        f"  How to obtain it offline: {SD_VAE_HINT}"
    )


@CODECS.register("sd_vae")
class SDVAECodec(FrozenCodec):
    """Stable Diffusion's VAE (diffusers ``AutoencoderKL``) from a local folder, frozen.

    Latents are ``(posterior mean − shift_factor) · scaling_factor`` with both factors read from
    the VAE's config (``scaling_factor`` 0.18215 and no shift for SD1.x), so they have about unit
    variance; ``sample_posterior=True`` draws from the posterior instead of taking its mean.
    ``chunk`` bounds how many frames go through the VAE at once (0: all ``B·F``).
    """

    def __init__(
        self,
        path: str | None = "weights/sd-vae",
        sha256: str | None = None,
        sample_posterior: bool = False,
        chunk: int = 16,
    ):
        super().__init__()
        folder, subfolder, weight_file = _sd_vae_folder(path)
        resolve_weights(
            weight_file,
            sha256=sha256,
            name="SD VAE weights (diffusers AutoencoderKL)",
            config_key="codec.path",
            sha256_key="codec.sha256",
            hint=SD_VAE_HINT,
        )
        from diffusers import AutoencoderKL

        self.vae = AutoencoderKL.from_pretrained(
            str(folder), subfolder=subfolder, local_files_only=True
        )
        config = self.vae.config
        self.scaling_factor = float(config.scaling_factor)
        self.shift_factor = float(getattr(config, "shift_factor", None) or 0.0)
        self.latent_channels = int(config.latent_channels)
        self.downsample = 2 ** (len(config.block_out_channels) - 1)
        self.sample_posterior = bool(sample_posterior)
        self.chunk = int(chunk)
        self.source = str(folder / subfolder) if subfolder else str(folder)
        self.freeze()

    @torch.no_grad()
    def encode(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        self._check_size(video)

        def encode_chunk(frames: torch.Tensor) -> torch.Tensor:
            posterior = self.vae.encode(frames).latent_dist
            z = posterior.sample(generator) if self.sample_posterior else posterior.mean
            return (z - self.shift_factor) * self.scaling_factor

        return map_frames(encode_chunk, video, self.chunk)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        def decode_frames(z: torch.Tensor) -> torch.Tensor:
            return self.vae.decode(z / self.scaling_factor + self.shift_factor).sample

        return map_frames(decode_frames, latents, self.chunk).clamp(-1.0, 1.0)
