"""SINGER: an audio front-end + a video diffusion backbone + a codec + v-prediction diffusion.

The paper's model is the ``msm`` front-end with the ``unet3d`` backbone and the SFM
bottleneck. Every ablation (front-end, bottleneck on/off, MSM levels and wavelet) is a
config override; ``AudioDrivenDiffusion`` itself does not know which parts it holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from singer.diffusion import GaussianDiffusion, cfg_combine, diffusion_for_codec, drop_conditions
from singer.models.spec import (
    Conditions,
    ModelSpec,
    component_init,
    dropout_on,
    register_model_spec,
)
from singer.registry import BACKBONES, CODECS, FRONTENDS


class AudioDrivenDiffusion(nn.Module):
    """Generates frames ``B×3×F×H×W`` from audio, a reference frame and motion frames.

    Classifier-free guidance: during training the audio and the reference frame are each
    dropped for a random ``audio_dropout`` / ``ref_dropout`` fraction of the batch; the
    unconditional branch at sampling drops the conditions named in ``guidance_drop`` the same
    way. A dropped condition is what the backbone learns as "absent" (its learned null audio
    token, its reference-absent flag or null reference token), passed as per-sample keep masks,
    so training and sampling see the same "no condition" input, and it is never a zero tensor
    the backbone could mistake for silence or a black frame.

    A subclass that gives the backbone more inputs or weights the loss overrides the hooks
    :meth:`train_backbone_kwargs`, :meth:`sample_backbone_kwargs` and :meth:`loss_weight`
    (``baselines/hallo``: region masks and a region-weighted loss), and nothing else.
    """

    def __init__(
        self,
        frontend: nn.Module,
        backbone: nn.Module,
        codec: nn.Module,
        diffusion: GaussianDiffusion,
        *,
        audio_dropout: float = 0.05,
        ref_dropout: float = 0.05,
        guidance_drop: Sequence[str] = ("audio",),
        motion_frames: int = 2,
    ):
        super().__init__()
        unknown = set(guidance_drop) - {"audio", "ref"}
        if unknown:
            raise ValueError(f"guidance_drop accepts 'audio' and 'ref', got {sorted(unknown)}")
        self.frontend = frontend
        self.backbone = backbone
        self.codec = codec
        self.diffusion = diffusion
        self.audio_dropout = audio_dropout
        self.ref_dropout = ref_dropout
        self.guidance_drop = tuple(guidance_drop)
        self.motion_frames = motion_frames

    # -- conditioning -------------------------------------------------------------------
    def _motion(self, motion: torch.Tensor | None) -> torch.Tensor | None:
        if self.motion_frames == 0 or motion is None:
            return None
        return self.codec.encode_frames(motion[:, :, -self.motion_frames :])

    def _denoise(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        audio: torch.Tensor,
        ref: torch.Tensor,
        motion: torch.Tensor | None,
        audio_keep: torch.Tensor,
        ref_keep: torch.Tensor,
        **backbone_kwargs: Any,
    ) -> torch.Tensor:
        num_frames = x_t.shape[2]
        tokens = self.frontend(audio, num_frames, x_t=x_t, t=t)
        return self.backbone(
            x_t,
            t,
            tokens,
            ref,
            motion,
            audio_keep=audio_keep,
            ref_keep=ref_keep,
            **backbone_kwargs,
        )

    # -- hooks for subclasses -----------------------------------------------------------
    def train_backbone_kwargs(self, batch: dict) -> dict[str, Any]:
        """Extra keyword arguments of every backbone call while training on ``batch`` (none)."""
        return {}

    def sample_backbone_kwargs(self, conditions: Conditions) -> dict[str, Any]:
        """Extra keyword arguments of every backbone call while sampling ``conditions`` (none)."""
        return {}

    def loss_weight(
        self, batch: dict, x0: torch.Tensor, backbone_kwargs: dict[str, Any]
    ) -> torch.Tensor | None:
        """A per-element weight of the squared error, broadcastable to the codec's ``x0``
        (``B×C×F×h×w``), or None for the plain loss. ``backbone_kwargs`` are this batch's
        :meth:`train_backbone_kwargs`."""
        return None

    # -- training -----------------------------------------------------------------------
    def training_loss(self, batch: dict, generator: torch.Generator | None = None):
        """One diffusion training loss on a batch (layout in docs/architecture.md)."""
        video = batch["video"]
        x0 = self.codec.encode(video)
        ref = self.codec.encode_frames(batch["ref"])
        motion = self._motion(batch.get("motion"))
        audio = batch["audio"]
        batch_size = video.shape[0]
        audio_keep = ~drop_conditions(
            batch_size, self.audio_dropout * dropout_on(batch), generator
        ).to(video.device)
        ref_keep = ~drop_conditions(batch_size, self.ref_dropout * dropout_on(batch), generator).to(
            video.device
        )
        extra = self.train_backbone_kwargs(batch)
        weight = self.loss_weight(batch, x0, extra)

        def denoise(x_t, t):
            return self._denoise(x_t, t, audio, ref, motion, audio_keep, ref_keep, **extra)

        return self.diffusion.training_loss(denoise, x0, generator=generator, weight=weight)

    # -- sampling -----------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        conditions: Conditions,
        *,
        steps: int = 40,
        guidance_scale: float = 3.5,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """DDIM sampling with classifier-free guidance → video B×3×F×H×W in [-1, 1]."""
        audio, num_frames = conditions.audio, conditions.num_frames
        device = audio.device
        ref = self.codec.encode_frames(conditions.ref)
        motion = self._motion(conditions.motion)
        batch_size = audio.shape[0]
        keep = torch.ones(batch_size, dtype=torch.bool, device=device)
        audio_keep_u = keep & ("audio" not in self.guidance_drop)
        ref_keep_u = keep & ("ref" not in self.guidance_drop)
        c, h, w = ref.shape[1], ref.shape[-2], ref.shape[-1]
        shape = (batch_size, c, num_frames, h, w)
        extra = self.sample_backbone_kwargs(conditions)

        def denoise(x_t, t):
            cond = self._denoise(x_t, t, audio, ref, motion, keep, keep, **extra)
            if guidance_scale == 1.0:
                return cond
            uncond = self._denoise(x_t, t, audio, ref, motion, audio_keep_u, ref_keep_u, **extra)
            return cfg_combine(cond, uncond, guidance_scale)

        latents = self.diffusion.sample(
            denoise,
            shape,
            steps=steps,
            generator=generator,
            device=device,
            dtype=ref.dtype,
            progress=progress,
        )
        return self.codec.decode(latents).clamp(-1.0, 1.0)


def _kwargs(section) -> dict:
    """A config section without its ``name`` key, as plain Python kwargs."""
    data = (
        OmegaConf.to_container(section, resolve=True)
        if not isinstance(section, dict)
        else dict(section)
    )
    data.pop("name", None)
    return data


def build_audio_driven_diffusion(cfg) -> AudioDrivenDiffusion:
    """Build the model from a composed config (groups: frontend, backbone, codec, model, data)."""
    model_cfg, seed = cfg.model, cfg.get("seed", 0)
    with component_init(seed, "codec"):
        codec = CODECS.build(cfg.codec.name, **_kwargs(cfg.codec))
    with component_init(seed, "frontend"):
        frontend = FRONTENDS.build(
            cfg.frontend.name,
            sample_rate=cfg.data.sample_rate,
            fps=cfg.data.fps,
            cond_channels=codec.latent_channels,
            **_kwargs(cfg.frontend),
        )
    with component_init(seed, "backbone"):
        backbone = BACKBONES.build(
            cfg.backbone.name,
            in_channels=codec.latent_channels,
            audio_dim=frontend.dim,
            motion_frames=model_cfg.motion_frames,
            **_kwargs(cfg.backbone),
        )
    diffusion = diffusion_for_codec(_kwargs(model_cfg.diffusion), codec)
    return AudioDrivenDiffusion(
        frontend,
        backbone,
        codec,
        diffusion,
        audio_dropout=model_cfg.audio_dropout,
        ref_dropout=model_cfg.ref_dropout,
        guidance_drop=tuple(model_cfg.guidance_drop),
        motion_frames=model_cfg.motion_frames,
    )


register_model_spec(
    ModelSpec(
        name="singer",
        build=build_audio_driven_diffusion,
        description="SINGER: audio front-end (msm by default) + unet3d with SFM bottleneck + v-pred diffusion",
    )
)
