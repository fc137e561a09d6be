"""UNet3D: a small spatio-temporal UNet denoiser for audio-driven face video.

The SINGER backbone in miniature: a 2-D conv UNet run on every frame (frames folded into the
batch), with attention blocks after each ResBlock that mix information across frames
(temporal self-attention, as AnimateDiff) and read the per-frame audio tokens (audio
cross-attention at every resolution, as Hallo/SINGER); the mid block adds spatial
self-attention. The SFM bottleneck filter sits between the mid block and the up path.

Layout: down levels of ``layers_per_block`` × (ResBlock → attention stack), one skip per
level; mid = ResBlock → attention stack → ResBlock → bottleneck filter; up levels mirror
the down path (upsample, concatenate the skip, ResBlocks). See ``blocks.FrameTransformer``
for the attention stack.

Conditions (``None`` = dropped, for classifier-free guidance):

* **audio** ``B×F×N×D``: per-frame tokens; frame f's spatial tokens attend to its N tokens.
  Dropped → a learned null audio token for every frame.
* **reference frame** ``B×C×H×W`` (identity): concatenated as extra input channels to every
  frame, plus one "reference present" channel. The faces of a clip stay close to
  pixel-aligned with the reference, so this cheap early fusion gives every conv direct
  access to the identity (skin, hair, background); the deeper layers' receptive field covers
  the head motion. Dropped → zeros in those channels with the presence channel at 0, so a
  dropped reference is never confused with a real (e.g. grey) one.
* **motion frames** ``B×C×M×H×W`` (the last M clean frames of the previous clip, to chain
  long videos): prepended on the frame axis as context frames. Each frame gets a learned
  frame-type embedding (context vs generated) added to its timestep embedding, and context
  frames use the timestep embedding of t=0 since they are clean. Temporal attention reads
  them; the output holds only the F generated frames. Generated frames always sit at frame
  positions M..M+F-1 of the temporal position embedding, with or without context, so
  dropping the motion frames does not shift the positions. ``motion_frames=0`` disables it.
* **region masks** ``B×R×F×H×W`` (optional, with ``audio_regions=R``): soft masks (e.g. lip,
  face, pose) that gate the audio cross-attention output per location, each with a learned
  per-block weight (Hallo's hierarchical audio attention, see ``blocks.FrameTransformer``).
  They are resized (area) to every resolution; context frames take the first frame's masks.
  ``None`` (the default) is the ungated attention.

``set_grad_checkpointing()`` (timm-style) recomputes every ResBlock and attention stack in the
backward pass instead of storing their activations (less memory, same loss and gradients).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from singer.backbones.blocks import (
    Downsample2d,
    FrameTransformer,
    ResBlock2d,
    TimestepEmbedding,
    check_condition_shapes,
    Upsample2d,
    norm2d,
)
from singer.backbones.sfm import build_bottleneck_filter
from singer.registry import BACKBONES

# Frame types for the frame-type embedding.
GENERATED, CONTEXT = 0, 1


@BACKBONES.register("unet3d")
class UNet3D(nn.Module):
    """Spatio-temporal UNet with per-frame audio cross-attention and an SFM bottleneck.

    ``forward(x_t: B×C×F×H×W, t: B, audio: B×F×N×D | None, ref: B×C×H×W | None,
    motion: B×C×M×H×W | None) → B×C×F×H×W``.

    Args:
        in_channels: channels C of the denoised video (3 in pixel space).
        out_channels: output channels; ``None`` → ``in_channels``.
        channels: widths of the resolution levels; H and W must be divisible by
            ``2 ** (len(channels) - 1)``.
        layers_per_block: ResBlock + attention layers per level, on the down and on the up path.
        audio_dim: D, the width of the audio tokens.
        attention_heads: heads of every attention block (must divide every width).
        temporal_attention: temporal self-attention after every ResBlock.
        audio_attention: audio cross-attention after every ResBlock (down, mid, up).
        spatial_attention: spatial self-attention in the mid block (the lowest resolution, where
            H·W is small enough for it to be cheap).
        motion_frames: M, clean context frames from the previous clip (0 disables).
        reference: condition on a reference frame (extra input channels).
        bottleneck_filter: ``"sfm"`` or ``"none"``, after the mid block.
        sfm_levels, sfm_wavelet: wavelet levels and name of the SFM.
        dropout: dropout inside the ResBlocks.
        audio_regions: R, number of region masks that gate the audio cross-attention output
            (0 = no gating; ``region_masks`` are then ignored).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int | None = None,
        channels: Sequence[int] = (32, 64, 128),
        layers_per_block: int = 1,
        audio_dim: int = 64,
        attention_heads: int = 4,
        temporal_attention: bool = True,
        audio_attention: bool = True,
        spatial_attention: bool = True,
        motion_frames: int = 2,
        reference: bool = True,
        bottleneck_filter: str = "sfm",
        sfm_levels: int = 1,
        sfm_wavelet: str = "haar",
        dropout: float = 0.0,
        audio_regions: int = 0,
    ):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if not channels:
            raise ValueError("channels must list at least one width")
        if layers_per_block < 1:
            raise ValueError(f"layers_per_block must be >= 1, got {layers_per_block}")
        if motion_frames < 0:
            raise ValueError(f"motion_frames must be >= 0, got {motion_frames}")
        bad = [c for c in channels if c % attention_heads]
        if bad:
            raise ValueError(
                f"attention_heads={attention_heads} must divide every width in channels={channels}"
            )
        self.in_channels = in_channels
        self.out_channels = in_channels if out_channels is None else out_channels
        self.channels = channels
        self.audio_dim = audio_dim
        self.motion_frames = motion_frames
        self.reference = reference
        self.audio_attention = audio_attention
        self.audio_regions = int(audio_regions) if audio_attention else 0
        self.grad_checkpointing = False
        self.size_multiple = 2 ** (len(channels) - 1)

        embed_dim = 4 * channels[0]
        self.time_embed = TimestepEmbedding(channels[0], embed_dim)
        if motion_frames > 0:
            self.frame_type_embed = nn.Embedding(2, embed_dim)
            nn.init.normal_(self.frame_type_embed.weight, std=0.02)
        if audio_attention:
            # Stands in for the audio tokens of frames without audio (dropped audio, context frames).
            self.null_audio = nn.Parameter(torch.zeros(audio_dim))

        def transformer(width: int, spatial: bool) -> FrameTransformer:
            return FrameTransformer(
                width,
                attention_heads,
                audio_dim,
                spatial=spatial,
                temporal=temporal_attention,
                audio=audio_attention,
                audio_regions=self.audio_regions,
            )

        # The reference adds C channels plus one "reference present" channel to every frame.
        conv_in_channels = in_channels + (in_channels + 1 if reference else 0)
        self.conv_in = nn.Conv2d(conv_in_channels, channels[0], 3, padding=1)

        # Down path: ResBlock + attention stack per layer; one skip connection per level.
        width = channels[0]
        self.down = nn.ModuleList()
        for level, level_width in enumerate(channels):
            lowest = level == len(channels) - 1
            stage = nn.Module()
            stage.resnets = nn.ModuleList()
            stage.attentions = nn.ModuleList()
            for _ in range(layers_per_block):
                stage.resnets.append(ResBlock2d(width, level_width, embed_dim, dropout))
                width = level_width
                stage.attentions.append(transformer(width, spatial=False))
            stage.downsample = None if lowest else Downsample2d(width)
            self.down.append(stage)

        # Mid block, then the bottleneck filter (SFM).
        self.mid_res1 = ResBlock2d(width, width, embed_dim, dropout)
        self.mid_attention = transformer(width, spatial=spatial_attention)
        self.mid_res2 = ResBlock2d(width, width, embed_dim, dropout)
        self.bottleneck = build_bottleneck_filter(bottleneck_filter, width, sfm_levels, sfm_wavelet)

        # Up path, lowest level first: (upsample to this level's width,) concatenate the level's
        # skip, then the same number of ResBlock + attention layers as on the way down.
        self.up = nn.ModuleList()
        for level in reversed(range(len(channels))):
            level_width = channels[level]
            stage = nn.Module()
            stage.upsample = None if level == len(channels) - 1 else Upsample2d(width, level_width)
            width = level_width
            stage.resnets = nn.ModuleList()
            stage.attentions = nn.ModuleList()
            for layer in range(layers_per_block):
                in_width = 2 * width if layer == 0 else width
                stage.resnets.append(ResBlock2d(in_width, width, embed_dim, dropout))
                stage.attentions.append(transformer(width, spatial=False))
            self.up.append(stage)

        self.norm_out = norm2d(width)
        self.conv_out = nn.Conv2d(width, self.out_channels, 3, padding=1)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute ResBlocks and attention stacks in backward (timm's method name)."""
        self.grad_checkpointing = bool(enable)

    # -- input checks -------------------------------------------------------------------
    def _check_inputs(self, x_t, audio, ref, motion, region_masks=None) -> None:
        if x_t.dim() != 5:
            raise ValueError(f"x_t must be B×C×F×H×W, got shape {tuple(x_t.shape)}")
        _, c, _, h, w = x_t.shape
        if c != self.in_channels:
            raise ValueError(
                f"x_t has {c} channels but the backbone was built with in_channels={self.in_channels}"
            )
        if h % self.size_multiple or w % self.size_multiple:
            raise ValueError(
                f"frame size {h}×{w} must be divisible by {self.size_multiple} "
                f"(2 ** (len(channels) - 1) with channels={self.channels})"
            )
        check_condition_shapes(self, x_t, audio, ref, motion, region_masks)

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
            ref: reference frame ``B×C×H×W`` or ``None`` (dropped → zero channels, flag 0).
            motion: clean context frames ``B×C×M×H×W`` or ``None`` (dropped → no context).
            region_masks: ``B×R×F×H×W`` soft masks gating the audio attention (any H×W; resized
                to every level), or ``None`` (ungated). Ignored unless ``audio_regions=R > 0``.
            audio_keep / ref_keep: ``B`` bool, per-sample condition dropout (classifier-free
                guidance): False → that sample gets the learned null audio token / an absent
                reference (zero channels, flag 0), exactly as a ``None`` condition. ``None`` keeps all.

        Returns:
            ``B×C_out×F×H×W``.

        A condition is ignored when its path is switched off (``audio_attention=False``,
        ``reference=False``, ``motion_frames=0``).
        """
        self._check_inputs(x_t, audio, ref, motion, region_masks)
        # A condition whose path is switched off (an ablation) is ignored, so callers need not
        # know which paths the backbone has.
        audio = audio if self.audio_attention else None
        ref = ref if self.reference else None
        motion = motion if self.motion_frames > 0 else None
        b, c, f, h, w = x_t.shape
        m = 0 if motion is None else motion.shape[2]
        total = m + f
        device, dtype = x_t.device, x_t.dtype

        # Frames (context first) folded into the batch: (B·(M+F))×C×H×W.
        frames = x_t if motion is None else torch.cat([motion.to(dtype), x_t], dim=2)
        x = frames.transpose(1, 2).reshape(b * total, c, h, w)
        if self.reference:
            if ref is None:  # dropped: a zero image with the presence flag at 0
                ref_in = x_t.new_zeros(b, c + 1, h, w)
            else:
                present = x_t.new_ones(b, 1, h, w)
                if ref_keep is not None:
                    present = present * ref_keep.to(dtype).view(b, 1, 1, 1)
                ref_in = torch.cat([ref.to(dtype) * present, present], dim=1)
            x = torch.cat([x, ref_in.repeat_interleave(total, dim=0)], dim=1)

        # Per-frame embedding: the timestep (0 for clean context frames) + the frame type.
        t = torch.as_tensor(t, device=device)
        t = t.expand(b) if t.dim() == 0 else t
        emb = self.time_embed(t).unsqueeze(1).expand(b, total, -1)
        if self.motion_frames > 0:
            types = torch.full((total,), GENERATED, device=device, dtype=torch.long)
            if m:
                types[:m] = CONTEXT
                clean = self.time_embed(torch.zeros(1, device=device)).unsqueeze(1).expand(b, m, -1)
                emb = torch.cat([clean, emb[:, m:]], dim=1)
            emb = emb + self.frame_type_embed(types)
        emb = emb.reshape(b * total, -1)

        # Audio tokens per frame: (B·(M+F))×N×D, the null token where there is no audio.
        context = None
        if self.audio_attention:
            null = self.null_audio.to(dtype)
            tokens = audio.to(dtype) if audio is not None else null.expand(b, f, 1, -1)
            if audio is not None and audio_keep is not None:
                tokens = torch.where(audio_keep.view(b, 1, 1, 1), tokens, null.expand_as(tokens))
            if m:
                tokens = torch.cat([null.expand(b, m, tokens.shape[2], -1), tokens], dim=1)
            context = tokens.reshape(b * total, tokens.shape[2], self.audio_dim)

        # Generated frames keep positions M..M+F-1 whether or not context frames are present.
        positions = torch.arange(self.motion_frames - m, self.motion_frames + f, device=device)

        # Region masks per frame, (B·(M+F))×R×H×W; context frames take the first frame's masks.
        masks = None
        if region_masks is not None and self.audio_regions and context is not None:
            masks = region_masks.to(dtype)
            if m:
                masks = torch.cat([masks[:, :, :1].expand(-1, -1, m, -1, -1), masks], dim=2)
            masks = masks.transpose(1, 2).reshape(b * total, self.audio_regions, *masks.shape[-2:])
        masks_at: dict[tuple[int, int], torch.Tensor] = {}

        def masks_for(size: tuple[int, int]) -> torch.Tensor | None:
            if masks is None:
                return None
            if size not in masks_at:
                same = tuple(masks.shape[-2:]) == size
                masks_at[size] = masks if same else F.interpolate(masks, size=size, mode="area")
            return masks_at[size]

        use_checkpoint = self.grad_checkpointing and self.training and torch.is_grad_enabled()

        def run(module: nn.Module, *args):
            if use_checkpoint:
                return checkpoint(module, *args, use_reentrant=False)
            return module(*args)

        def attend(block: FrameTransformer, h_: torch.Tensor) -> torch.Tensor:
            return run(block, h_, total, positions, context, masks_for(tuple(h_.shape[-2:])))

        h_ = self.conv_in(x)
        skips = []
        for stage in self.down:
            for resnet, attention in zip(stage.resnets, stage.attentions):
                h_ = attend(attention, run(resnet, h_, emb))
            skips.append(h_)
            if stage.downsample is not None:
                h_ = stage.downsample(h_)

        h_ = run(self.mid_res1, h_, emb)
        h_ = attend(self.mid_attention, h_)
        h_ = run(self.mid_res2, h_, emb)
        h_ = self.bottleneck(h_)

        for stage in self.up:
            if stage.upsample is not None:
                h_ = stage.upsample(h_)
            h_ = torch.cat([h_, skips.pop()], dim=1)
            for resnet, attention in zip(stage.resnets, stage.attentions):
                h_ = attend(attention, run(resnet, h_, emb))

        out = self.conv_out(F.silu(self.norm_out(h_)))
        out = out.reshape(b, total, self.out_channels, h, w)[:, m:]
        return out.transpose(1, 2).contiguous()
