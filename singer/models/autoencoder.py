"""``autoencoder``: trains the harness's own per-frame latent codec (:class:`TinyAutoencoder`).

    python -m singer.train model=autoencoder trainer=cpu_tiny out_dir=runs/tiny_ae
    python -m singer.train codec=tiny_ae codec.checkpoint=runs/tiny_ae     # SINGER in its latent space

The loss is an L1 + MSE reconstruction of every frame of the batch's clips (``video``
``B×3×F×H×W`` folded to ``B·F`` images) plus an optional small regulariser on the latent
(``regularizer: l2`` or ``kl``, weight ``reg_weight``). It logs ``mse`` (so ``val/mse`` is the
plain reconstruction error), ``l1``, ``reg`` and ``latent_std`` (the encoder's raw output scale).
The model does not generate video (``sample=None``); the front-end, backbone and codec config
groups are composed but unused.
"""

from __future__ import annotations

import torch
from torch import nn

from singer.codecs import AE_ARCH_KEYS, AE_STATE_PREFIX, TinyAutoencoder, fold_frames
from singer.models.spec import ModelSpec, register_model_spec


class AutoencoderModel(nn.Module):
    """A :class:`TinyAutoencoder` (under ``.ae``) with its reconstruction loss weights."""

    def __init__(
        self,
        ae: TinyAutoencoder,
        *,
        l1_weight: float = 1.0,
        mse_weight: float = 1.0,
        reg_weight: float = 1.0e-4,
    ):
        super().__init__()
        self.ae = ae
        self.l1_weight, self.mse_weight, self.reg_weight = (
            float(l1_weight),
            float(mse_weight),
            float(reg_weight),
        )

    def training_loss(self, batch: dict, generator: torch.Generator | None = None):
        """Reconstruction loss on the frames of ``batch["video"]`` (``B×3×F×H×W`` in [-1, 1])."""
        frames = fold_frames(batch["video"])
        recon, z, reg = self.ae(frames, generator=generator)
        err = recon.float() - frames.float()
        l1, mse = err.abs().mean(), err.pow(2).mean()
        loss = self.l1_weight * l1 + self.mse_weight * mse + self.reg_weight * reg.float()
        logs = {
            "l1": float(l1.detach()),
            "mse": float(mse.detach()),
            "reg": float(reg.detach()),
            "latent_std": float(z.detach().float().std()),
        }
        return loss, logs


assert AE_STATE_PREFIX == "ae.", "TinyAECodec reads the weights saved under AutoencoderModel.ae"


def build_autoencoder(cfg) -> AutoencoderModel:
    """Build from a composed config; only the ``model`` section is read."""
    mc = cfg.model
    ae = TinyAutoencoder(**{k: mc[k] for k in AE_ARCH_KEYS if k in mc})
    return AutoencoderModel(
        ae,
        l1_weight=mc.get("l1_weight", 1.0),
        mse_weight=mc.get("mse_weight", 1.0),
        reg_weight=mc.get("reg_weight", 1.0e-4),
    )


register_model_spec(
    ModelSpec(
        name="autoencoder",
        build=build_autoencoder,
        description="tiny per-frame conv autoencoder (L1+MSE); its checkpoint is the latent space of codec=tiny_ae",
        sample=None,
    )
)
