"""Lip-sync metrics: LSE-C (Sync-C) and LSE-D (Sync-D) of the SyncNet evaluation protocol.

For each clip, every 5-frame video window ``i`` (0.2 s) gets an embedding ``v_i`` and every
0.2 s audio window ``j`` an embedding ``a_j``. For each offset ``d ∈ [-vshift, vshift]`` the mean
over video windows of ``‖v_i − a_{i+d}‖`` gives a distance curve ``D(d)``:

* ``LSE-D = min_d D(d)``                (lower is better)
* ``LSE-C = median_d D(d) − min_d D(d)`` (higher is better: a clear dip at one offset)

and the offset of the dip is the audio-video offset. Audio windows outside the clip count as
zero embeddings (``padding="zeros"``, the reference protocol and the default of ``sync``), or
those pairs are left out (``padding="valid"``, the default of ``sync_offline``: its embeddings
are unit vectors, so a zero embedding sits at distance 1, closer than any real pair with
negative cosine, and would win the minimum at the edge offsets). Following Prajwal et al.
(2020), LSE-C / LSE-D are the confidence and the minimum distance that SyncNet (Chung &
Zisserman 2016) reports per clip.

Two metrics:

``sync``          (keys ``sync_c``, ``sync_d``) the public SyncNet v2 weights, given by path:
                  ``metric_kwargs: {sync: {weights: /w/syncnet_v2.pt, sha256: <hex>}}``.
                  Frames are resized to 224², scaled to 0–255 in BGR order; audio becomes 13
                  MFCCs at 100 Hz on the int16 scale, as the reference pipeline reads wav files.
                  The network was trained at 25 fps and 16 kHz; other rates are resampled
                  (audio) or mapped to the nearest MFCC frame (video).
``sync_offline``  (keys ``sync_offline_c``, ``sync_offline_d``) a harness-trained expert
                  (``python -m singer.train model=syncnet``), given by run directory or .pt:
                  ``metric_kwargs: {sync_offline: {checkpoint: runs/sync_expert}}``. Distances
                  are between its unit embeddings (0 – 2), so values are comparable only
                  between evaluations that use the same expert checkpoint.

Both report per-clip values. A clip shorter than one window (5 frames) scores NaN, and the
reason is recorded in ``.reasons`` and warned once.
"""

from __future__ import annotations

import math
import warnings
import torch
import torch.nn.functional as F

from singer.metrics.base import EvalBatch, Metric
from singer.registry import METRICS

WINDOW = 5  # video frames per sync window (0.2 s at 25 fps)
PADDINGS = ("zeros", "valid")


def distance_curve(
    video_emb: torch.Tensor, audio_emb: torch.Tensor, vshift: int, padding: str = "zeros"
) -> torch.Tensor:
    """``D(d)`` for ``d = -vshift … vshift`` (length ``2·vshift+1``), from ``N×D`` embeddings.

    ``video_emb[i]`` and ``audio_emb[i]`` cover the same 0.2 s; ``D(d)`` averages
    ``‖video_emb[i] − audio_emb[i+d]‖`` over ``i``. Offsets with no valid pair are NaN
    (``padding="valid"`` only).
    """
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    v, a = video_emb.double(), audio_emb.double()
    n = v.shape[0]
    padded = F.pad(a, (0, 0, vshift, vshift))  # zero embeddings outside the clip
    idx = torch.arange(n)[:, None] + torch.arange(2 * vshift + 1)[None, :]  # N×(2v+1), into padded
    dist = (v[:, None, :] - padded[idx]).norm(dim=-1)  # N×(2v+1)
    if padding == "zeros":
        return dist.mean(dim=0)
    inside = (idx >= vshift) & (idx < vshift + n)
    total = (dist * inside).sum(dim=0)
    count = inside.sum(dim=0)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, math.nan))


def lse_scores(
    video_emb: torch.Tensor, audio_emb: torch.Tensor, vshift: int = 15, padding: str = "zeros"
) -> tuple[float, float, int]:
    """``(LSE-C, LSE-D, offset)`` of one clip from ``N×D`` video and audio window embeddings.

    ``offset`` is the ``d`` of the minimum: the audio window ``i+d`` matches video window ``i``
    best (positive: the audio event comes ``d`` frames after the face shows it, i.e. the audio
    lags). The reference code reports ``-d`` ("AV offset").
    """
    curve = distance_curve(video_emb, audio_emb, vshift, padding)
    finite = curve[torch.isfinite(curve)]
    if finite.numel() == 0:
        return math.nan, math.nan, 0
    best = int(
        torch.argmin(torch.where(torch.isfinite(curve), curve, torch.full_like(curve, math.inf)))
    )
    minval = float(curve[best])
    # torch.median takes the lower middle value, as the reference implementation does
    return float(torch.median(finite)) - minval, minval, best - vshift


class _SyncMetric(Metric):
    """Shared per-clip LSE bookkeeping; subclasses embed windows."""

    audio_driven = True

    keys: tuple[str, str] = ("", "")

    def __init__(self, *, vshift: int = 15, padding: str = "zeros"):
        if int(vshift) < 1:
            raise ValueError(f"vshift must be ≥ 1, got {vshift}")
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        self.vshift, self.padding = int(vshift), padding
        self.reset()

    def reset(self) -> None:
        self.conf: list[float] = []
        self.dist: list[float] = []
        self.offsets: list[int | None] = []
        self.reasons: list[str] = []

    def _skip(self, count: int, reason: str) -> None:
        if reason not in self.reasons:
            self.reasons.append(reason)
            warnings.warn(f"{self.name}: {reason}; those clips score NaN", stacklevel=3)
        self.conf += [math.nan] * count
        self.dist += [math.nan] * count
        self.offsets += [None] * count

    def _embed(self, video: torch.Tensor, audio: torch.Tensor, sample_rate: int, fps: float):
        """``(video_emb B×N×D, audio_emb B×N×D)`` for the N = F-4 windows of each clip."""
        raise NotImplementedError

    @torch.no_grad()
    def update(self, batch: EvalBatch) -> None:
        video, audio = batch.generated, batch.audio
        b, _, f = video.shape[:3]
        if f < WINDOW:
            self._skip(
                b, f"clips of {f} frames are shorter than one {WINDOW}-frame (0.2 s) sync window"
            )
            return
        # audio under the clip, padded with silence when short (AAC padding makes it longer)
        needed = round(f / batch.fps * batch.sample_rate)
        if audio.shape[-1] < needed:
            audio = F.pad(audio, (0, needed - audio.shape[-1]))
        video_emb, audio_emb = self._embed(
            video, audio[..., :needed], int(batch.sample_rate), float(batch.fps)
        )
        for k in range(b):
            conf, dist, offset = lse_scores(
                video_emb[k].cpu(), audio_emb[k].cpu(), self.vshift, self.padding
            )
            self.conf.append(conf)
            self.dist.append(dist)
            self.offsets.append(offset)

    def compute(self) -> dict[str, float]:
        def mean(values: list[float]) -> float:
            finite = [v for v in values if math.isfinite(v)]
            return sum(finite) / len(finite) if finite else math.nan

        return {self.keys[0]: mean(self.conf), self.keys[1]: mean(self.dist)}

    def per_clip(self) -> dict[str, list[float]]:
        return {self.keys[0]: list(self.conf), self.keys[1]: list(self.dist)}


def _device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


@METRICS.register("sync")
class SyncNetMetric(_SyncMetric):
    """LSE-C / LSE-D (sync_c, sync_d) with the public SyncNet v2 weights (local file, sha256)."""

    name = "sync"
    keys = ("sync_c", "sync_d")

    def __init__(
        self,
        weights: str | None = None,
        sha256: str | None = None,
        *,
        vshift: int = 15,
        padding: str = "zeros",
        batch_size: int = 16,
        device: str = "auto",
        bgr: bool = True,
    ):
        # lazy: start-up: a singer.models module loads every model (timm, diffusers: seconds),
        # which importing the metrics package does without
        from singer.models.syncnet import load_syncnet_v2

        super().__init__(vshift=vshift, padding=padding)
        self.device = _device(device)
        self.batch_size, self.bgr = max(1, int(batch_size)), bool(bgr)
        self.net = load_syncnet_v2(
            weights,
            sha256=sha256,
            config_key="metric_kwargs.sync.weights",
            sha256_key="metric_kwargs.sync.sha256",
        ).to(self.device)

    def _embed(self, video, audio, sample_rate, fps):
        # lazy: start-up: a singer.models module loads every model (see SyncNetMetric)
        from singer.models.syncnet import (
            MEL_SAMPLE_RATE,
            SYNCNET_V2_MFCC_FRAMES,
            SYNCNET_V2_SIZE,
            _resample,
            mfcc_psf,
        )

        b, _, f = video.shape[:3]
        n = f - WINDOW + 1
        wav = _resample(audio.float(), sample_rate, MEL_SAMPLE_RATE) * 32768.0  # int16 scale
        mfcc = mfcc_psf(wav, MEL_SAMPLE_RATE)  # B×13×T at 100 Hz
        starts = torch.round(torch.arange(n, dtype=torch.float64) * 100.0 / fps).long()
        # the last window may reach one MFCC frame past the clip's audio: repeat the last frame
        idx = (starts[:, None] + torch.arange(SYNCNET_V2_MFCC_FRAMES)).clamp(max=mfcc.shape[-1] - 1)
        mfcc_windows = (
            mfcc[:, :, idx]
            .permute(0, 2, 1, 3)
            .reshape(b * n, 1, mfcc.shape[1], SYNCNET_V2_MFCC_FRAMES)
        )

        frames = video.float().transpose(1, 2).reshape(b * f, 3, *video.shape[-2:])
        frames = F.interpolate(
            frames, size=(SYNCNET_V2_SIZE, SYNCNET_V2_SIZE), mode="bilinear", align_corners=False
        )
        frames = ((frames.clamp(-1, 1) + 1) * 127.5).reshape(
            b, f, 3, SYNCNET_V2_SIZE, SYNCNET_V2_SIZE
        )
        if self.bgr:
            frames = frames.flip(2)
        window_idx = torch.arange(n)[:, None] + torch.arange(WINDOW)  # N×5
        video_emb, audio_emb = [], []
        clips = [(k, i) for k in range(b) for i in range(n)]
        for start in range(0, len(clips), self.batch_size):
            chunk = clips[start : start + self.batch_size]
            lips = torch.stack([frames[k, window_idx[i]] for k, i in chunk]).transpose(
                1, 2
            )  # c×3×5×224×224
            video_emb.append(self.net.forward_lip(lips.to(self.device)).cpu())
            rows = torch.tensor([k * n + i for k, i in chunk])
            audio_emb.append(self.net.forward_aud(mfcc_windows[rows].to(self.device)).cpu())
        return torch.cat(video_emb).reshape(b, n, -1), torch.cat(audio_emb).reshape(b, n, -1)


@METRICS.register("sync_offline")
class OfflineSyncMetric(_SyncMetric):
    """LSE-C / LSE-D (sync_offline_c, sync_offline_d) with a harness-trained model=syncnet expert."""

    name = "sync_offline"
    keys = ("sync_offline_c", "sync_offline_d")

    def __init__(
        self,
        checkpoint: str | None = None,
        *,
        vshift: int = 15,
        padding: str = "valid",
        device: str = "auto",
        use_ema: bool = True,
    ):
        super().__init__(vshift=vshift, padding=padding)
        self.device = _device(device)
        # lazy: start-up: loading a trained run needs singer.inference and every model
        # (seconds), which importing the metrics package does without
        from singer.sync_expert import load_expert

        self.expert, loaded = load_expert(
            checkpoint,
            config_key="metric_kwargs.sync_offline.checkpoint",
            device=str(self.device),
            use_ema=use_ema,
        )
        self.checkpoint_step = loaded.step

    def _embed(self, video, audio, sample_rate, fps):
        n = video.shape[2] - WINDOW + 1
        video_emb = self.expert.embed_video(video.to(self.device))
        audio_emb = self.expert.embed_audio(
            audio.to(self.device), n, fps=fps, sample_rate=sample_rate
        )
        return video_emb.cpu(), audio_emb.cpu()
