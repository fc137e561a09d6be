"""AniPortrait's two stages on the harness's front-ends, unet3d and GaussianDiffusion."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from baselines.aniportrait.motion import (
    CUE,
    K,
    MOTION_CHANNELS,
    REST,
    clamp_motion,
    default_detector,
    face_box_motion,
    render_motion,
)
from singer.backbones.blocks import sinusoidal_embedding
from singer.diffusion import GaussianDiffusion, cfg_combine, diffusion_for_codec, drop_conditions
from singer.inference import resolve_checkpoint
from singer.models.singer import _kwargs
from singer.models.spec import Conditions, component_init, dropout_on
from singer.registry import BACKBONES, CODECS, FRONTENDS

STAGES = ("both", "audio2motion", "motion2video")


class Audio2Motion(nn.Module):
    """Stage 1: waveform ``B×S`` → face motion parameters ``B×F×K``.

    An audio front-end gives per-frame tokens ``B×F×N×D``; they are flattened per frame, projected
    to ``width``, given a sinusoidal frame position, mixed over time by a transformer encoder
    (AniPortrait's audio-to-pose model is a transformer too) and read out linearly per frame.
    """

    def __init__(
        self,
        frontend: nn.Module,
        *,
        width: int = 64,
        layers: int = 2,
        heads: int = 4,
        outputs: int = K,
    ):
        super().__init__()
        self.frontend = frontend
        self.width = width
        self.proj = nn.Linear(frontend.tokens * frontend.dim, width)
        layer = nn.TransformerEncoderLayer(
            width, heads, dim_feedforward=2 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.temporal = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, outputs))

    def forward(self, wav: torch.Tensor, num_frames: int) -> torch.Tensor:
        tokens = self.frontend(wav, num_frames)  # B×F×N×D
        x = self.proj(tokens.flatten(2))
        positions = torch.arange(num_frames, device=x.device)
        x = x + sinusoidal_embedding(positions, self.width).to(x.dtype)
        return self.head(self.temporal(x))


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    weight = valid.to(prediction.dtype)
    return ((prediction - target) ** 2 * weight).sum() / weight.sum().clamp(min=1.0)


class AniPortrait(nn.Module):
    """Two-stage audio → motion → video model.

    Training (``stage``): ``audio2motion`` trains stage 1 only (stage 2 frozen), ``motion2video``
    stage 2 only (stage 1 frozen), ``both`` the sum ``video_loss + motion_loss_weight ·
    motion_loss``. Stage 2 always trains on the ground-truth motion (teacher forcing); sampling
    renders the motion stage 1 predicts from the audio.

    The backbone sees ``[x_t, motion image]`` (3 + 3 channels) and predicts the 3 video channels;
    the reference and motion frames get zero motion channels (their motion is not known at
    sampling). Classifier-free guidance drops the motion image (``pose``) and/or the reference.
    """

    def __init__(
        self,
        audio2motion: Audio2Motion,
        backbone: nn.Module,
        codec: nn.Module,
        diffusion: GaussianDiffusion,
        *,
        stage: str = "both",
        motion_loss_weight: float = 1.0,
        pose_dropout: float = 0.05,
        ref_dropout: float = 0.05,
        guidance_drop: Sequence[str] = ("pose",),
        motion_frames: int = 2,
        real_motion: str = "face_box",
    ):
        super().__init__()
        if stage not in STAGES:
            raise ValueError(f"model.stage must be one of {', '.join(STAGES)}, got '{stage}'")
        unknown = set(guidance_drop) - {"pose", "ref"}
        if unknown:
            raise ValueError(f"guidance_drop accepts 'pose' and 'ref', got {sorted(unknown)}")
        if real_motion not in ("face_box", "none"):
            raise ValueError(f"model.real_motion must be face_box or none, got '{real_motion}'")
        self.audio2motion = audio2motion
        self.backbone = backbone
        self.codec = codec
        self.diffusion = diffusion
        self.stage = stage
        self.motion_loss_weight = motion_loss_weight
        self.pose_dropout, self.ref_dropout = pose_dropout, ref_dropout
        self.guidance_drop = tuple(guidance_drop)
        self.motion_frames = motion_frames
        self.real_motion = real_motion
        self._detector = None
        self.freeze_other_stage()

    def freeze_other_stage(self) -> None:
        """Stop gradients into the stage that this run does not train."""
        self.audio2motion.requires_grad_(self.stage != "motion2video")
        for part in (self.backbone, self.codec):
            part.requires_grad_(self.stage != "audio2motion")
        # A frozen pretrained audio encoder inside the front-end stays frozen.
        encoder = getattr(self.audio2motion.frontend, "encoder", None)
        if encoder is not None and hasattr(self.audio2motion.frontend, "encoder_layers"):
            encoder.requires_grad_(False)

    # -- motion targets -------------------------------------------------------------------
    def motion_targets(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Ground-truth motion ``B×F×K`` and its validity: the cues where a clip has truth, the
        face-box trajectory (sway, nod only) elsewhere, or nothing with ``real_motion=none``."""
        video = batch["video"]
        b, _, f = video.shape[:3]
        cues = batch.get("cues")
        has = batch.get("has_cues")
        has = (
            torch.zeros(b, dtype=torch.bool, device=video.device)
            if has is None
            else has.to(video.device).bool()
        )
        target = REST.to(video.device).repeat(b, f, 1)
        valid = torch.zeros(b, f, K, dtype=torch.bool, device=video.device)
        if cues is not None and has.any():
            target[has] = cues[has].to(target)
            valid[has] = True
        missing = ~has
        if missing.any() and self.real_motion == "face_box":
            if self._detector is None:
                self._detector = default_detector()
            box_motion, box_valid = face_box_motion(video[missing], self._detector)
            target[missing] = box_motion.to(target)
            valid[missing] = box_valid
        return target, valid

    # -- stage 2 -------------------------------------------------------------------------
    def _with_zero_motion(self, x: torch.Tensor | None) -> torch.Tensor | None:
        if x is None:
            return None
        zeros = x.new_zeros(x.shape[0], MOTION_CHANNELS, *x.shape[2:])
        return torch.cat([x, zeros], dim=1)

    def _context(self, motion: torch.Tensor | None) -> torch.Tensor | None:
        if self.motion_frames == 0 or motion is None:
            return None
        return self._with_zero_motion(self.codec.encode_frames(motion[:, :, -self.motion_frames :]))

    def _motion_image(self, motion: torch.Tensor, latent_shape) -> torch.Tensor:
        return render_motion(motion, latent_shape[-2], latent_shape[-1])

    def _denoise(self, x_t, t, pose, ref, context, pose_keep, ref_keep):
        # The pose image has no learned "absent" input: a dropped pose is a zero image. The
        # reference uses the backbone's own absent-reference input.
        pose = pose * pose_keep.to(pose.dtype).view(-1, 1, 1, 1, 1)
        return self.backbone(
            torch.cat([x_t, pose.to(x_t.dtype)], dim=1), t, None, ref, context, ref_keep=ref_keep
        )

    def video_loss(self, batch: dict, motion: torch.Tensor, generator=None):
        video = batch["video"]
        x0 = self.codec.encode(video)
        pose = self._motion_image(motion, x0.shape)
        ref = self._with_zero_motion(self.codec.encode_frames(batch["ref"]))
        context = self._context(batch.get("motion"))
        b = video.shape[0]
        pose_keep = ~drop_conditions(b, self.pose_dropout * dropout_on(batch), generator).to(
            video.device
        )
        ref_keep = ~drop_conditions(b, self.ref_dropout * dropout_on(batch), generator).to(
            video.device
        )

        def denoise(x_t, t):
            return self._denoise(x_t, t, pose, ref, context, pose_keep, ref_keep)

        return self.diffusion.training_loss(denoise, x0, generator=generator)

    # -- training ------------------------------------------------------------------------
    def training_loss(self, batch: dict, generator: torch.Generator | None = None):
        target, valid = self.motion_targets(batch)
        logs: dict[str, float] = {}
        loss = batch["video"].new_zeros(())
        if self.stage in ("both", "audio2motion"):
            predicted = self.audio2motion(batch["audio"], batch["video"].shape[2])
            motion_loss = masked_mse(predicted.float(), target.float(), valid)
            loss = loss + self.motion_loss_weight * motion_loss
            logs["motion_mse"] = motion_loss.item()
            for name, i in CUE.items():
                if valid[..., i].any():
                    logs[f"motion_mse/{name}"] = masked_mse(
                        predicted[..., i].float(), target[..., i].float(), valid[..., i]
                    ).item()
        if self.stage in ("both", "motion2video"):
            video_loss, video_logs = self.video_loss(batch, target, generator)  # teacher forcing
            loss = loss + video_loss
            logs.update(video_logs)
            logs["video_loss"] = video_loss.item()
        else:
            logs["mse"] = logs["motion_mse"]
        return loss, logs

    # -- sampling ------------------------------------------------------------------------
    @torch.no_grad()
    def predict_motion(self, audio: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Stage 1 at test time: clamped motion parameters ``B×F×K``."""
        return clamp_motion(self.audio2motion(audio, num_frames))

    @torch.no_grad()
    def generate(
        self,
        conditions: Conditions,
        *,
        steps: int = 40,
        guidance_scale: float = 3.5,
        generator: torch.Generator | None = None,
        progress: bool = False,
        motion: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Audio → predicted motion (or the given ``motion`` ``B×F×K``) → video ``B×3×F×H×W``."""
        audio, num_frames = conditions.audio, conditions.num_frames
        device = audio.device
        if motion is None and conditions.extras:
            motion = conditions.extras.get("motion_params")
        if motion is None:
            motion = self.predict_motion(audio, num_frames)
        ref_latent = self.codec.encode_frames(conditions.ref)
        ref = self._with_zero_motion(ref_latent)
        context = self._context(conditions.motion)
        b = audio.shape[0]
        c, h, w = ref_latent.shape[1], ref_latent.shape[-2], ref_latent.shape[-1]
        pose = self._motion_image(motion.to(device), (b, c, num_frames, h, w))
        keep = torch.ones(b, dtype=torch.bool, device=device)
        pose_keep_u = keep & ("pose" not in self.guidance_drop)
        ref_keep_u = keep & ("ref" not in self.guidance_drop)

        def denoise(x_t, t):
            cond = self._denoise(x_t, t, pose, ref, context, keep, keep)
            if guidance_scale == 1.0:
                return cond
            uncond = self._denoise(x_t, t, pose, ref, context, pose_keep_u, ref_keep_u)
            return cfg_combine(cond, uncond, guidance_scale)

        latents = self.diffusion.sample(
            denoise,
            (b, c, num_frames, h, w),
            steps=steps,
            generator=generator,
            device=device,
            dtype=ref_latent.dtype,
            progress=progress,
        )
        return self.codec.decode(latents).clamp(-1.0, 1.0)


def load_stage(model: AniPortrait, path: str, prefixes: tuple[str, ...], key: str) -> None:
    """Load the ``prefixes`` parts of a trainer checkpoint (its EMA weights) into ``model``."""
    try:
        file = resolve_checkpoint(path)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{key}={path}: {err}") from None
    state = torch.load(file, map_location="cpu", weights_only=True)
    weights = state.get("ema", state.get("model", state)) if isinstance(state, dict) else state
    part = {k: v for k, v in weights.items() if k.startswith(prefixes)}
    if not part:
        raise ValueError(
            f"{key}={path} holds no {'/'.join(prefixes)} weights (is it an aniportrait run?)"
        )
    own = model.state_dict()
    wanted = {k for k in own if k.startswith(prefixes)}
    missing = sorted(wanted - part.keys())
    if missing:
        raise ValueError(f"{key}={path} lacks {len(missing)} weights, e.g. {missing[:3]}")
    mismatched = [k for k in part if k in own and own[k].shape != part[k].shape]
    if mismatched:
        raise ValueError(
            f"{key}={path} was trained at other sizes: {mismatched[:3]} (use the same model config)"
        )
    model.load_state_dict({**own, **{k: v for k, v in part.items() if k in own}})


def build_aniportrait(cfg) -> AniPortrait:
    """Build from a composed config (groups frontend, backbone, codec, model, data)."""
    mc, seed = cfg.model, cfg.get("seed", 0)
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
    a2m = mc.audio2motion
    with component_init(seed, "audio2motion"):
        audio2motion = Audio2Motion(
            frontend, width=int(a2m.width), layers=int(a2m.layers), heads=int(a2m.heads)
        )
    backbone_kwargs = _kwargs(cfg.backbone)
    backbone_kwargs.update(audio_attention=False, out_channels=codec.latent_channels)
    with component_init(seed, "backbone"):
        backbone = BACKBONES.build(
            cfg.backbone.name,
            in_channels=codec.latent_channels + MOTION_CHANNELS,
            audio_dim=frontend.dim,
            motion_frames=mc.motion_frames,
            **backbone_kwargs,
        )
    model = AniPortrait(
        audio2motion,
        backbone,
        codec,
        diffusion_for_codec(_kwargs(mc.diffusion), codec),
        stage=str(mc.stage),
        motion_loss_weight=float(mc.motion_loss_weight),
        pose_dropout=float(mc.pose_dropout),
        ref_dropout=float(mc.ref_dropout),
        guidance_drop=tuple(mc.guidance_drop),
        motion_frames=int(mc.motion_frames),
        real_motion=str(mc.real_motion),
    )
    checkpoints = mc.get("checkpoints") or {}
    if checkpoints.get("audio2motion"):
        load_stage(
            model,
            str(checkpoints["audio2motion"]),
            ("audio2motion.",),
            "model.checkpoints.audio2motion",
        )
    if checkpoints.get("motion2video"):
        load_stage(
            model,
            str(checkpoints["motion2video"]),
            ("backbone.", "codec."),
            "model.checkpoints.motion2video",
        )
    model.freeze_other_stage()
    return model


__all__ = ["STAGES", "AniPortrait", "Audio2Motion", "build_aniportrait", "load_stage"]
