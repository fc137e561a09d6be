"""Wav2Lip at harness scale: generator, visual-quality discriminator, losses, sampling.

Every video frame is generated on its own, from

* the reference frame (identity; the batch's ``ref``),
* the current frame with its lower half masked (pose and upper face; black below the middle),
* the 0.2 s log-mel window centred on the frame (16 steps at 80 Hz: frames ``i-2 .. i+2``),

by a face encoder (U-Net down path over the 6 stacked channels), an audio encoder (mel window →
one vector) and a decoder that starts from [face code, audio code] at 1×1 and climbs back up
with the face encoder's skip features. Output in [-1, 1] (tanh).

Loss: ``(1 − w_sync − w_disc)·L1 + w_sync·E_sync + w_disc·E_adv`` as in the original, with
``E_sync = −log P(in sync)`` of a frozen ``model=syncnet`` expert over every 5-frame window of
the generated clip and ``E_adv`` the non-saturating GAN loss of the optional discriminator.
Terms that are off (no expert; discriminator disabled) drop out, and their weight goes to L1.

The discriminator update cannot go through the trainer's optimizer (it would then step the
discriminator on the generator's objective). It happens inside ``training_loss``, before the
generator's terms are computed: the discriminator's parameters have ``requires_grad=False`` (so
the trainer neither optimises nor clips them), are switched on only to take their own gradient
(``torch.autograd.grad``), and are stepped by :class:`BufferedAdam`, whose moments are buffers of
the model. So the discriminator, its optimizer state and the generator all live in the model's
state dict and a checkpoint resumes the GAN exactly. Only training-mode calls with gradients on
update it; the trainer's validation (EMA model, eval mode, no grad) never does. Under
data-parallel training its gradients are averaged over the processes here (the trainer's
DistributedDataParallel only handles parameters that require gradients).
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from baselines.wav2lip.expert import TRAIN, ensure_expert, expert_config
from singer.inference import resolve_checkpoint
from singer.models.spec import Conditions
from singer.models.syncnet import (
    MEL_BINS,
    MEL_STEPS,
    SYNC_FRAMES,
    frame_to_mel,
    log_mel,
    mel_windows,
)
from singer.sync_expert import load_expert
from singer.weights import MissingWeightsError

log = logging.getLogger(__name__)

MEL_CENTRE = 2  # the window of frame i starts at frame i-2 (centred: frames i-2 .. i+2)
_EXPERTS: dict[
    tuple[str, float], nn.Module
] = {}  # one frozen expert per checkpoint file and process


class _Conv(nn.Module):
    """conv → BatchNorm → ReLU; with ``residual`` (same shape in and out) the input is added
    before the ReLU (Wav2Lip's conv block)."""

    def __init__(
        self, cin: int, cout: int, kernel=3, stride=1, padding=1, *, residual: bool = False
    ):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(cin, cout, kernel, stride, padding), nn.BatchNorm2d(cout)
        )
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return F.relu(out + x if self.residual else out)


def _widths(channels, count: int) -> list[int]:
    """``count`` widths: ``channels`` cut or extended by repeating its last entry."""
    channels = [int(c) for c in channels]
    return (channels + [channels[-1]] * count)[:count]


def face_sides(size: int) -> list[int]:
    """Sides of the face encoder's stages: halve (rounding up) while above 4 px."""
    sides = [int(size)]
    while sides[-1] > 4:
        sides.append(math.ceil(sides[-1] / 2))
    return sides


class LipGenerator(nn.Module):
    """(masked frame ‖ reference) ``N×6×S×S`` + mel window ``N×1×80×16`` → frame ``N×3×S×S`` in [-1, 1].

    ``S = size`` is fixed at build time (the trainer's frame size). Face stages: full size, then
    halved (rounding up) while above 4 px; ``face_channels`` gives their widths (the last repeated
    if short); a valid conv turns the last stage into the ``face_dim`` code. Audio stages:
    ``audio_channels`` (the first at 80×16, then one stride-2 stage per further entry); a valid
    conv turns the rest into the ``audio_dim`` code. The decoder opens [face code ‖ audio code]
    with a transposed conv to the last face stage and climbs back with the skip features.
    """

    def __init__(
        self,
        size: int,
        *,
        face_channels=(16, 32, 64, 64),
        audio_channels=(16, 32, 32, 64, 64),
        face_dim: int = 64,
        audio_dim: int = 64,
    ):
        super().__init__()
        self.size = int(size)
        self.sides = face_sides(self.size)
        widths = _widths(face_channels, len(self.sides))
        self.widths = widths
        self.down = nn.ModuleList()
        for k, width in enumerate(widths):
            first = _Conv(6, width, 7, 1, 3) if k == 0 else _Conv(widths[k - 1], width, 3, 2, 1)
            self.down.append(nn.Sequential(first, _Conv(width, width, residual=True)))
        bottom = self.sides[-1]
        self.face_code = _Conv(widths[-1], face_dim, bottom, 1, 0)  # → 1×1

        audio = [int(c) for c in audio_channels]
        layers: list[nn.Module] = [_Conv(1, audio[0]), _Conv(audio[0], audio[0], residual=True)]
        for cin, cout in zip(audio[:-1], audio[1:], strict=True):
            layers += [_Conv(cin, cout, 3, 2, 1), _Conv(cout, cout, residual=True)]
        body = nn.Sequential(*layers)
        with torch.no_grad():
            h, w = body(torch.zeros(2, 1, MEL_BINS, MEL_STEPS)).shape[-2:]
        self.audio_encoder = nn.Sequential(body, _Conv(audio[-1], audio_dim, (h, w), 1, 0))  # → 1×1

        self.up_first = nn.Sequential(
            nn.ConvTranspose2d(face_dim + audio_dim, widths[-1], bottom),
            nn.BatchNorm2d(widths[-1]),
            nn.ReLU(),
        )
        self.up = nn.ModuleList()
        for k in range(len(widths) - 1, 0, -1):  # at side k, with skip k → towards side k-1
            self.up.append(
                nn.Sequential(
                    _Conv(2 * widths[k], widths[k]),
                    _Conv(widths[k], widths[k], residual=True),
                    _Conv(widths[k], widths[k - 1]),
                )
            )
        self.out = nn.Sequential(_Conv(2 * widths[0], widths[0]), nn.Conv2d(widths[0], 3, 1))

    def forward(self, faces: torch.Tensor, mels: torch.Tensor) -> torch.Tensor:
        skips = []
        x = faces
        for block in self.down:
            x = block(x)
            skips.append(x)
        code = torch.cat([self.face_code(x), self.audio_encoder(mels)], dim=1)
        x = self.up_first(code)
        for j, block in enumerate(self.up):
            k = len(self.widths) - 1 - j
            x = block(torch.cat([x, skips[k]], dim=1))
            x = F.interpolate(x, size=skips[k - 1].shape[-2:], mode="nearest")
        return torch.tanh(self.out(torch.cat([x, skips[0]], dim=1)))


class QualityDiscriminator(nn.Module):
    """Lower half of a frame ``N×3×(S/2)×S`` in [-1, 1] → real/fake logit ``N`` (Wav2Lip's
    visual-quality discriminator looks at the lower face only)."""

    def __init__(self, channels=(16, 32, 64)):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for cout in channels:
            layers += [nn.Conv2d(cin, cout, 4, 2, 1), nn.LeakyReLU(0.2)]
            cin = cout
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(cin, 1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        half = frames[..., frames.shape[-2] // 2 :, :]
        return self.head(self.body(half)).squeeze(-1)


class BufferedAdam(nn.Module):
    """Adam for a fixed list of parameters, its moments kept as buffers (so they are saved and
    restored with the owning model's state dict)."""

    def __init__(
        self, params: list[nn.Parameter], *, lr: float, betas=(0.5, 0.999), eps: float = 1e-8
    ):
        super().__init__()
        self.lr, self.betas, self.eps = float(lr), (float(betas[0]), float(betas[1])), float(eps)
        self.count = len(params)
        for i, p in enumerate(params):
            self.register_buffer(f"exp_avg_{i}", torch.zeros_like(p))
            self.register_buffer(f"exp_avg_sq_{i}", torch.zeros_like(p))
        self.register_buffer("steps", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def step(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        if len(params) != self.count:
            raise ValueError(f"BufferedAdam holds {self.count} parameters, got {len(params)}")
        self.steps += 1
        t = float(self.steps)
        beta1, beta2 = self.betas
        c1, c2 = 1 - beta1**t, 1 - beta2**t
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            m, v = getattr(self, f"exp_avg_{i}"), getattr(self, f"exp_avg_sq_{i}")
            g = g.to(p.dtype)
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            p.addcdiv_(m / c1, (v / c2).sqrt_().add_(self.eps), value=-self.lr)


def mask_lower_half(frames: torch.Tensor) -> torch.Tensor:
    """Frames ``…×H×W`` in [-1, 1] with rows from ``H/2`` down set to black (-1)."""
    masked = frames.clone()
    masked[..., frames.shape[-2] // 2 :, :] = -1.0
    return masked


def _expert_for(path: str) -> nn.Module:
    """The frozen expert of a ``model=syncnet`` run, loaded once per file and process."""
    try:
        resolved = resolve_checkpoint(path).resolve()
    except FileNotFoundError:
        resolved = Path(path)
    key = (str(resolved), resolved.stat().st_mtime if resolved.exists() else 0.0)
    if key not in _EXPERTS:
        try:
            expert, _ = load_expert(path, config_key="model.sync.expert", device="cpu")
        except MissingWeightsError as err:
            raise MissingWeightsError(
                f"wav2lip: {err}; or set model.sync.expert=null to train without the sync loss"
            ) from None
        _EXPERTS[key] = expert
    return _EXPERTS[key]


class Wav2Lip(nn.Module):
    """Wav2Lip: per-frame generator + frozen sync expert (+ optional discriminator).

    Args:
        generator: the :class:`LipGenerator`.
        fps, sample_rate: the data's rates (frame ``i`` ↔ mel step ``floor(80·i/fps)``).
        expert: run directory / ``.pt`` of a ``model=syncnet`` run; ``"train"`` to train one in
            this job first (``expert_config``, see :mod:`baselines.wav2lip.expert`); or None (no
            sync loss; a warning says so once, when training starts).
        expert_config: the plain config of the in-job expert (with ``expert="train"``).
        sync_weight: ``w_sync``.
        discriminator: a :class:`QualityDiscriminator` or None; ``disc_weight`` = ``w_disc``;
            ``disc_lr``/``disc_betas``: its Adam.
    """

    def __init__(
        self,
        generator: LipGenerator,
        *,
        fps: float = 25.0,
        sample_rate: int = 16000,
        expert: str | None = None,
        expert_config: dict | None = None,
        sync_weight: float = 0.03,
        discriminator: QualityDiscriminator | None = None,
        disc_weight: float = 0.07,
        disc_lr: float = 1e-4,
        disc_betas=(0.5, 0.999),
    ):
        super().__init__()
        self.generator = generator
        self.fps, self.sample_rate = float(fps), int(sample_rate)
        self.expert_path = None if expert in (None, "", "null") else str(expert)
        if self.expert_path == TRAIN and expert_config is None:
            raise ValueError(
                "wav2lip: model.sync.expert=train needs the expert's config (build with build_wav2lip)"
            )
        self.expert_config = expert_config
        self.sync_weight = float(sync_weight) if self.expert_path else 0.0
        self.discriminator = discriminator
        self.disc_weight = float(disc_weight) if discriminator is not None else 0.0
        if self.sync_weight < 0 or self.disc_weight < 0 or self.sync_weight + self.disc_weight >= 1:
            raise ValueError(
                f"wav2lip needs sync.weight, disc.weight ≥ 0 with sum < 1 (the rest weights L1); "
                f"got {self.sync_weight} + {self.disc_weight}"
            )
        if discriminator is not None:
            discriminator.requires_grad_(
                False
            )  # stepped by disc_optimizer below, never by the trainer
            self.disc_optimizer = BufferedAdam(
                list(discriminator.parameters()), lr=disc_lr, betas=disc_betas
            )
        self._warned_no_expert = False

    # pieces ----------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return self.generator.size

    def frame_mels(self, wav: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Waveform ``B×S`` → the centred mel window of every frame, ``B×F×1×80×16``."""
        mel = log_mel(wav, self.sample_rate)
        starts = frame_to_mel(torch.arange(num_frames) - MEL_CENTRE, self.fps)
        return mel_windows(mel, starts).unsqueeze(2)

    def render(self, frames: torch.Tensor, ref: torch.Tensor, wav: torch.Tensor) -> torch.Tensor:
        """Pose frames ``B×3×F×S×S`` (only their upper halves are seen) + ``ref`` ``B×3×S×S``
        + audio ``B×S`` → generated ``B×3×F×S×S``."""
        b, _, f, h, w = frames.shape
        masked = mask_lower_half(frames).transpose(1, 2).reshape(b * f, 3, h, w)
        refs = ref.unsqueeze(1).expand(b, f, 3, h, w).reshape(b * f, 3, h, w)
        mels = self.frame_mels(wav, f).reshape(b * f, 1, MEL_BINS, MEL_STEPS).to(frames.dtype)
        out = self.generator(torch.cat([masked, refs], dim=1), mels)
        return out.reshape(b, f, 3, h, w).transpose(1, 2)

    def expert(self) -> nn.Module | None:
        """The frozen expert (trained first when ``model.sync.expert=train``), or None."""
        if self.expert_path is None:
            return None
        if self.expert_path == TRAIN:
            return _expert_for(str(ensure_expert(self.expert_config)))
        return _expert_for(self.expert_path)

    def sync_loss(self, video: torch.Tensor, wav: torch.Tensor) -> torch.Tensor:
        """``−log P(in sync)`` of the expert, mean over the ``F-4`` windows of ``video`` ``B×3×F×H×W``."""
        expert = self.expert().to(video.device)
        n = video.shape[2] - SYNC_FRAMES + 1
        with torch.no_grad():
            audio_emb = expert.embed_audio(wav, n, fps=self.fps, sample_rate=self.sample_rate)
        video_emb = expert.embed_video(video)
        cosine = (video_emb * audio_emb).sum(-1)
        return F.softplus(-expert.sync_logit(cosine)).mean()

    def _discriminator_step(self, real: torch.Tensor, fake: torch.Tensor) -> dict[str, float]:
        """One Adam step of the discriminator on real vs (detached) generated frames ``N×3×H×W``."""
        disc = self.discriminator
        params = list(disc.parameters())
        disc.requires_grad_(True)
        try:
            with torch.enable_grad():
                real_logit, fake_logit = disc(real.detach()).float(), disc(fake.detach()).float()
                loss = 0.5 * (F.softplus(-real_logit).mean() + F.softplus(fake_logit).mean())
                grads = torch.autograd.grad(loss, params)
        finally:
            disc.requires_grad_(False)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # data-parallel training: the trainer's DDP never sees these gradients, so average them here
            world = torch.distributed.get_world_size()
            for grad in grads:
                torch.distributed.all_reduce(grad)
                grad.div_(world)
        self.disc_optimizer.step(params, grads)
        return {
            "d_loss": float(loss.detach()),
            "d_real": float(torch.sigmoid(real_logit.detach()).mean()),
            "d_fake": float(torch.sigmoid(fake_logit.detach()).mean()),
        }

    # training --------------------------------------------------------------------------------
    def training_loss(self, batch: dict, generator: torch.Generator | None = None):
        """Reconstruction (+ expert sync) (+ adversarial) loss of every frame of ``batch["video"]``."""
        video, ref, wav = batch["video"], batch["ref"], batch["audio"]
        b, _, f, h, w = video.shape
        fake = self.render(video, ref, wav)
        err = fake.float() - video.float()
        l1, mse = err.abs().mean(), err.pow(2).mean()
        logs: dict[str, float] = {"l1": float(l1.detach()), "mse": float(mse.detach())}
        sync_weight = self.sync_weight
        if self.expert_path is None and self.training and not self._warned_no_expert:
            self._warned_no_expert = True
            message = (
                "wav2lip: no lip-sync expert given (model.sync.expert is null), so it trains WITHOUT the "
                "sync loss (L1 reconstruction only, plus the discriminator if on). Train one with "
                "`python -m singer.train model=syncnet ...` and set model.sync.expert=<that run>, or set "
                "model.sync.expert=train to train it in this job first."
            )
            log.warning(message)
            warnings.warn(message, stacklevel=2)
        if sync_weight > 0 and f < SYNC_FRAMES:
            raise ValueError(
                f"wav2lip's sync loss needs clips of ≥ {SYNC_FRAMES} frames (trainer.num_frames={f})"
            )
        disc_weight = self.disc_weight
        recon_weight = 1.0 - sync_weight - disc_weight
        loss = recon_weight * l1
        if sync_weight > 0:
            sync = self.sync_loss(fake, wav)
            loss = loss + sync_weight * sync
            logs["sync"] = float(sync.detach())
        if self.discriminator is not None:
            real_frames = video.transpose(1, 2).reshape(b * f, 3, h, w)
            fake_frames = fake.transpose(1, 2).reshape(b * f, 3, h, w)
            if self.training and torch.is_grad_enabled():
                logs.update(self._discriminator_step(real_frames, fake_frames))
            adv = F.softplus(-self.discriminator(fake_frames).float()).mean()  # non-saturating
            loss = loss + disc_weight * adv
            logs["adv"] = float(adv.detach())
        return loss, logs

    # sampling --------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, conditions: Conditions, **options) -> torch.Tensor:
        """``B×3×F×H×W`` in [-1, 1]: every frame from the reference (identity and pose; its lower
        half masked) and the frame's mel window, as the original animates a still image. The
        diffusion options (``steps``, ``guidance_scale``, ``generator``) do not apply and are ignored."""
        ref, f = conditions.ref, int(conditions.num_frames)
        size = ref.shape[-2:]
        if tuple(size) != (self.size, self.size):
            ref = F.interpolate(
                ref.float(),
                size=(self.size, self.size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
        pose = ref.unsqueeze(2).expand(-1, -1, f, -1, -1)
        video = self.render(pose, ref, conditions.audio)
        if tuple(size) != (self.size, self.size):
            b = video.shape[0]
            frames = F.interpolate(
                video.transpose(1, 2).reshape(b * f, 3, self.size, self.size),
                size=tuple(size),
                mode="bilinear",
                align_corners=False,
            )
            video = frames.reshape(b, f, 3, *size).transpose(1, 2)
        return video.clamp(-1, 1)


def build_wav2lip(cfg) -> Wav2Lip:
    """Build from a composed config (``model`` section; frame size from ``trainer.size``)."""
    mc = cfg.model
    gen = LipGenerator(
        int(cfg.trainer.size),
        face_channels=list(mc.face_channels),
        audio_channels=list(mc.audio_channels),
        face_dim=int(mc.face_dim),
        audio_dim=int(mc.audio_dim),
    )
    disc_cfg = mc.disc
    disc = QualityDiscriminator(list(disc_cfg.channels)) if disc_cfg.enabled else None
    expert = mc.sync.expert
    if expert and int(cfg.trainer.num_frames) < SYNC_FRAMES:
        raise ValueError(
            f"wav2lip's sync loss needs trainer.num_frames ≥ {SYNC_FRAMES} (one 0.2 s window), got "
            f"{cfg.trainer.num_frames}; or set model.sync.expert=null to train without it"
        )
    in_job = expert_config(cfg, mc.sync.get("train_steps")) if expert == TRAIN else None
    return Wav2Lip(
        gen,
        fps=float(cfg.data.fps),
        sample_rate=int(cfg.data.sample_rate),
        expert=expert,
        expert_config=in_job,
        sync_weight=float(mc.sync.weight),
        discriminator=disc,
        disc_weight=float(disc_cfg.weight),
        disc_lr=float(disc_cfg.lr),
        disc_betas=tuple(disc_cfg.betas),
    )
