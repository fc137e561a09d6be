"""Hallo as a subclass of the harness's AudioDrivenDiffusion: same front-end, backbone and
diffusion modules, plus region masks passed to the backbone's audio attention.

It overrides only AudioDrivenDiffusion's hooks: the backbone's extra inputs (the region masks,
from each batch or each sampling call) and the per-pixel loss weight; the training step and the
sampler are SINGER's own."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from baselines.hallo.regions import GEOMETRIES, REGIONS, region_masks
from singer.models.singer import AudioDrivenDiffusion, build_audio_driven_diffusion
from singer.models.spec import Conditions


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

    # -- AudioDrivenDiffusion's hooks -----------------------------------------------------
    def train_backbone_kwargs(self, batch: dict) -> dict[str, Any]:
        """Region masks ``B×3×F×H×W`` of the batch's frames (moving with the head on clips with truth)."""
        b, _, f, h, w = batch["video"].shape
        masks = self.masks(
            b,
            f,
            h,
            w,
            device=batch["video"].device,
            cues=batch.get("cues"),
            has_cues=batch.get("has_cues"),
        )
        return {"region_masks": masks}

    def sample_backbone_kwargs(self, conditions: Conditions) -> dict[str, Any]:
        """Static (rest-pose) masks scaled by ``scales``: there is no truth at test time."""
        ref = conditions.ref
        masks = self.masks(
            ref.shape[0], conditions.num_frames, ref.shape[-2], ref.shape[-1], device=ref.device
        )
        masks = masks * torch.tensor(self.scales, device=ref.device).view(1, -1, 1, 1, 1)
        return {"region_masks": masks}

    def loss_weight(
        self, batch: dict, x0: torch.Tensor, backbone_kwargs: dict[str, Any]
    ) -> torch.Tensor | None:
        """``1 + Σ_r loss_weights[r] · mask_r`` per pixel (``B×1×F×h×w``, area-resized to a
        latent grid), or None when every region weight is 0 (the plain loss)."""
        if not any(self.loss_weights):
            return None
        masks = backbone_kwargs["region_masks"]
        b, _, f, h, w = masks.shape
        lam = torch.tensor(self.loss_weights, device=masks.device).view(1, -1, 1, 1, 1)
        pixel_weight = 1.0 + (masks * lam).sum(dim=1, keepdim=True)  # B×1×F×H×W
        if tuple(pixel_weight.shape[-2:]) != tuple(x0.shape[-2:]):  # a latent codec
            pw = pixel_weight.transpose(1, 2).reshape(b * f, 1, h, w)
            pw = torch.nn.functional.interpolate(pw, size=x0.shape[-2:], mode="area")
            pixel_weight = pw.reshape(b, f, 1, *x0.shape[-2:]).transpose(1, 2)
        return pixel_weight


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
