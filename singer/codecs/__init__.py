"""Pixel ↔ latent codecs: the seam between the data and the backbone.

A codec maps a video ``B×3×F×H×W`` in [-1, 1] to the space the backbone denoises
(``B×C×F×h×w``) and back (contract: :class:`singer.codecs.base.Codec`). Importing this package
registers every codec module in it in ``singer.registry.CODECS``, one file each:

* ``identity``: pixel space (the default).
* ``sd_vae``: a pretrained diffusers ``AutoencoderKL`` (Stable Diffusion's VAE) from a local
  folder, frozen; ``C = 4``, ``downsample = 8`` for SD1.x.
* ``tiny_ae``: :class:`TinyAutoencoder`, a small per-frame convolutional autoencoder that the
  harness trains itself (``python -m singer.train model=autoencoder``), loaded from that run's
  checkpoint and frozen; ``C = 4``, ``downsample = 4`` by default.
"""

from singer.codecs.base import Codec, FrozenCodec, fold_frames, map_frames, unfold_frames
from singer.codecs.identity import IdentityCodec
from singer.codecs.sd_vae import SDVAECodec
from singer.codecs.tiny_ae import (
    AE_ARCH_KEYS,
    AE_REGULARIZERS,
    AE_STATE_PREFIX,
    AE_TRAIN_COMMAND,
    TinyAECodec,
    TinyAutoencoder,
)
from singer.registry import import_submodules

import_submodules(__name__, __path__)

__all__ = [
    "AE_ARCH_KEYS",
    "AE_REGULARIZERS",
    "AE_STATE_PREFIX",
    "AE_TRAIN_COMMAND",
    "Codec",
    "FrozenCodec",
    "IdentityCodec",
    "SDVAECodec",
    "TinyAECodec",
    "TinyAutoencoder",
    "fold_frames",
    "map_frames",
    "unfold_frames",
]
