"""``sd_vae``: a pretrained Stable Diffusion VAE (diffusers ``AutoencoderKL``) from a local folder.

Frozen; ``C = 4``, ``downsample = 8`` for SD1.x. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch

from singer.codecs.base import FrozenCodec, map_frames
from singer.registry import CODECS
from singer.weights import MissingWeightsError, resolve_weights

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
        from diffusers import AutoencoderKL  # lazy: start-up: seconds; only this codec needs it

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
