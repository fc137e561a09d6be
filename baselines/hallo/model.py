"""Hallo as a subclass of the harness's AudioDrivenDiffusion: same front-end, backbone and
diffusion modules, plus region masks passed to the backbone's audio attention."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch

from baselines.hallo.regions import GEOMETRIES, REGIONS, region_masks
from singer.diffusion import GaussianDiffusion, drop_conditions
from singer.models.singer import AudioDrivenDiffusion, build_audio_driven_diffusion
from singer.models.spec import Conditions, dropout_on


def region_weighted_loss(
    diffusion: GaussianDiffusion,
    denoise_fn,
    x0: torch.Tensor,
    pixel_weight: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``diffusion.training_loss`` with a per-pixel weight ``B×1×F×H×W`` on the squared error.

    Same draws of t and noise (same generator calls, same order) and the same min-SNR weight;
    ``mse`` in the logs stays the unweighted error, comparable with every other model.
    """
    batch = x0.shape[0]
    device = generator.device if generator is not None else x0.device
    t = torch.randint(
        0, diffusion.num_train_timesteps, (batch,), generator=generator, device=device
    ).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=device, dtype=x0.dtype).to(x0.device)
    x_t = diffusion.add_noise(x0, noise, t)
    target = diffusion.target(x0, noise, t)
    error = (denoise_fn(x_t, t).float() - target.float()).pow(2)
    mse = error.flatten(1).mean(dim=1)
    weighted = (error * pixel_weight.float()).flatten(1).mean(dim=1)
    weight = diffusion.loss_weight(diffusion.snr(t))
    loss = (weight * weighted).mean()
    return loss, {
        "mse": mse.mean().item(),
        "weighted_mse": weighted.mean().item(),
        "weight_mean": weight.mean().item(),
        "t_mean": t.float().mean().item(),
    }


class HalloDiffusion(AudioDrivenDiffusion):
    """AudioDrivenDiffusion whose backbone audio attention is gated by lip/face/pose masks.

    Args (besides AudioDrivenDiffusion's):
        geometry: ``synthsing`` | ``face_box`` (see :mod:`baselines.hallo.regions`).
        follow_motion: on clips with per-frame truth, move the masks with the head (training).
        scales: lip, face, pose multipliers of the masks at sampling (Hallo's inference-time
            lip/expression/pose weights; 1 = as trained).
        loss_weights: extra loss weight per region: the squared error is weighted by
            ``1 + Σ_r loss_weights[r] · mask_r`` (all 0 = the plain diffusion loss).
    """

    def __init__(
        self,
        *args,
        geometry: str = "synthsing",
        follow_motion: bool = True,
        scales: Sequence[float] = (1.0, 1.0, 1.0),
        loss_weights: Sequence[float] = (0.0, 0.0, 0.0),
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if geometry not in GEOMETRIES:
            raise ValueError(
                f"model.regions.geometry must be one of {', '.join(GEOMETRIES)}, got '{geometry}'"
            )
        for name, values in (("scales", scales), ("loss_weights", loss_weights)):
            if len(values) != len(REGIONS):
                raise ValueError(
                    f"model.regions.{name} needs one value per region {REGIONS}, got {list(values)}"
                )
        if getattr(self.backbone, "audio_regions", 0) not in (0, len(REGIONS)):
            raise ValueError(f"backbone.audio_regions must be 0 or {len(REGIONS)} for hallo")
        self.geometry = geometry
        self.follow_motion = follow_motion
        self.scales = tuple(float(s) for s in scales)
        self.loss_weights = tuple(float(w) for w in loss_weights)
        self._masks: torch.Tensor | None = None

    def masks(
        self,
        batch_size: int,
        num_frames: int,
        height: int,
        width: int,
        *,
        device,
        cues: torch.Tensor | None = None,
        has_cues: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Region masks ``B×3×F×H×W`` for this model's geometry (moving with the cues if asked)."""
        if not self.follow_motion:
            cues = None
        return region_masks(
            self.geometry,
            batch_size,
            num_frames,
            height,
            width,
            cues=cues,
            has_cues=has_cues,
            device=device,
        )

    @contextmanager
    def _using_masks(self, masks: torch.Tensor | None):
        self._masks = masks
        try:
            yield
        finally:
            self._masks = None

    def _denoise(self, x_t, t, audio, ref, motion, audio_keep, ref_keep):
        num_frames = x_t.shape[2]
        tokens = self.frontend(audio, num_frames, x_t=x_t, t=t)
        return self.backbone(
            x_t,
            t,
            tokens,
            ref,
            motion,
            region_masks=self._masks,
            audio_keep=audio_keep,
            ref_keep=ref_keep,
        )

    def training_loss(self, batch: dict, generator: torch.Generator | None = None):
        video = batch["video"]
        b, _, f, h, w = video.shape
        masks = self.masks(
            b, f, h, w, device=video.device, cues=batch.get("cues"), has_cues=batch.get("has_cues")
        )
        with self._using_masks(masks):
            if not any(self.loss_weights):
                return super().training_loss(batch, generator)
            x0 = self.codec.encode(video)
            ref = self.codec.encode_frames(batch["ref"])
            motion = self._motion(batch.get("motion"))
            audio_keep = ~drop_conditions(b, self.audio_dropout * dropout_on(batch), generator).to(
                video.device
            )
            ref_keep = ~drop_conditions(b, self.ref_dropout * dropout_on(batch), generator).to(
                video.device
            )
            lam = torch.tensor(self.loss_weights, device=video.device).view(1, -1, 1, 1, 1)
            pixel_weight = 1.0 + (masks * lam).sum(dim=1, keepdim=True)  # B×1×F×H×W
            if tuple(pixel_weight.shape[-2:]) != tuple(x0.shape[-2:]):  # a latent codec
                pw = pixel_weight.transpose(1, 2).reshape(b * f, 1, h, w)
                pw = torch.nn.functional.interpolate(pw, size=x0.shape[-2:], mode="area")
                pixel_weight = pw.reshape(b, f, 1, *x0.shape[-2:]).transpose(1, 2)

            def denoise(x_t, t):
                return self._denoise(x_t, t, batch["audio"], ref, motion, audio_keep, ref_keep)

            return region_weighted_loss(self.diffusion, denoise, x0, pixel_weight, generator)

    @torch.no_grad()
    def generate(self, conditions: Conditions, **options) -> torch.Tensor:
        """Sampling with static (rest-pose) masks scaled by ``scales`` (no truth at test time)."""
        ref = conditions.ref
        masks = self.masks(
            ref.shape[0], conditions.num_frames, ref.shape[-2], ref.shape[-1], device=ref.device
        )
        masks = masks * torch.tensor(self.scales, device=ref.device).view(1, -1, 1, 1, 1)
        with self._using_masks(masks):
            return super().generate(conditions, **options)


def _resolve_geometry(cfg) -> str:
    geometry = str(cfg.model.regions.geometry)
    if geometry == "auto":  # SynthSing (no prepared cache given) → its renderer's geometry
        return "face_box" if cfg.data.get("cache_dir") else "synthsing"
    return geometry


def build_hallo(cfg) -> HalloDiffusion:
    """Build from a composed config: SINGER's builder for every part, then the Hallo wrapper."""
    base = build_audio_driven_diffusion(cfg)
    regions = cfg.model.regions
    model = HalloDiffusion(
        base.frontend,
        base.backbone,
        base.codec,
        base.diffusion,
        audio_dropout=base.audio_dropout,
        ref_dropout=base.ref_dropout,
        guidance_drop=base.guidance_drop,
        motion_frames=base.motion_frames,
        geometry=_resolve_geometry(cfg),
        follow_motion=bool(regions.follow_motion),
        scales=tuple(regions.scales),
        loss_weights=tuple(regions.loss_weights),
    )
    if cfg.model.get("grad_checkpointing") and hasattr(model.backbone, "set_grad_checkpointing"):
        model.backbone.set_grad_checkpointing(True)
    return model
