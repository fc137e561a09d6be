"""``syncnet``: audio-visual synchronisation experts (SyncNet, Chung & Zisserman 2016).

Two networks live here.

:class:`SyncExpert`
    The harness's own lip-sync expert, trained on any prepared dataset or on SynthSing with

        python -m singer.train model=syncnet trainer=cpu_tiny out_dir=runs/sync_expert

    It is the "LipSync expert" of Wav2Lip (Prajwal et al. 2020) at harness scale: a face encoder
    over the lower half of 5 consecutive frames (stacked on channels) and an audio encoder over
    the 0.2 s log-mel window under those frames (16 steps at 80 Hz). Both embeddings are
    L2-normalised; their cosine similarity ``c`` gives ``P(in sync) = sigmoid(s·c + b)`` with a
    learned scale ``s`` and bias ``b`` (Wav2Lip reads ``c`` of ReLU'd embeddings as the
    probability directly; that version sits at the constant solution for a long time on small
    data). The loss has two terms:

    * a balanced binary cross-entropy on that probability (``bce``): positives are the aligned
      (video window, audio window) pairs of a clip; negatives are the same video window with
      the audio shifted by ``min_offset`` or more frames inside the clip (off-sync), plus, with
      ``cross_clip_negatives``, the audio of the other clips of the batch at the same position;
    * ``nce_weight`` × a multi-way matching cross-entropy (``nce``, as in Chung et al. 2019,
      "Perfect match"): each video window scores every audio window of the batch (its own clip's
      shifted windows included) with ``s·c`` and must pick the aligned one. It learns much faster
      than the BCE alone; the BCE keeps ``P(in sync)`` calibrated for Wav2Lip's sync loss.

    Logged: ``bce``, ``nce``, ``acc`` (share of BCE pairs on the right side of P = 0.5),
    ``pos_sim`` / ``neg_sim`` (mean cosine of positives / negatives). Its checkpoint drives the
    ``sync_offline`` metric and the sync loss of the ``wav2lip`` baseline. The model does not
    generate video (``sample=None``).

:class:`SyncNetV2`
    The public SyncNet v2 network (the one the "syncnet_python" evaluation code ships weights
    for), written here from its published layer list so that those weights load by key. It is
    used by the ``sync`` metric (LSE-C / LSE-D) and is never trained here.

Audio features
--------------
:func:`log_mel` (the expert and ``wav2lip``): Wav2Lip's spectrogram settings: 16 kHz, pre-emphasis
0.97, STFT n_fft = window = 800, hop 200 (80 Hz), 80 Slaney mel bins over 55–7600 Hz, magnitude
in dB minus a 20 dB reference, mapped from [-100, 0] dB to [-4, 4] and clipped. The audio window
of video frame ``i`` starts at mel step ``floor(80 · i / fps)`` (:func:`frame_to_mel`); steps past
either end of the clip repeat the edge step.

:func:`mfcc_psf` (SyncNet v2): 13 MFCCs at 100 Hz with the defaults of the python_speech_features
package that SyncNet's evaluation uses (25 ms rectangular frames, 10 ms step, pre-emphasis 0.97,
512-point power spectrum, 26 mel filters over 0–8 kHz, log, orthonormal DCT-II, lifter 22, and
the first coefficient replaced by the log frame energy). Video frame ``i`` (25 fps) takes MFCC
frames ``4i .. 4i+19`` (0.2 s).

SyncNet v2 state-dict layout
----------------------------
A plain ``{name: tensor}`` mapping (``.pt`` via ``torch.load(weights_only=True)``, or
``.safetensors``; a ``{"state_dict": {...}}`` wrapper is unwrapped). Conv/BN weights of the
syncnet_python release ("syncnet_v2.model") keep their names:

=====================  =========================================================================
``netcnnaud.{i}``      audio conv stack, input ``B×1×13×20`` (MFCC × time):
                       Conv2d at i = 0, 4, 8, 11, 14, 18 (1→64→192→384→256→256→512; 3×3 kernels,
                       the last 5×4 unpadded); BatchNorm2d at i = 1, 5, 9, 12, 15, 19; max-pools at
                       3 (1×1), 7 (3×3, stride 1×2), 17 (3×3, stride 2) → ``B×512×1×1``
``netfcaud.{0,1,3}``   Linear 512→512, BatchNorm1d 512, (ReLU), Linear 512→1024
``netcnnlip.{i}``      lip conv stack, input ``B×3×5×224×224`` (channels × 5 frames × H × W):
                       Conv3d at i = 0 (3→96, 5×7×7, stride 1×2×2), 4 (96→256, 1×5×5, stride 1×2×2,
                       pad 0×1×1), 8, 11, 14 (256→256, 1×3×3, pad 0×1×1), 18 (256→512, 1×6×6);
                       BatchNorm3d at i = 1, 5, 9, 12, 15, 19; max-pools at 3, 7 (pad 0×1×1), 17
                       (all 1×3×3, stride 1×2×2) → ``B×512×1×1×1``
``netfclip.{0,1,3}``   Linear 512→512, BatchNorm1d 512, (ReLU), Linear 512→1024
=====================  =========================================================================

BatchNorm entries carry ``weight``, ``bias``, ``running_mean``, ``running_var`` and
``num_batches_tracked`` (the last may be absent). :func:`syncnet_v2_state_keys` lists every key
with its shape; :func:`load_syncnet_v2` checks a file against it and names what differs.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from singer.models.spec import ModelSpec, register_model_spec
from singer.weights import load_state_dict, resolve_weights

# -- audio features ---------------------------------------------------------------------------------
MEL_SAMPLE_RATE = 16000
MEL_N_FFT = 800
MEL_HOP = 200
MEL_BINS = 80
MEL_FMIN, MEL_FMAX = 55.0, 7600.0
MEL_RATE = MEL_SAMPLE_RATE / MEL_HOP  # 80 mel steps per second
MEL_STEPS = 16  # 0.2 s
MEL_MIN_DB, MEL_REF_DB, MEL_MAX_ABS = -100.0, 20.0, 4.0
PREEMPHASIS = 0.97
SYNC_FRAMES = 5  # video frames per sync window (0.2 s at 25 fps)

_MEL_CACHE: dict[str, torchaudio.transforms.MelSpectrogram] = {}


def _resample(wav: torch.Tensor, sample_rate: int, target: int) -> torch.Tensor:
    if int(sample_rate) == int(target):
        return wav
    return torchaudio.functional.resample(wav, int(sample_rate), int(target))


def _preemphasis(wav: torch.Tensor, coefficient: float = PREEMPHASIS) -> torch.Tensor:
    return torch.cat([wav[..., :1], wav[..., 1:] - coefficient * wav[..., :-1]], dim=-1)


def log_mel(wav: torch.Tensor, sample_rate: int = MEL_SAMPLE_RATE) -> torch.Tensor:
    """Waveform ``B×S`` → normalised log-mel ``B×80×T`` (float32, values in [-4, 4], 80 Hz).

    Step ``t`` is centred on sample ``t·200`` at 16 kHz (``T = 1 + S16k // 200``); other sample
    rates are resampled to 16 kHz first.
    """
    wav = _resample(wav.float(), sample_rate, MEL_SAMPLE_RATE)
    if wav.shape[-1] <= MEL_N_FFT // 2:  # centred frames reflect-pad by n_fft/2
        wav = F.pad(wav, (0, MEL_N_FFT // 2 + 1 - wav.shape[-1]))
    key = str(wav.device)
    if key not in _MEL_CACHE:
        _MEL_CACHE[key] = torchaudio.transforms.MelSpectrogram(
            sample_rate=MEL_SAMPLE_RATE,
            n_fft=MEL_N_FFT,
            win_length=MEL_N_FFT,
            hop_length=MEL_HOP,
            f_min=MEL_FMIN,
            f_max=MEL_FMAX,
            n_mels=MEL_BINS,
            power=1.0,
            center=True,
            norm="slaney",
            mel_scale="slaney",
        ).to(wav.device)
    with torch.autocast(wav.device.type, enabled=False):
        magnitude = _MEL_CACHE[key](_preemphasis(wav))
        db = 20.0 * torch.log10(magnitude.clamp_min(1e-5)) - MEL_REF_DB
        scaled = 2 * MEL_MAX_ABS * (db - MEL_MIN_DB) / -MEL_MIN_DB - MEL_MAX_ABS
    return scaled.clamp(-MEL_MAX_ABS, MEL_MAX_ABS)


def frame_to_mel(frames: torch.Tensor, fps: float) -> torch.Tensor:
    """First mel step of the audio window of video frame(s) ``frames`` (int64, may be negative)."""
    return torch.floor(frames.double() * MEL_RATE / float(fps)).long()


def mel_windows(mel: torch.Tensor, starts: torch.Tensor, steps: int = MEL_STEPS) -> torch.Tensor:
    """Windows of ``steps`` mel steps: ``mel`` ``B×M×T``, ``starts`` int64 of any shape ``*`` (shared
    by the batch) → ``B×*×M×steps``. Steps before 0 or past ``T-1`` repeat the edge step."""
    idx = (starts.to(mel.device)[..., None] + torch.arange(steps, device=mel.device)).clamp(
        0, mel.shape[-1] - 1
    )
    out = mel[:, :, idx.reshape(-1)]  # B×M×(K·steps)
    out = out.reshape(mel.shape[0], mel.shape[1], *idx.shape)  # B×M×*×steps
    return out.movedim(1, -2)


def lower_half(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Frames ``N×C×H×W`` → resized to ``size×size``, lower half ``N×C×(size/2)×size``."""
    if frames.shape[-2:] != (size, size):
        frames = F.interpolate(
            frames.float(),
            size=(size, size),
            mode="bilinear",
            align_corners=False,
            antialias=frames.shape[-1] > size,
        )
    return frames[..., size // 2 :, :]


# -- the harness's expert ---------------------------------------------------------------------------
def _norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels)


class _ConvBlock(nn.Module):
    """conv → BatchNorm → GELU, then a residual conv → BatchNorm → GELU at the same size."""

    def __init__(self, cin: int, cout: int, stride: int | tuple[int, int] = 1):
        super().__init__()
        self.down = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1), _norm(cout), nn.GELU()
        )
        self.res = nn.Sequential(nn.Conv2d(cout, cout, 3, padding=1), _norm(cout))
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        return self.act(x + self.res(x))


def _encoder(
    in_channels: int, channels: list[int], in_shape: tuple[int, int], embed_dim: int, *, pool: bool
) -> nn.Sequential:
    """Stride-1 stem, then stride-2 blocks; global average pool (``pool``) or flatten; Linear → ``embed_dim``."""
    layers: list[nn.Module] = [_ConvBlock(in_channels, channels[0])]
    for cin, cout in zip(channels[:-1], channels[1:], strict=True):
        layers.append(_ConvBlock(cin, cout, stride=2))
    if pool:
        layers.append(nn.AdaptiveAvgPool2d(1))
    body = nn.Sequential(*layers)
    with torch.no_grad():
        flat = body(torch.zeros(1, in_channels, *in_shape)).numel()
    return nn.Sequential(body, nn.Flatten(), nn.Linear(flat, embed_dim))


class SyncExpert(nn.Module):
    """Lip-sync expert: 5-frame lower-face windows and 0.2 s mel windows → unit embeddings.

    Args:
        face_size: frames are resized to ``face_size²`` and cropped to their lower half
            (``face_size/2 × face_size``) before the face encoder.
        face_channels / audio_channels: widths of the stem and of each stride-2 block.
        embed_dim: D of both embeddings.
        sample_rate, fps: the training data's rates (metrics may pass others per call).
        min_offset: in-clip negatives pair a video window with audio shifted by ≥ this many frames.
        cross_clip_negatives: also use the other clips' audio (same window position) as negatives.
        nce_weight: weight of the multi-way matching term (0 = BCE only).
    """

    def __init__(
        self,
        *,
        face_size: int = 48,
        face_channels=(16, 32, 64, 128),
        audio_channels=(16, 32, 64, 128),
        embed_dim: int = 128,
        sample_rate: int = 16000,
        fps: float = 25.0,
        min_offset: int = 1,
        cross_clip_negatives: bool = True,
        nce_weight: float = 1.0,
    ):
        super().__init__()
        if face_size < 8 or face_size % 2:
            raise ValueError(f"model.face_size must be an even number ≥ 8, got {face_size}")
        self.face_size, self.embed_dim = int(face_size), int(embed_dim)
        self.sample_rate, self.fps = int(sample_rate), float(fps)
        self.min_offset, self.cross_clip_negatives = (
            max(1, int(min_offset)),
            bool(cross_clip_negatives),
        )
        self.nce_weight = float(nce_weight)
        # Faces: pooled over space (the mouth may sit anywhere in the crop; time lives in the channels).
        # Audio: flattened, so frequency and time positions stay distinct.
        self.face_encoder = _encoder(
            3 * SYNC_FRAMES, list(face_channels), (face_size // 2, face_size), embed_dim, pool=True
        )
        self.audio_encoder = _encoder(
            1, list(audio_channels), (MEL_BINS, MEL_STEPS), embed_dim, pool=False
        )
        # P(in sync) = sigmoid(scale · cos + bias), both learned (starts at a steep, centred logistic)
        self.logit_scale = nn.Parameter(torch.tensor(10.0))
        self.logit_bias = nn.Parameter(torch.tensor(0.0))

    # embeddings ------------------------------------------------------------------------------
    def embed_face_windows(self, windows: torch.Tensor) -> torch.Tensor:
        """``N×3×5×H×W`` frame windows in [-1, 1] → ``N×D`` unit embeddings."""
        n, c, t, h, w = windows.shape
        faces = lower_half(windows.transpose(1, 2).reshape(n * t, c, h, w), self.face_size)
        faces = faces.reshape(n, t * c, *faces.shape[-2:])  # frames stacked on channels
        return F.normalize(self.face_encoder(faces).float(), dim=-1, eps=1e-6)

    def embed_mel_windows(self, mels: torch.Tensor) -> torch.Tensor:
        """``N×80×16`` log-mel windows → ``N×D`` unit embeddings."""
        return F.normalize(self.audio_encoder(mels.unsqueeze(1)).float(), dim=-1, eps=1e-6)

    def embed_video(self, video: torch.Tensor, starts: torch.Tensor | None = None) -> torch.Tensor:
        """Video ``B×3×F×H×W`` → ``B×N×D``, one embedding per 5-frame window (default: all
        ``N = F-4`` windows; or those starting at the frames ``starts``)."""
        b, _, f, _, _ = video.shape
        if f < SYNC_FRAMES:
            raise ValueError(f"a sync window needs {SYNC_FRAMES} frames; the clip has {f}")
        starts = torch.arange(f - SYNC_FRAMES + 1) if starts is None else starts.cpu()
        idx = starts[:, None] + torch.arange(SYNC_FRAMES)  # N×5
        windows = video[:, :, idx.to(video.device)]  # B×3×N×5×H×W
        windows = windows.permute(0, 2, 1, 3, 4, 5).reshape(
            b * len(starts), 3, SYNC_FRAMES, *video.shape[-2:]
        )
        return self.embed_face_windows(windows).reshape(b, len(starts), -1)

    def embed_audio(
        self,
        wav: torch.Tensor,
        starts: torch.Tensor | int,
        *,
        fps: float | None = None,
        sample_rate: int | None = None,
    ) -> torch.Tensor:
        """Waveform ``B×S`` (sample 0 = frame 0) → ``B×N×D``: the 0.2 s windows starting at the
        frames ``starts`` (or at frames ``0..starts-1`` when an int)."""
        if isinstance(starts, int):
            starts = torch.arange(starts)
        mel = log_mel(wav, sample_rate or self.sample_rate)
        windows = mel_windows(mel, frame_to_mel(starts, fps or self.fps))  # B×N×80×16
        b, n = windows.shape[:2]
        return self.embed_mel_windows(windows.reshape(b * n, MEL_BINS, MEL_STEPS)).reshape(b, n, -1)

    def sync_logit(self, cosine: torch.Tensor) -> torch.Tensor:
        """Logit of P(in sync) for cosine similarities of video and audio embeddings."""
        return self.logit_scale.float() * cosine.float() + self.logit_bias.float()

    # training ---------------------------------------------------------------------------------
    def training_loss(self, batch: dict, generator: torch.Generator | None = None):
        """Balanced BCE on P(in sync) (aligned pairs → 1, shifted / other-clip audio → 0) plus
        ``nce_weight`` × multi-way matching; see the module docstring."""
        video, wav = batch["video"], batch["audio"]
        b, _, f, _, _ = video.shape
        if f < SYNC_FRAMES:
            raise ValueError(
                f"model=syncnet needs clips of at least {SYNC_FRAMES} frames (trainer.num_frames={f})"
            )
        n = f - SYNC_FRAMES + 1
        v = self.embed_video(video)  # B×N×D
        a = self.embed_audio(wav, n)  # B×N×D
        sim = torch.einsum("bid,bjd->bij", v, a).float()  # cosine: video window i × audio window j
        pos = torch.diagonal(sim, dim1=1, dim2=2).reshape(-1)
        offsets = (torch.arange(n)[:, None] - torch.arange(n)[None, :]).abs().to(sim.device)
        negatives = [sim[:, offsets >= self.min_offset].reshape(-1)]
        if self.cross_clip_negatives and b > 1:
            cross = torch.einsum("bid,cid->bci", v, a).float()  # video of clip b × audio of clip c
            other = ~torch.eye(b, dtype=torch.bool, device=sim.device)
            negatives.append(cross[other].reshape(-1))
        neg = torch.cat(negatives)
        if neg.numel() == 0:
            raise ValueError(
                "model=syncnet found no negatives: use trainer.num_frames ≥ 6 or batch_size ≥ 2"
            )
        pos_logit, neg_logit = self.sync_logit(pos), self.sync_logit(neg)
        pos_loss = F.softplus(-pos_logit).mean()  # −log σ(logit)
        neg_loss = F.softplus(neg_logit).mean()  # −log(1 − σ(logit))
        bce = 0.5 * (pos_loss + neg_loss)
        acc = 0.5 * ((pos_logit > 0).float().mean() + (neg_logit < 0).float().mean())
        logs = {
            "bce": float(bce.detach()),
            "pos_loss": float(pos_loss.detach()),
            "neg_loss": float(neg_loss.detach()),
            "pos_sim": float(pos.detach().mean()),
            "neg_sim": float(neg.detach().mean()),
            "acc": float(acc),
        }
        loss = bce
        if self.nce_weight > 0:
            # multi-way matching: each video window picks its audio among the candidate windows
            if self.cross_clip_negatives:  # every window of the batch
                logits = v.reshape(b * n, -1) @ a.reshape(b * n, -1).T
                target = torch.arange(b * n, device=sim.device)
            else:  # the windows of its own clip
                logits = sim.reshape(b * n, n)
                target = torch.arange(n, device=sim.device).repeat(b)
            nce = F.cross_entropy(self.logit_scale.float() * logits.float(), target)
            loss = loss + self.nce_weight * nce
            logs["nce"] = float(nce.detach())
        return loss, logs


EXPERT_KEYS = (
    "face_size",
    "face_channels",
    "audio_channels",
    "embed_dim",
    "min_offset",
    "cross_clip_negatives",
    "nce_weight",
)


def build_syncnet(cfg) -> SyncExpert:
    """Build from a composed config: ``model`` plus the data's fps and sample rate."""
    mc = cfg.model
    frames = int(cfg.trainer.num_frames)
    if frames < SYNC_FRAMES:
        raise ValueError(
            f"model=syncnet needs trainer.num_frames ≥ {SYNC_FRAMES} (one 0.2 s window), got {frames}"
        )
    kwargs = {k: (list(mc[k]) if k.endswith("channels") else mc[k]) for k in EXPERT_KEYS if k in mc}
    return SyncExpert(sample_rate=int(cfg.data.sample_rate), fps=float(cfg.data.fps), **kwargs)


register_model_spec(
    ModelSpec(
        name="syncnet",
        build=build_syncnet,
        description="lip-sync expert (SyncNet/Wav2Lip style): 5-frame lower face vs 0.2 s mel, BCE + matching on "
        "cosine similarity; drives sync_offline and wav2lip's sync loss",
        sample=None,
    )
)


# -- SyncNet v2 (pretrained weights) ----------------------------------------------------------------
# Layer tables in the order of the released network, so nn.Sequential indices match its keys.
# ("conv", in, out, kernel, stride, padding) | ("bn", channels) | ("relu",) | ("pool", kernel, stride, padding)
_AUDIO_LAYERS = [
    ("conv", 1, 64, (3, 3), (1, 1), (1, 1)),
    ("bn", 64),
    ("relu",),
    ("pool", (1, 1), (1, 1), 0),
    ("conv", 64, 192, (3, 3), (1, 1), (1, 1)),
    ("bn", 192),
    ("relu",),
    ("pool", (3, 3), (1, 2), 0),
    ("conv", 192, 384, (3, 3), (1, 1), (1, 1)),
    ("bn", 384),
    ("relu",),
    ("conv", 384, 256, (3, 3), (1, 1), (1, 1)),
    ("bn", 256),
    ("relu",),
    ("conv", 256, 256, (3, 3), (1, 1), (1, 1)),
    ("bn", 256),
    ("relu",),
    ("pool", (3, 3), (2, 2), 0),
    ("conv", 256, 512, (5, 4), (1, 1), (0, 0)),
    ("bn", 512),
    ("relu",),
]
_LIP_LAYERS = [
    ("conv", 3, 96, (5, 7, 7), (1, 2, 2), 0),
    ("bn", 96),
    ("relu",),
    ("pool", (1, 3, 3), (1, 2, 2), 0),
    ("conv", 96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)),
    ("bn", 256),
    ("relu",),
    ("pool", (1, 3, 3), (1, 2, 2), (0, 1, 1)),
    ("conv", 256, 256, (1, 3, 3), (1, 1, 1), (0, 1, 1)),
    ("bn", 256),
    ("relu",),
    ("conv", 256, 256, (1, 3, 3), (1, 1, 1), (0, 1, 1)),
    ("bn", 256),
    ("relu",),
    ("conv", 256, 256, (1, 3, 3), (1, 1, 1), (0, 1, 1)),
    ("bn", 256),
    ("relu",),
    ("pool", (1, 3, 3), (1, 2, 2), 0),
    ("conv", 256, 512, (1, 6, 6), (1, 1, 1), 0),
    ("bn", 512),
    ("relu",),
]
SYNCNET_V2_DIM = 1024
SYNCNET_V2_SIZE = 224  # face crops are resized to 224×224
SYNCNET_V2_MFCC_FRAMES = 20  # 0.2 s at 100 Hz


def _stack(layers: list[tuple], dims: int) -> nn.Sequential:
    if dims == 2:
        conv, bn, pool = nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d
    else:
        conv, bn, pool = nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d
    modules: list[nn.Module] = []
    for kind, *args in layers:
        if kind == "conv":
            cin, cout, kernel, stride, padding = args
            modules.append(conv(cin, cout, kernel_size=kernel, stride=stride, padding=padding))
        elif kind == "bn":
            modules.append(bn(args[0]))
        elif kind == "relu":
            modules.append(nn.ReLU())
        else:
            kernel, stride, padding = args
            modules.append(pool(kernel_size=kernel, stride=stride, padding=padding))
    return nn.Sequential(*modules)


def _head(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, dim))


class SyncNetV2(nn.Module):
    """SyncNet v2: MFCC ``B×1×13×20`` → ``B×1024``; face clips ``B×3×5×224×224`` → ``B×1024``.

    Inputs as the reference evaluation feeds them: MFCCs from :func:`mfcc_psf`; frames as float
    pixel values 0–255 in the colour order of the weights (OpenCV's BGR for the public release).
    Distances between the raw (unnormalised) embeddings score synchronisation.
    """

    def __init__(self, dim: int = SYNCNET_V2_DIM):
        super().__init__()
        self.netcnnaud = _stack(_AUDIO_LAYERS, 2)
        self.netfcaud = _head(dim)
        self.netcnnlip = _stack(_LIP_LAYERS, 3)
        self.netfclip = _head(dim)

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_lip(self, clips: torch.Tensor) -> torch.Tensor:
        return self.netfclip(self.netcnnlip(clips).flatten(1))


def syncnet_v2_state_keys() -> dict[str, tuple[int, ...]]:
    """Every key of a SyncNet v2 state dict with its shape (the layout :func:`load_syncnet_v2` expects)."""
    return {k: tuple(v.shape) for k, v in SyncNetV2().state_dict().items()}


SYNCNET_V2_HINT = (
    "SyncNet v2 weights are the 'syncnet_v2.model' file of the public syncnet_python release (Chung & "
    "Zisserman); on a machine with internet access save its state dict as a plain {name: tensor} mapping "
    "(torch.save(state_dict, 'syncnet_v2.pt')) with the key layout of singer.models.syncnet "
    "(netcnnaud.*, netfcaud.*, netcnnlip.*, netfclip.*), then copy it here."
)


def load_syncnet_v2(
    path: str | Path,
    *,
    sha256: str | None,
    config_key: str = "weights",
    sha256_key: str | None = "sha256",
) -> SyncNetV2:
    """A :class:`SyncNetV2` in eval mode with the checked weights of a local file.

    Raises ``singer.weights.MissingWeightsError`` (no file), ``WeightsChecksumError`` (wrong
    sha256) or ``ValueError`` naming missing / unexpected / mis-shaped keys.
    """
    resolved = resolve_weights(
        path,
        sha256=sha256,
        name="SyncNet v2 state dict",
        config_key=config_key,
        hint=SYNCNET_V2_HINT,
        sha256_key=sha256_key,
    )
    state = load_state_dict(resolved)
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DataParallel
    model = SyncNetV2()
    expected = model.state_dict()
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(state) - optional)
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k}: {tuple(state[k].shape)} ≠ {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    )
    if missing or unexpected or shapes:
        raise ValueError(
            f"{resolved} is not a SyncNet v2 state dict (layout: singer.models.syncnet docstring).\n"
            f"  missing keys: {missing[:8]}{' …' if len(missing) > 8 else ''}\n"
            f"  unexpected keys: {unexpected[:8]}{' …' if len(unexpected) > 8 else ''}\n"
            f"  wrong shapes: {shapes[:8]}"
        )
    model.load_state_dict(state, strict=False)
    return model.eval()


# -- MFCC (python_speech_features defaults) ---------------------------------------------------------
def _hz_to_mel(hz):
    return 2595.0 * math.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def _psf_filterbank(nfilt: int, nfft: int, sample_rate: int) -> torch.Tensor:
    """Triangular filters ``nfilt×(nfft/2+1)`` on FFT bins, edges rounded down to bins."""
    points = torch.linspace(
        _hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), nfilt + 2, dtype=torch.float64
    )
    bins = torch.floor((nfft + 1) * _mel_to_hz(points) / sample_rate).long()
    k = torch.arange(nfft // 2 + 1, dtype=torch.float64)
    bank = torch.zeros(nfilt, nfft // 2 + 1, dtype=torch.float64)
    for j in range(nfilt):
        lo, mid, hi = (int(b) for b in bins[j : j + 3])
        if mid > lo:
            rising = (k >= lo) & (k < mid)
            bank[j, rising] = (k[rising] - lo) / (mid - lo)
        if hi > mid:
            falling = (k >= mid) & (k < hi)
            bank[j, falling] = (hi - k[falling]) / (hi - mid)
    return bank


def _dct2_ortho(n: int, keep: int) -> torch.Tensor:
    """Orthonormal DCT-II matrix rows ``keep×n`` (``coeffs = M @ x``)."""
    i = torch.arange(n, dtype=torch.float64)
    k = torch.arange(keep, dtype=torch.float64)[:, None]
    m = torch.cos(math.pi * k * (2 * i + 1) / (2 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m


def mfcc_psf(
    wav: torch.Tensor,
    sample_rate: int = 16000,
    *,
    numcep: int = 13,
    nfilt: int = 26,
    nfft: int = 512,
    winlen: float = 0.025,
    winstep: float = 0.01,
    preemph: float = 0.97,
    ceplifter: int = 22,
) -> torch.Tensor:
    """Waveform ``B×S`` → MFCCs ``B×numcep×T`` (float32), T = 1 + ceil((S - 400) / 160) at 16 kHz.

    The python_speech_features recipe with its defaults (see the module docstring); the last
    frame is zero-padded. Audio scale matters only to the energy coefficient (c0).
    """
    x = _preemphasis(wav.double(), preemph)
    frame_len, step = round(winlen * sample_rate), round(winstep * sample_rate)
    length = x.shape[-1]
    frames = 1 if length <= frame_len else 1 + math.ceil((length - frame_len) / step)
    x = F.pad(x, (0, (frames - 1) * step + frame_len - length))
    framed = x.unfold(-1, frame_len, step)  # B×T×frame_len
    power = torch.fft.rfft(framed, n=nfft).abs().pow(2) / nfft
    energy = power.sum(-1)
    eps = torch.finfo(torch.float64).eps
    energy = torch.where(energy == 0, torch.full_like(energy, eps), energy)
    feat = power @ _psf_filterbank(nfilt, nfft, sample_rate).to(power).T
    feat = torch.where(feat == 0, torch.full_like(feat, eps), feat).log()
    cep = feat @ _dct2_ortho(nfilt, numcep).to(feat).T  # B×T×numcep
    n = torch.arange(numcep, dtype=torch.float64, device=cep.device)
    cep = cep * (1 + (ceplifter / 2.0) * torch.sin(math.pi * n / ceplifter))
    cep[..., 0] = energy.log()
    return cep.transpose(1, 2).float()
