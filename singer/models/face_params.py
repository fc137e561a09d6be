"""``face_params``: the laptop proxy. Diffusion over SynthSing's face parameters, rendered to video.

**What it is for.** On 2 CPU cores the pixel-space video model does not learn to use its audio:
its windows are almost fully predicted by the reference and motion frames (see
``docs/results.md``). This model asks the same question, "which audio front-end drives the face
best?", at a cost a laptop can pay. It is AniPortrait's stage 1 on SynthSing: a diffusion model
over the per-frame face parameters (``K`` = 6: mouth opening and width, brows, sway, eye closure,
nod), conditioned on the **same registered audio front-ends** (``frontend=mel|msm|sfm|raw|...``,
with the same configs, including the MSM's gates on the noisy sample and the timestep), and
rendered to frames by SynthSing's own renderer. The evaluator, its metrics (read back from the
rendered frames by the estimator), the audio controls and the band ablation are the ones every
video model gets. The cluster path stays on the video backbones (``model=singer``).

**What it needs.** SynthSing data: each clip's identity (to render the right face) and the face
parameters of the reference and motion frames (``Conditions.extras``; the estimator recovers the
same values from those frames at r ≥ 0.99). It cannot render a face it has no identity for, so
``singer.generate`` with an arbitrary photo is not for this model.

**The model.** Cues are mapped to [-1, 1] (``x0``) and denoised by :class:`CueDenoiser`, a small
transformer over the F frames (plus M context frames): each frame token attends to the other
frames and reads its own frame's audio tokens; the reference frame's cues enter every token;
the timestep modulates every block. With ``bottleneck_filter: sfm`` the middle
features pass through the SFM's 1-D counterpart (``SpectralFilter1d``: wavelet sub-band gains
along time, identity at init). v-prediction, zero terminal SNR, floored min-SNR, DDIM + CFG,
condition dropout with learned null tokens: the diffusion of every model in the harness.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from singer.backbones.blocks import TimestepEmbedding, sinusoidal_embedding
from singer.data.identity import identity_dict
from singer.data.synth import render_face
from singer.diffusion import GaussianDiffusion, cfg_combine, drop_conditions
from singer.models.singer import _kwargs
from singer.models.spec import (
    Conditions,
    ModelSpec,
    component_init,
    dropout_on,
    register_model_spec,
)
from singer.registry import FRONTENDS
from singer.wavelets import SpectralFilter1d

CUES = ("mouth_open", "mouth_width", "brow", "sway", "eye_close", "nod")  # synth.FACE_CUES
SIGNED = np.array([c == "sway" for c in CUES])  # sway lives in [-1, 1], the rest in [0, 1]


def cues_to_x0(cues: torch.Tensor) -> torch.Tensor:
    """Cues ``…×K`` (truth units) → [-1, 1] (``[0, 1]`` cues as ``2c − 1``, sway as is)."""
    signed = torch.as_tensor(SIGNED, device=cues.device)
    return torch.where(signed, cues, 2.0 * cues - 1.0)


def x0_to_cues(x0: torch.Tensor) -> torch.Tensor:
    signed = torch.as_tensor(SIGNED, device=x0.device)
    x0 = x0.clamp(-1.0, 1.0)
    return torch.where(signed, x0, (x0 + 1.0) / 2.0)


class _Block(nn.Module):
    """Pre-norm: self-attention over frames, then an MLP that reads each frame's token together
    with that frame's audio features, then an MLP; each norm modulated by the timestep (shift
    and scale, zero-initialised)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(width, elementwise_affine=False) for _ in range(3))
        self.self_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.audio_mlp = nn.Sequential(
            nn.Linear(2 * width, 2 * width), nn.GELU(), nn.Linear(2 * width, width)
        )
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )
        self.modulation = nn.Linear(width, 6 * width)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """``x: B×T×W``, ``emb: B×W``, ``audio: B×T×W`` (per-frame audio features) → ``B×T×W``."""
        mods = self.modulation(emb).unsqueeze(1).chunk(6, dim=-1)

        def norm(i, h):
            return self.norms[i](h) * (1 + mods[2 * i]) + mods[2 * i + 1]

        h = norm(0, x)
        x = x + self.self_attn(h, h, h, need_weights=False)[0]
        x = x + self.audio_mlp(torch.cat([norm(1, x), audio], dim=-1))
        return x + self.mlp(norm(2, x))


class CueDenoiser(nn.Module):
    """Denoiser over face-parameter sequences.

    ``forward(x_t B×K×F, t B, audio B×F×N×D | None, ref B×K | None, motion B×M×K | None,
    audio_keep B | None, ref_keep B | None) → B×K×F``. A frame's N audio tokens are projected to
    one feature per frame that every block reads beside that frame's token. Dropped conditions
    (None, or keep False) are learned null tokens, as in the video backbones.
    """

    def __init__(
        self,
        cues: int,
        audio_dim: int,
        audio_tokens: int,
        *,
        width: int = 96,
        layers: int = 4,
        heads: int = 4,
        motion_frames: int = 2,
        bottleneck_filter: str = "sfm",
        filter_levels: int = 2,
        filter_wavelet: str = "haar",
    ):
        super().__init__()

        if bottleneck_filter not in ("sfm", "none"):
            raise ValueError(f"bottleneck_filter must be sfm or none, got {bottleneck_filter!r}")
        self.cues, self.audio_dim, self.width = cues, audio_dim, width
        self.motion_frames = motion_frames
        self.in_proj = nn.Linear(2 * cues, width)  # noisy cues + the reference's cues
        self.context_proj = nn.Linear(2 * cues, width)  # a context frame's cues + the reference's
        self.type_embed = nn.Embedding(2, width)  # generated | context
        self.time_embed = TimestepEmbedding(width, width)
        self.null_audio = nn.Parameter(torch.zeros(audio_dim))
        self.null_ref = nn.Parameter(torch.zeros(cues))
        self.audio_proj = nn.Linear(audio_tokens * audio_dim, width)  # a frame's N tokens → W
        self.blocks = nn.ModuleList(_Block(width, heads) for _ in range(layers))
        self.middle = layers // 2
        self.bottleneck = (
            SpectralFilter1d(width, levels=filter_levels, wavelet=filter_wavelet)
            if bottleneck_filter == "sfm"
            else nn.Identity()
        )
        self.norm_out = nn.LayerNorm(width)
        self.out = nn.Linear(width, cues)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x_t, t, audio=None, ref=None, motion=None, audio_keep=None, ref_keep=None):
        b, k, f = x_t.shape
        dtype = x_t.dtype
        null_ref = self.null_ref.to(dtype).expand(b, -1)
        if ref is None:
            ref = null_ref
        elif ref_keep is not None:
            ref = torch.where(ref_keep.view(b, 1), ref.to(dtype), null_ref)
        frames = x_t.transpose(1, 2)  # B×F×K
        tokens = self.in_proj(torch.cat([frames, ref[:, None].expand(-1, f, -1)], dim=-1))
        tokens = tokens + self.type_embed.weight[0]
        m = 0 if motion is None or self.motion_frames == 0 else motion.shape[1]
        if m:
            context = self.context_proj(
                torch.cat([motion.to(dtype), ref[:, None].expand(-1, m, -1)], -1)
            )
            tokens = torch.cat([context + self.type_embed.weight[1], tokens], dim=1)
        positions = torch.arange(self.motion_frames - m, self.motion_frames + f, device=x_t.device)
        tokens = tokens + sinusoidal_embedding(positions.float(), self.width).to(dtype)

        null = self.null_audio.to(dtype)
        tokens_per_frame = self.audio_proj.in_features // self.audio_dim
        if audio is None:
            audio = null.expand(b, f, tokens_per_frame, -1)
        elif audio_keep is not None:
            audio = torch.where(audio_keep.view(b, 1, 1, 1), audio.to(dtype), null.expand_as(audio))
        if m:
            audio = torch.cat([null.expand(b, m, audio.shape[2], -1), audio.to(dtype)], dim=1)

        emb = self.time_embed(torch.as_tensor(t, device=x_t.device).expand(b))
        audio = self.audio_proj(audio.to(dtype).flatten(2))  # B×(M+F)×W
        h = tokens
        for i, block in enumerate(self.blocks):
            if i == self.middle:
                h = self.bottleneck(h.transpose(1, 2)).transpose(1, 2)
            h = block(h, emb, audio)
        return self.out(self.norm_out(h[:, m:])).transpose(1, 2)


class FaceParamDiffusion(nn.Module):
    """Audio front-end + :class:`CueDenoiser` + diffusion over cues; ``generate`` renders video."""

    def __init__(
        self,
        frontend: nn.Module,
        denoiser: CueDenoiser,
        diffusion: GaussianDiffusion,
        *,
        audio_dropout: float = 0.05,
        ref_dropout: float = 0.05,
        motion_frames: int = 2,
    ):
        super().__init__()
        self.frontend, self.denoiser, self.diffusion = frontend, denoiser, diffusion
        self.audio_dropout, self.ref_dropout = audio_dropout, ref_dropout
        self.motion_frames = motion_frames

    def _denoise(self, x_t, t, audio, ref, motion, audio_keep, ref_keep):
        # The front-end sees the noisy sample as B×K×F×1×1 (the video layout, 1×1 frames).
        tokens = self.frontend(audio, x_t.shape[2], x_t=x_t[..., None, None], t=t)
        return self.denoiser(x_t, t, tokens, ref, motion, audio_keep, ref_keep)

    def _conditions(self, ref_cues: torch.Tensor, motion_cues: torch.Tensor | None):
        ref = cues_to_x0(ref_cues)
        if motion_cues is None or self.motion_frames == 0:
            return ref, None
        return ref, cues_to_x0(motion_cues[:, -self.motion_frames :])

    def training_loss(self, batch: dict, generator: torch.Generator | None = None):
        """The diffusion loss on the clips' truth cues (``batch["cues"]`` B×F×K)."""
        if not bool(torch.as_tensor(batch.get("has_cues", False)).all()):
            raise ValueError(
                "model=face_params trains on SynthSing face parameters; this batch has clips "
                "without ground truth (use SynthSing data, or a video model for your own videos)"
            )
        x0 = cues_to_x0(batch["cues"]).transpose(1, 2)  # B×K×F
        ref, motion = self._conditions(batch["ref_cues"], batch.get("motion_cues"))
        b = x0.shape[0]
        audio_keep = ~drop_conditions(b, self.audio_dropout * dropout_on(batch), generator).to(
            x0.device
        )
        ref_keep = ~drop_conditions(b, self.ref_dropout * dropout_on(batch), generator).to(
            x0.device
        )

        def denoise(x_t, t):
            return self._denoise(x_t, t, batch["audio"], ref, motion, audio_keep, ref_keep)

        return self.diffusion.training_loss(denoise, x0, generator=generator)

    @torch.no_grad()
    def generate_cues(
        self,
        conditions: Conditions,
        *,
        steps: int = 25,
        guidance_scale: float = 2.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """DDIM + CFG (dropping the audio) → cues ``B×F×K`` in truth units."""
        extras = conditions.extras or {}
        if "ref_cues" not in extras:
            raise ValueError(
                "model=face_params needs the face parameters of the reference frame "
                "(Conditions.extras['ref_cues']), which SynthSing data provide"
            )
        audio = conditions.audio
        b, device = audio.shape[0], audio.device
        ref, motion = self._conditions(extras["ref_cues"], extras.get("motion_cues"))
        keep = torch.ones(b, dtype=torch.bool, device=device)

        def denoise(x_t, t):
            cond = self._denoise(x_t, t, audio, ref, motion, keep, keep)
            if guidance_scale == 1.0:
                return cond
            uncond = self._denoise(x_t, t, audio, ref, motion, ~keep, keep)
            return cfg_combine(cond, uncond, guidance_scale)

        shape = (b, self.denoiser.cues, conditions.num_frames)
        x0 = self.diffusion.sample(denoise, shape, steps=steps, generator=generator, device=device)
        return x0_to_cues(x0.transpose(1, 2))

    @torch.no_grad()
    def generate(self, conditions: Conditions, **options) -> torch.Tensor:
        """Cues rendered with each clip's identity → video ``B×3×F×H×W`` in [-1, 1] (H = W =
        the reference frame's size)."""
        extras = conditions.extras or {}
        if "identity" not in extras:
            raise ValueError(
                "model=face_params renders SynthSing faces and needs each clip's identity "
                "(Conditions.extras['identity']), which SynthSing data provide"
            )
        cues = self.generate_cues(conditions, **options).cpu().numpy()
        size = int(conditions.ref.shape[-1])
        videos = []
        for i in range(cues.shape[0]):
            params = {name: cues[i, :, k] for k, name in enumerate(CUES)}
            frames = render_face(params, identity_dict(extras["identity"][i].cpu().numpy()), size)
            videos.append(torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1.0)
        return torch.stack(videos).to(conditions.audio.device)


def build_face_params(cfg) -> FaceParamDiffusion:
    mc, seed = cfg.model, cfg.get("seed", 0)
    with component_init(seed, "frontend"):
        frontend = FRONTENDS.build(
            cfg.frontend.name,
            sample_rate=cfg.data.sample_rate,
            fps=cfg.data.fps,
            cond_channels=len(CUES),
            **_kwargs(cfg.frontend),
        )
    with component_init(seed, "backbone"):
        denoiser = CueDenoiser(
            len(CUES),
            frontend.dim,
            frontend.tokens,
            motion_frames=int(mc.motion_frames),
            **_kwargs(mc.denoiser),
        )
    diffusion = _kwargs(mc.diffusion)
    if diffusion.get("clip_sample", "auto") in ("auto", None):
        diffusion["clip_sample"] = True  # cues live in [-1, 1]: the sampler may clip its x0
    return FaceParamDiffusion(
        frontend,
        denoiser,
        GaussianDiffusion(**diffusion),
        audio_dropout=float(mc.audio_dropout),
        ref_dropout=float(mc.ref_dropout),
        motion_frames=int(mc.motion_frames),
    )


register_model_spec(
    ModelSpec(
        name="face_params",
        build=build_face_params,
        description="LAPTOP PROXY: diffusion over SynthSing face parameters (any front-end), rendered by SynthSing's renderer",
    )
)
