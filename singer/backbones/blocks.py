"""Building blocks shared by the video backbones.

Layout conventions inside the backbones: frames are folded into the batch for every 2-D
operation, so a feature map is ``(B·F)×C×H×W``; token sequences are ``batch×L×C``
(channels last) as ``scaled_dot_product_attention`` wants them.

Every attention and feed-forward block is residual with a zero-initialised output
projection, so a freshly built block is exactly the identity. The backbone then starts as
a plain spatio-temporal conv UNet and the conditioning paths grow in during training,
which keeps early training stable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn


def group_count(channels: int, max_groups: int = 8) -> int:
    """The largest number of GroupNorm groups ``<= max_groups`` that divides ``channels``."""
    for groups in range(min(max_groups, channels), 0, -1):
        if channels % groups == 0:
            return groups
    return 1


def norm2d(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(group_count(channels), channels, eps=1e-6)


def zero_init(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero (used for output projections)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def sinusoidal_embedding(
    positions: torch.Tensor, dim: int, max_period: float = 10000.0
) -> torch.Tensor:
    """Sinusoidal features of (possibly fractional) positions.

    Args:
        positions: any shape ``S``, e.g. diffusion timesteps ``B`` or frame indices ``F``.
        dim: feature size (odd sizes get one zero feature appended).

    Returns:
        ``S×dim`` float tensor: ``[cos(p·ω_k), sin(p·ω_k)]`` with geometric frequencies ω_k.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period)
        * torch.arange(half, dtype=torch.float32, device=positions.device)
        / max(half, 1)
    )
    args = positions.float().unsqueeze(-1) * freqs
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    """Diffusion timestep ``B`` (int) → embedding ``B×embed_dim`` (sinusoid + 2-layer MLP)."""

    def __init__(self, base_dim: int, embed_dim: int):
        super().__init__()
        self.base_dim = base_dim
        self.mlp = nn.Sequential(
            nn.Linear(base_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal_embedding(t, self.base_dim))


class ResBlock2d(nn.Module):
    """Spatial residual block with timestep FiLM: ``(N×C_in×H×W, N×E) → N×C_out×H×W``.

    GroupNorm → SiLU → 3×3 conv → GroupNorm·(1+scale)+shift → SiLU → dropout → 3×3 conv,
    plus a 1×1 conv on the skip path when the channel count changes.
    """

    def __init__(self, in_channels: int, out_channels: int, embed_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = norm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(embed_dim, 2 * out_channels)
        self.norm2 = norm2d(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = (
            nn.Conv2d(in_channels, out_channels, 1)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb_proj(F.silu(emb)).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Downsample2d(nn.Module):
    """Stride-2 3×3 conv: ``N×C×H×W → N×C×H/2×W/2``."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample2d(nn.Module):
    """Nearest ×2 then 3×3 conv: ``N×C_in×H×W → N×C_out×2H×2W``.

    The conv already maps to the (smaller) width of the next level, which halves the cost of
    the most expensive conv of the up path compared with keeping ``C_in``.
    """

    def __init__(self, in_channels: int, out_channels: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels or in_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Attention(nn.Module):
    """Multi-head (cross-)attention on channels-last tokens via ``scaled_dot_product_attention``.

    ``x: N×L×C`` attends to ``context: N×S×C_ctx`` (``context=None`` → self-attention);
    returns ``N×L×C``. The output projection starts at zero.
    """

    def __init__(self, dim: int, heads: int, context_dim: int | None = None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by attention_heads={heads}")
        self.heads = heads
        context_dim = dim if context_dim is None else context_dim
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = zero_init(nn.Linear(dim, dim))

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # N×L×C → N×heads×L×C/heads
        n, length, c = x.shape
        return x.view(n, length, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q, k, v = (
            self._split(self.to_q(x)),
            self._split(self.to_k(context)),
            self._split(self.to_v(context)),
        )
        out = F.scaled_dot_product_attention(q, k, v)
        n, _, length, _ = out.shape
        return self.to_out(out.transpose(1, 2).reshape(n, length, -1))


class FrameTransformer(nn.Module):
    """The attention stack after each ResBlock: spatial, temporal, audio, feed-forward.

    Works on frame-folded feature maps ``(B·F)×C×H×W`` and returns the same shape. Each
    sub-block is pre-norm and residual, with its output projection zero-initialised:

    * spatial self-attention (optional; used at the lowest resolution only, where H·W is small):
      the H·W tokens of one frame attend to each other;
    * temporal self-attention: each spatial location attends across the F frames, with a
      sinusoidal frame-position embedding added to its input (positions come from the caller
      so generated frames keep the same positions with or without motion frames);
    * audio cross-attention: the H·W tokens of frame f (queries) attend to the N audio tokens
      of frame f (keys/values, projected from ``audio_dim``), after a LayerNorm on the audio.
      Optional region gating (Hallo's hierarchical audio attention): with ``audio_regions=R``
      and ``region_masks`` given, the attention output is multiplied per location by
      ``Σ_r w_r · mask_r`` with learned per-region weights ``w_r`` (initialised to 1), so masks
      that sum to 1 leave a fresh block unchanged; without masks nothing changes;
    * feed-forward: ``timm.layers.Mlp`` (GELU, ×2 width).
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        audio_dim: int,
        *,
        spatial: bool = False,
        temporal: bool = True,
        audio: bool = True,
        mlp_ratio: float = 2.0,
        audio_regions: int = 0,
    ):
        super().__init__()
        if audio_regions < 0:
            raise ValueError(f"audio_regions must be >= 0, got {audio_regions}")
        self.channels = channels
        self.audio_regions = audio_regions if audio else 0
        if spatial:
            self.spatial_norm = nn.LayerNorm(channels)
            self.spatial_attn = Attention(channels, heads)
        if temporal:
            self.temporal_norm = nn.LayerNorm(channels)
            self.temporal_attn = Attention(channels, heads)
        if audio:
            self.audio_norm = nn.LayerNorm(channels)
            self.audio_context_norm = nn.LayerNorm(audio_dim)
            self.audio_attn = Attention(channels, heads, context_dim=audio_dim)
            if audio_regions:
                self.audio_region_weights = nn.Parameter(torch.ones(audio_regions))
        self.ff_norm = nn.LayerNorm(channels)
        self.ff = Mlp(channels, hidden_features=int(channels * mlp_ratio))
        zero_init(self.ff.fc2)
        self.spatial, self.temporal, self.audio = spatial, temporal, audio

    def forward(
        self,
        x: torch.Tensor,
        num_frames: int,
        frame_positions: torch.Tensor,
        audio: torch.Tensor | None,
        region_masks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            x: ``(B·F)×C×H×W`` features, frames folded into the batch (frame-major per sample).
            num_frames: F (needed to unfold the batch).
            frame_positions: ``F`` frame indices for the temporal position embedding.
            audio: ``(B·F)×N×D`` audio tokens per frame (required when audio attention is on).
            region_masks: ``(B·F)×R×H×W`` soft region masks gating the audio attention output
                (used only when the block was built with ``audio_regions=R``; None = ungated).
        """
        bf, c, h, w = x.shape
        b = bf // num_frames
        tokens = x.flatten(2).transpose(1, 2)  # (B·F)×HW×C

        if self.spatial:
            tokens = tokens + self.spatial_attn(self.spatial_norm(tokens))

        if self.temporal:
            # (B·F)×HW×C → (B·HW)×F×C: every location is a sequence over frames.
            seq = (
                tokens.reshape(b, num_frames, h * w, c)
                .transpose(1, 2)
                .reshape(b * h * w, num_frames, c)
            )
            pos = sinusoidal_embedding(frame_positions, c).to(seq.dtype)
            seq = seq + self.temporal_attn(self.temporal_norm(seq) + pos)
            tokens = seq.reshape(b, h * w, num_frames, c).transpose(1, 2).reshape(bf, h * w, c)

        if self.audio:
            if audio is None:
                raise ValueError("audio tokens are required by the audio cross-attention")
            attended = self.audio_attn(self.audio_norm(tokens), self.audio_context_norm(audio))
            if region_masks is not None and self.audio_regions:
                if tuple(region_masks.shape) != (bf, self.audio_regions, h, w):
                    raise ValueError(
                        f"region_masks must be (B·F)×R×H×W = {bf}×{self.audio_regions}×{h}×{w}, "
                        f"got shape {tuple(region_masks.shape)}"
                    )
                weights = self.audio_region_weights.to(attended.dtype)
                gate = torch.einsum("nrhw,r->nhw", region_masks.to(attended.dtype), weights)
                attended = attended * gate.reshape(bf, h * w, 1)
            tokens = tokens + attended

        tokens = tokens + self.ff(self.ff_norm(tokens))
        return tokens.transpose(1, 2).reshape(bf, c, h, w)


def check_condition_shapes(backbone: nn.Module, x_t, audio, ref, motion, region_masks) -> None:
    """Shape checks of the conditions shared by every backbone (``x_t`` is ``B×C×F×H×W``).

    ``backbone`` has ``audio_attention``, ``audio_dim``, ``reference``, ``motion_frames`` and
    ``audio_regions``; a condition whose path is switched off is not checked (it is ignored).
    """
    b, c, f, h, w = x_t.shape
    if audio is not None and backbone.audio_attention:
        if audio.dim() != 4 or audio.shape[:2] != (b, f) or audio.shape[-1] != backbone.audio_dim:
            raise ValueError(
                f"audio must be B×F×N×D = {b}×{f}×N×{backbone.audio_dim}, got shape {tuple(audio.shape)}"
            )
    if ref is not None and backbone.reference:
        if tuple(ref.shape) != (b, c, h, w):
            raise ValueError(f"ref must be B×C×H×W = {b}×{c}×{h}×{w}, got shape {tuple(ref.shape)}")
    if motion is not None and backbone.motion_frames > 0:
        expected = (b, c, backbone.motion_frames, h, w)
        if tuple(motion.shape) != expected:
            raise ValueError(
                f"motion must be B×C×M×H×W = {'×'.join(map(str, expected))}, got shape {tuple(motion.shape)}"
            )
    if region_masks is not None and backbone.audio_regions:
        if region_masks.dim() != 5 or tuple(region_masks.shape[:3]) != (
            b,
            backbone.audio_regions,
            f,
        ):
            raise ValueError(
                f"region_masks must be B×R×F×H×W = {b}×{backbone.audio_regions}×{f}×H×W, "
                f"got shape {tuple(region_masks.shape)}"
            )
