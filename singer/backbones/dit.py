"""DiT: a video diffusion transformer on timm blocks, with per-frame audio cross-attention.

The second backbone of the harness, a drop-in replacement for ``unet3d`` (same constructor
keywords from the model builder, same ``forward`` contract). It follows DiT (Peebles & Xie,
2023) extended to video the way Latte / video DiTs do:

* **patches**: every frame (or every ``temporal_patch`` frames, a tubelet) is cut into
  ``patch_size × patch_size`` patches by ``timm.layers.PatchEmbed``; a frame of ``H×W`` becomes
  ``L = (H/p)·(W/p)`` tokens of width ``hidden_size``. Fixed 2-D sin-cos positions are added for
  the patch grid and 1-D sinusoidal positions for the frame, so any frame size divisible by
  ``p`` works.
* **attention** (``attention``):

  - ``factorised``: each block runs spatial self-attention over the tokens of one frame, then
    temporal self-attention over the frames at each patch position (cost ``O(T·L² + L·T²)``);
  - ``full``: one self-attention over all tokens of the clip (``O((T·L)²)``).

  Self-attention is ``timm.layers.Attention``, which calls
  ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU).
* **adaLN-zero** timestep conditioning: each block predicts shift / scale / gate for each of its
  sub-layers from the per-frame conditioning vector (timestep embedding + frame-type embedding)
  with a linear layer initialised at zero, so every gate starts at 0 and **every block is the
  identity at init**. The final layer is adaLN + a zero-initialised linear (output 0 at init).
* **audio cross-attention per frame**: the tokens of frame f (queries) attend to the N audio
  tokens of frame f (keys / values), gated by the block's adaLN gate (frames of a tubelet pool
  their audio tokens).

Conditions (``None`` = dropped, for classifier-free guidance), as in ``unet3d``:

* **audio** ``B×F×N×D``: dropped → a learned null audio token for every frame.
* **reference frame** ``B×C×H×W``: patch-embedded by its own ``PatchEmbed`` into L reference
  tokens (same 2-D positions, since the faces of a clip stay roughly pixel-aligned with the
  reference, plus a learned "reference" type vector). ``factorised``: the reference tokens are
  prepended to every frame's tokens, so the spatial attention of each frame reads the identity;
  every frame's copy then evolves with that frame (and shares its conditioning).
  ``full``: the reference tokens are prepended once to the clip's sequence, conditioned like a
  clean frame (t = 0, frame type "reference"). Dropped → the learned null reference token at every reference position.
* **motion frames** ``B×C×M×H×W``: prepended as clean context frames (timestep embedding of
  t = 0, frame type "context", null audio). The output holds only the F generated frames, and
  generated frames always sit at frame positions ``M..M+F-1``, with or without context frames.
* **region masks** ``B×R×F×H×W`` (optional, with ``audio_regions=R``): soft masks that gate the
  audio cross-attention output per token, ``Σ_r w_r · mask_r`` with learned per-block weights
  initialised to 1 (Hallo's hierarchical audio attention, as ``unet3d`` does it). Masks are
  averaged over a tubelet and area-resized to the patch grid; context frames take the first
  frame's masks. ``None`` (the default) or ``audio_regions=0`` is the ungated attention.

**SFM at the middle layer** (``bottleneck_filter``): after the first ``depth // 2`` blocks the
frame tokens are put back on their patch grid, ``(B·T)×hidden×h×w``, and pass the same per-frame
spectral-filtering module as ``unet3d``'s bottleneck (``singer.backbones.sfm``; identity at init).
The key shares ``unet3d``'s name, so ``backbone.bottleneck_filter=none`` ablates it for either
backbone.

``set_grad_checkpointing()`` (timm-style) recomputes each transformer block in the backward pass.

Token layout inside the blocks: ``B×G×S×D`` (batch, groups, tokens per group, width).
``factorised``: the groups are the T frames (or tubelets) and a group holds the R reference
tokens (0 or L) followed by the frame's L tokens. ``full``: the groups are the reference (if any)
then the T frames, each of L tokens; attention flattens them to ``B×(G·L)×D``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import Attention as SelfAttention
from timm.layers import Mlp, PatchEmbed
from torch import nn
from torch.utils.checkpoint import checkpoint

from singer.backbones.blocks import Attention as CrossAttention
from singer.backbones.blocks import TimestepEmbedding, check_condition_shapes, sinusoidal_embedding
from singer.backbones.sfm import build_bottleneck_filter
from singer.registry import BACKBONES

ATTENTION_MODES = ("factorised", "full")
# Frame types for the frame-type embedding.
GENERATED, CONTEXT, REFERENCE = 0, 1, 2


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: ``x · (1 + scale) + shift`` (shift / scale broadcast over the tokens of a group)."""
    return x * (1 + scale) + shift


def sincos_2d(height: int, width: int, dim: int, device=None) -> torch.Tensor:
    """Fixed 2-D positions of an ``height×width`` patch grid → ``(height·width)×dim``.

    Half of the features encode the row, half the column (sinusoids of
    :func:`singer.backbones.blocks.sinusoidal_embedding`).
    """
    rows = sinusoidal_embedding(torch.arange(height, device=device), dim // 2)
    cols = sinusoidal_embedding(torch.arange(width, device=device), dim - dim // 2)
    grid = torch.cat(
        [rows[:, None].expand(-1, width, -1), cols[None].expand(height, -1, -1)], dim=-1
    )
    return grid.reshape(height * width, dim)


@dataclass(frozen=True)
class TokenLayout:
    """Where the frame tokens sit in a ``B×G×S×D`` token tensor.

    ``factorised``: G = T frames, S = ``prefix`` reference tokens + L frame tokens.
    ``full``: G = ``prefix`` reference groups (0 or 1) + T frame groups, S = L.
    """

    factorised: bool
    prefix: int

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` → (reference part, frame part ``B×T×L×D``)."""
        dim = 2 if self.factorised else 1
        return x.narrow(dim, 0, self.prefix), x.narrow(dim, self.prefix, x.shape[dim] - self.prefix)

    def join(self, ref: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        if self.prefix == 0:
            return frames
        return torch.cat([ref, frames], dim=2 if self.factorised else 1)

    def frame_rows(self, per_group: torch.Tensor) -> torch.Tensor:
        """The frame groups' rows of a per-group tensor ``B×G×...`` (all rows when factorised)."""
        return per_group if self.factorised else per_group[:, self.prefix :]


class DiTBlock(nn.Module):
    """One transformer block: self-attention (spatial then temporal, or full), audio
    cross-attention, MLP; each sub-layer pre-norm, adaLN-modulated and gated (adaLN-zero).

    ``forward(x: B×G×S×D, cond: B×G×D, layout, audio: (B·T)×N×D_a | None,
    region_gate: B×T×L×R | None) → B×G×S×D``. With the modulation at its zero init every gate
    is 0 and the block returns ``x`` unchanged.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        audio_dim: int,
        *,
        factorised: bool = True,
        audio: bool = True,
        mlp_ratio: float = 4.0,
        qk_norm: bool = True,
        audio_regions: int = 0,
    ):
        super().__init__()
        self.factorised, self.audio = factorised, audio
        self.audio_regions = audio_regions if audio else 0

        def self_attention() -> SelfAttention:
            return SelfAttention(
                dim, num_heads=heads, qkv_bias=True, qk_norm=qk_norm, norm_layer=nn.LayerNorm
            )

        self.norm_attn = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = self_attention()  # spatial when factorised, else over the whole clip
        if factorised:
            self.norm_temporal = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
            self.temporal_attn = self_attention()
        if audio:
            self.norm_audio = nn.LayerNorm(dim, eps=1e-6)
            self.audio_context_norm = nn.LayerNorm(audio_dim)
            self.audio_attn = CrossAttention(dim, heads, context_dim=audio_dim)
            if self.audio_regions:
                self.audio_region_weights = nn.Parameter(torch.ones(self.audio_regions))
        self.norm_mlp = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(
            dim,
            hidden_features=int(dim * mlp_ratio),
            act_layer=partial(nn.GELU, approximate="tanh"),
        )
        # shift/scale/gate per sub-layer; the audio sub-layer has a gate only.
        self.num_modulations = 3 + (3 if factorised else 0) + (1 if audio else 0) + 3
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, self.num_modulations * dim))

    def forward(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        layout: TokenLayout,
        audio: torch.Tensor | None = None,
        region_masks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            x: tokens ``B×G×S×D`` (see :class:`TokenLayout`).
            cond: conditioning per group ``B×G×D``.
            layout: where the frame tokens sit in ``x``.
            audio: audio tokens per frame ``(B·T)×N×D_a`` (required with audio attention).
            region_masks: ``B×T×L×R`` region masks on the patch grid, or ``None`` (ungated).
        """
        b, g, s, d = x.shape
        mods = iter(
            self.modulation(cond).unsqueeze(2).chunk(self.num_modulations, dim=-1)
        )  # B×G×1×D each

        # Self-attention: per frame (factorised) or over the whole clip (full).
        shift, scale, gate = next(mods), next(mods), next(mods)
        h = modulate(self.norm_attn(x), shift, scale)
        h = self.attn(h.reshape(b * g, s, d) if self.factorised else h.reshape(b, g * s, d))
        x = x + gate * h.reshape(b, g, s, d)

        # Temporal self-attention over the frames at each patch position (frame tokens only).
        if self.factorised:
            shift, scale, gate = next(mods), next(mods), next(mods)
            ref, frames = layout.split(x)
            t, length = frames.shape[1], frames.shape[2]
            h = modulate(self.norm_temporal(frames), shift, scale)
            h = h.transpose(1, 2).reshape(b * length, t, d)
            h = self.temporal_attn(h).reshape(b, length, t, d).transpose(1, 2)
            x = layout.join(ref, frames + gate * h)

        # Audio cross-attention: frame f's tokens read frame f's audio tokens.
        if self.audio:
            if audio is None:
                raise ValueError("audio tokens are required by the audio cross-attention")
            gate = layout.frame_rows(next(mods))
            ref, frames = layout.split(x)
            t, length = frames.shape[1], frames.shape[2]
            h = self.audio_attn(
                self.norm_audio(frames).reshape(b * t, length, d), self.audio_context_norm(audio)
            )
            h = h.reshape(b, t, length, d)
            if region_masks is not None and self.audio_regions:
                weights = self.audio_region_weights.to(h.dtype)
                h = h * (region_masks.to(h.dtype) @ weights).unsqueeze(-1)
            x = layout.join(ref, frames + gate * h)

        shift, scale, gate = next(mods), next(mods), next(mods)
        return x + gate * self.mlp(modulate(self.norm_mlp(x), shift, scale))


class FinalLayer(nn.Module):
    """adaLN (shift, scale) + linear to the pixels of a patch: ``B×T×L×D → B×T×L×(pt·p·p·C_out)``.

    Modulation and linear start at zero, so a fresh model outputs zeros.
    """

    def __init__(self, dim: int, patch_values: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, patch_values)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(cond).unsqueeze(2).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


@BACKBONES.register("dit")
class VideoDiT(nn.Module):
    """Video diffusion transformer (timm blocks, adaLN-zero) with per-frame audio cross-attention.

    ``forward(x_t: B×C×F×H×W, t: B, audio: B×F×N×D | None, ref: B×C×H×W | None,
    motion: B×C×M×H×W | None, region_masks: B×R×F×H×W | None) → B×C_out×F×H×W``.

    Args:
        in_channels: channels C of the denoised video (3 in pixel space, 4 for SD-VAE latents).
        out_channels: output channels; ``None`` → ``in_channels``.
        hidden_size: token width D.
        depth: number of transformer blocks.
        num_heads: attention heads (must divide ``hidden_size``).
        mlp_ratio: MLP hidden width / ``hidden_size``.
        patch_size: spatial patch p; H and W must be divisible by it.
        temporal_patch: frames per token (tubelet length); F and ``motion_frames`` must be
            divisible by it. 1 = one token grid per frame.
        attention: ``"factorised"`` (spatial then temporal attention per block) or ``"full"``
            (one attention over all tokens of the clip).
        qk_norm: LayerNorm on queries and keys of the self-attention (stabilises training).
        audio_dim: D_a, the width of the audio tokens.
        audio_attention: audio cross-attention in every block.
        motion_frames: M, clean context frames from the previous clip (0 disables).
        reference: condition on a reference frame (reference tokens).
        bottleneck_filter: ``"sfm"`` or ``"none"``: the spectral filter on the frame tokens after
            the first ``depth // 2`` blocks.
        sfm_levels, sfm_wavelet: wavelet levels and name of the SFM.
        audio_regions: R, region masks that gate the audio cross-attention (0 = no gating;
            ``region_masks`` are then ignored).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int | None = None,
        hidden_size: int = 128,
        depth: int = 5,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        patch_size: int = 4,
        temporal_patch: int = 1,
        attention: str = "factorised",
        qk_norm: bool = True,
        audio_dim: int = 64,
        audio_attention: bool = True,
        motion_frames: int = 2,
        reference: bool = True,
        bottleneck_filter: str = "sfm",
        sfm_levels: int = 1,
        sfm_wavelet: str = "haar",
        audio_regions: int = 0,
    ):
        super().__init__()
        if attention not in ATTENTION_MODES:
            raise ValueError(
                f"unknown attention '{attention}'; choose one of: {', '.join(ATTENTION_MODES)}"
            )
        if hidden_size % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide hidden_size={hidden_size}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if patch_size < 1 or temporal_patch < 1:
            raise ValueError(
                f"patch_size and temporal_patch must be >= 1, got {patch_size}, {temporal_patch}"
            )
        if motion_frames < 0:
            raise ValueError(f"motion_frames must be >= 0, got {motion_frames}")
        if motion_frames % temporal_patch:
            raise ValueError(
                f"motion_frames={motion_frames} must be divisible by temporal_patch={temporal_patch}"
            )
        if audio_regions < 0:
            raise ValueError(f"audio_regions must be >= 0, got {audio_regions}")
        self.in_channels = in_channels
        self.out_channels = in_channels if out_channels is None else out_channels
        self.hidden_size = hidden_size
        self.patch_size = patch_size
        self.temporal_patch = temporal_patch
        self.attention = attention
        self.audio_dim = audio_dim
        self.audio_attention = audio_attention
        self.audio_regions = int(audio_regions) if audio_attention else 0
        self.motion_frames = motion_frames
        self.reference = reference
        self.grad_checkpointing = False
        self.size_multiple = patch_size

        def patch_embed(channels: int) -> PatchEmbed:
            return PatchEmbed(
                img_size=None, patch_size=patch_size, in_chans=channels, embed_dim=hidden_size
            )

        # A tubelet of pt frames is one image of pt·C channels for the patch embedding.
        self.patch_embed = patch_embed(in_channels * temporal_patch)
        if reference:
            self.ref_embed = patch_embed(in_channels)
            self.ref_type = nn.Parameter(torch.zeros(hidden_size))
            # Stands in for the patch tokens of a dropped reference (per-sample dropout).
            self.null_ref = nn.Parameter(torch.zeros(hidden_size))
        self.time_embed = TimestepEmbedding(hidden_size, hidden_size)
        self.frame_type_embed = nn.Embedding(3, hidden_size)  # generated | context | reference
        if audio_attention:
            # Stands in for the audio tokens of frames without audio (dropped audio, context frames).
            self.null_audio = nn.Parameter(torch.zeros(audio_dim))

        self.blocks = nn.ModuleList(
            DiTBlock(
                hidden_size,
                num_heads,
                audio_dim,
                factorised=attention == "factorised",
                audio=audio_attention,
                mlp_ratio=mlp_ratio,
                qk_norm=qk_norm,
                audio_regions=self.audio_regions,
            )
            for _ in range(depth)
        )
        self.mid_index = depth // 2  # the SFM runs before block ``mid_index``
        self.bottleneck = build_bottleneck_filter(
            bottleneck_filter, hidden_size, sfm_levels, sfm_wavelet
        )
        self.final = FinalLayer(
            hidden_size, temporal_patch * patch_size * patch_size * self.out_channels
        )
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT's init: Xavier linears and patch projections, then adaLN-zero and a zero output layer.

        The audio cross-attention's output projection is re-initialised too (``blocks.Attention``
        starts it at zero): here the adaLN gate in front of it is the zero, and a product of two
        zero-initialised factors would never receive a gradient.
        """
        bottleneck = set(self.bottleneck.modules())
        for module in self.modules():
            if module in bottleneck:  # the SFM keeps its own (identity) init
                continue
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for embed in (self.patch_embed, getattr(self, "ref_embed", None)):
            if embed is not None:
                nn.init.xavier_uniform_(embed.proj.weight.view(embed.proj.weight.shape[0], -1))
                nn.init.zeros_(embed.proj.bias)
        for layer in self.time_embed.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=0.02)
        nn.init.normal_(self.frame_type_embed.weight, std=0.02)
        if self.reference:
            nn.init.normal_(self.ref_type, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.modulation[-1].weight)
            nn.init.zeros_(block.modulation[-1].bias)
        for layer in (self.final.modulation[-1], self.final.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every transformer block in backward (timm's method name)."""
        self.grad_checkpointing = bool(enable)

    # -- input checks -------------------------------------------------------------------
    def _check_inputs(self, x_t, audio, ref, motion, region_masks=None) -> None:
        if x_t.dim() != 5:
            raise ValueError(f"x_t must be B×C×F×H×W, got shape {tuple(x_t.shape)}")
        _, c, f, h, w = x_t.shape
        if c != self.in_channels:
            raise ValueError(
                f"x_t has {c} channels but the backbone was built with in_channels={self.in_channels}"
            )
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"frame size {h}×{w} must be divisible by {self.patch_size} (patch_size)"
            )
        if f % self.temporal_patch:
            raise ValueError(
                f"{f} frames must be divisible by temporal_patch={self.temporal_patch}"
            )
        check_condition_shapes(self, x_t, audio, ref, motion, region_masks)

    # -- embedding and output -----------------------------------------------------------
    def embed_frames(self, frames: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Video ``B×C×T·pt×H×W`` → frame tokens ``B×T×L×D`` (patches + 2-D and frame positions).

        ``positions``: the frame positions of the T tubelets (their first frames), ``T``.
        """
        b, c, frames_total, h, w = frames.shape
        pt, t = self.temporal_patch, frames_total // self.temporal_patch
        # B×C×(T·pt)×H×W → (B·T)×(C·pt)×H×W: a tubelet's frames are stacked on the channels.
        images = (
            frames.reshape(b, c, t, pt, h, w).permute(0, 2, 1, 3, 4, 5).reshape(b * t, c * pt, h, w)
        )
        tokens = self.patch_embed(images).reshape(b, t, -1, self.hidden_size)
        grid = sincos_2d(
            h // self.patch_size, w // self.patch_size, self.hidden_size, frames.device
        )
        time = sinusoidal_embedding(positions.float() / pt, self.hidden_size)
        return tokens + (grid[None] + time[:, None]).to(tokens.dtype)

    def embed_reference(
        self, ref: torch.Tensor | None, *, batch: int = 0, size=(0, 0), dtype=None
    ) -> torch.Tensor:
        """Reference ``B×C×H×W`` → reference tokens ``B×L×D`` (patches + 2-D positions + type).

        ``ref=None``: the tokens of an absent reference for ``batch`` frames of ``size`` (H, W),
        the learned null token at every patch position.
        """
        if ref is None:
            h, w = size
            count = (h // self.patch_size) * (w // self.patch_size)
            tokens = self.null_ref.to(dtype).expand(batch, count, -1)
        else:
            tokens = self.ref_embed(ref)
            h, w = ref.shape[-2:]
        grid = sincos_2d(
            h // self.patch_size, w // self.patch_size, self.hidden_size, tokens.device
        )
        return tokens + (grid + self.ref_type).to(tokens.dtype)

    def unpatchify(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Patch values ``B×T×L×(pt·p·p·C_out)`` → video ``B×C_out×(T·pt)×H×W``."""
        b, t = tokens.shape[:2]
        p, pt, c = self.patch_size, self.temporal_patch, self.out_channels
        gh, gw = height // p, width // p
        x = tokens.reshape(b, t, gh, gw, pt, p, p, c)
        return x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(b, c, t * pt, height, width)

    # -- forward ------------------------------------------------------------------------
    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        audio: torch.Tensor | None = None,
        ref: torch.Tensor | None = None,
        motion: torch.Tensor | None = None,
        region_masks: torch.Tensor | None = None,
        audio_keep: torch.Tensor | None = None,
        ref_keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Denoiser output for the F generated frames.

        Args:
            x_t: noisy video ``B×C×F×H×W``.
            t: diffusion timesteps ``B`` (int64; a scalar is broadcast).
            audio: audio tokens ``B×F×N×D`` or ``None`` (dropped → learned null token).
            ref: reference frame ``B×C×H×W`` or ``None`` (dropped → null reference tokens).
            motion: clean context frames ``B×C×M×H×W`` or ``None`` (dropped → no context).
            region_masks: ``B×R×F×H×W`` soft masks gating the audio attention (any H×W), or
                ``None`` (ungated). Ignored unless ``audio_regions=R > 0``.
            audio_keep / ref_keep: ``B`` bool, per-sample condition dropout (classifier-free
                guidance): False → that sample gets the learned null audio token / the learned
                null reference token at every reference position. ``None`` keeps all.

        Returns:
            ``B×C_out×F×H×W``.

        A condition is ignored when its path is switched off (``audio_attention=False``,
        ``reference=False``, ``motion_frames=0``).
        """
        self._check_inputs(x_t, audio, ref, motion, region_masks)
        audio = audio if self.audio_attention else None
        ref = ref if self.reference else None
        motion = motion if self.motion_frames > 0 else None
        b, _, f, h, w = x_t.shape
        m = 0 if motion is None else motion.shape[2]
        pt = self.temporal_patch
        num_groups = (m + f) // pt  # T: frame token groups, context first
        device, dtype = x_t.device, x_t.dtype
        factorised = self.attention == "factorised"

        # Frame tokens B×T×L×D; generated frames keep positions M..M+F-1 with or without context.
        frames = x_t if motion is None else torch.cat([motion.to(dtype), x_t], dim=2)
        positions = torch.arange(self.motion_frames - m, self.motion_frames + f, device=device)[
            ::pt
        ]
        tokens = self.embed_frames(frames, positions)
        length = tokens.shape[2]

        # Conditioning per frame group B×T×D: timestep (0 for clean context) + frame type.
        t = torch.as_tensor(t, device=device)
        t = t.expand(b) if t.dim() == 0 else t
        temb = self.time_embed(t)[:, None].expand(b, num_groups, -1)
        clean = self.time_embed(torch.zeros(1, device=device))  # 1×D
        types = torch.full((num_groups,), GENERATED, device=device, dtype=torch.long)
        types[: m // pt] = CONTEXT
        is_context = (types == CONTEXT)[None, :, None]
        cond = torch.where(is_context, clean[:, None], temb) + self.frame_type_embed(types)

        # Reference tokens: prepended to each frame (factorised) or to the clip (full).
        # A dropped reference (None, or ref_keep False) is the learned null token at every
        # reference position, so "absent" looks the same however it was dropped.
        prefix = 0
        if self.reference:
            null_ref = self.embed_reference(None, batch=b, size=(h, w), dtype=dtype)  # B×L×D
            if ref is None:
                ref_tokens = null_ref
            else:
                ref_tokens = self.embed_reference(ref.to(dtype))
                if ref_keep is not None:
                    ref_tokens = torch.where(ref_keep.view(b, 1, 1), ref_tokens, null_ref)
            if factorised:
                prefix = length
                tokens = torch.cat(
                    [ref_tokens[:, None].expand(-1, num_groups, -1, -1), tokens], dim=2
                )
            else:
                prefix = 1
                tokens = torch.cat([ref_tokens[:, None], tokens], dim=1)
                ref_cond = clean + self.frame_type_embed.weight[REFERENCE]
                cond = torch.cat([ref_cond[:, None].expand(b, 1, -1), cond], dim=1)
        layout = TokenLayout(factorised=factorised, prefix=prefix)
        frame_cond = layout.frame_rows(cond)

        # Audio tokens per frame group: (B·T)×(pt·N)×D_a, the null token where there is no audio.
        context = None
        if self.audio_attention:
            null = self.null_audio.to(dtype)
            tokens_a = audio.to(dtype) if audio is not None else null.expand(b, f, 1, -1)
            if audio is not None and audio_keep is not None:
                tokens_a = torch.where(
                    audio_keep.view(b, 1, 1, 1), tokens_a, null.expand_as(tokens_a)
                )
            if m:
                tokens_a = torch.cat([null.expand(b, m, tokens_a.shape[2], -1), tokens_a], dim=1)
            context = tokens_a.reshape(b * num_groups, pt * tokens_a.shape[2], self.audio_dim)

        # Region masks on the patch grid, B×T×L×R (context frames take the first frame's masks).
        masks = None
        if region_masks is not None and self.audio_regions and context is not None:
            masks = region_masks.to(dtype)
            if m:
                masks = torch.cat([masks[:, :, :1].expand(-1, -1, m, -1, -1), masks], dim=2)
            r, mh, mw = masks.shape[1], masks.shape[-2], masks.shape[-1]
            masks = masks.reshape(b, r, num_groups, pt, mh, mw).mean(
                dim=3
            )  # average over a tubelet
            masks = masks.transpose(1, 2).reshape(b * num_groups, r, mh, mw)
            masks = F.interpolate(
                masks, size=(h // self.patch_size, w // self.patch_size), mode="area"
            )
            masks = masks.reshape(b, num_groups, r, length).transpose(2, 3)

        use_checkpoint = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        grid = (h // self.patch_size, w // self.patch_size)
        for index, block in enumerate(self.blocks):
            if index == self.mid_index:
                tokens = self._mid_filter(tokens, layout, grid)
            if use_checkpoint:
                tokens = checkpoint(
                    block, tokens, cond, layout, context, masks, use_reentrant=False
                )
            else:
                tokens = block(tokens, cond, layout, context, masks)

        _, frame_tokens = layout.split(tokens)
        out = self.unpatchify(self.final(frame_tokens, frame_cond), h, w)
        return out[:, :, m:].contiguous()

    def _mid_filter(
        self, tokens: torch.Tensor, layout: TokenLayout, grid: tuple[int, int]
    ) -> torch.Tensor:
        """The bottleneck filter (SFM) on each frame's tokens laid out on their patch grid."""
        if isinstance(self.bottleneck, nn.Identity):
            return tokens
        ref, frames = layout.split(tokens)
        b, t, length, d = frames.shape
        maps = frames.reshape(b * t, *grid, d).permute(0, 3, 1, 2)  # (B·T)×D×h×w
        maps = self.bottleneck(maps)
        frames = maps.permute(0, 2, 3, 1).reshape(b, t, length, d)
        return layout.join(ref, frames)
