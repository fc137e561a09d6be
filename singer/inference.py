"""Loading trained models and generating videos of any length (clips chained by motion frames).

Generation streams: :func:`generate_clips` yields each clip's frames as soon as it is
sampled, and :func:`write_video` hands them straight to the mp4 encoder, so memory stays flat
however long the song is, and a run that dies leaves ``<out>.part`` with every clip so far.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset, default_collate
from tqdm.auto import tqdm

from singer.cli import UserError
from singer.config import SEED_MAX, validate
from singer.models.spec import Conditions, ModelSpec, get_model_spec
from singer.acceleration import resolve_device
from singer.data.batches import resize_batch, to_device
from singer.data.media import Mp4Writer, fit_length, write_mp4
from singer.train_state import CHECKPOINT_NAME


class CheckpointError(UserError):
    """A checkpoint file that cannot be loaded."""


class MissingCheckpointError(CheckpointError, FileNotFoundError):
    """No checkpoint where one was asked for (a ``FileNotFoundError`` too, as callers expect)."""


class GenerationError(UserError, ValueError):
    """Generation settings that cannot produce a video."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    spec: ModelSpec
    cfg: DictConfig
    step: int
    device: torch.device

    @property
    def fps(self) -> float:
        return float(self.cfg.data.fps)

    @property
    def sample_rate(self) -> int:
        return int(self.cfg.data.sample_rate)

    @property
    def size(self) -> int:
        return int(self.cfg.trainer.size)

    @property
    def clip_frames(self) -> int:
        return int(self.cfg.trainer.num_frames)

    @property
    def motion_frames(self) -> int:
        return int(self.cfg.model.get("motion_frames", 0))


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory holding checkpoints/last.pt."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / CHECKPOINT_NAME
    if not path.is_file():
        raise MissingCheckpointError(
            f"no checkpoint at {path}", "give a .pt file or a training run directory"
        )
    return path


def read_checkpoint(path: Path) -> dict:
    """The state dict of a training checkpoint; :class:`CheckpointError` for anything else.

    ``weights_only=True``: a file that would need to run code to load is refused.
    """
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is an empty file", "give a complete checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a corrupt file reaches the unpickler's internals
        # (IndexError, KeyError, ... on arbitrary bytes), not only UnpicklingError
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise CheckpointError(
            f"cannot load checkpoint {path}: {first}",
            "give a checkpoint written by python -m singer.train (checkpoints/last.pt)",
        ) from err
    missing = [
        k
        for k in ("config", "model", "ema", "step")
        if not isinstance(state, dict) or k not in state
    ]
    if missing:
        raise CheckpointError(
            f"{path} is not a training checkpoint (no {', '.join(missing)})",
            "give a checkpoint written by python -m singer.train (checkpoints/last.pt)",
        )
    return state


def load_model(
    checkpoint: str | Path, *, device: str = "auto", use_ema: bool = True
) -> LoadedModel:
    """Rebuild the model from the config saved in the checkpoint and load its (EMA) weights."""
    path = resolve_checkpoint(checkpoint)
    state = read_checkpoint(path)
    cfg = validate(OmegaConf.create(state["config"]))
    spec = get_model_spec(cfg.model.name)
    model = spec.build(cfg)
    model.load_state_dict(state["ema" if use_ema else "model"])
    dev = resolve_device(device)
    return LoadedModel(model.to(dev).eval(), spec, cfg, int(state["step"]), dev)


def square_face(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop an H×W×3 uint8 image to a square and resize it to size×size."""
    import cv2  # lazy: start-up time (0.3 s); training imports this module and never crops

    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = image[top : top + side, left : left + side]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(crop, (size, size), interpolation=interp)


def to_tensor_frames(frames: np.ndarray) -> torch.Tensor:
    """F×H×W×3 (or H×W×3) uint8 → 3×F×H×W (or 3×H×W) float in [-1, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(frames)).float() / 127.5 - 1.0
    return t.permute(3, 0, 1, 2) if t.dim() == 4 else t.permute(2, 0, 1)


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """3×F×H×W in [-1, 1] → F×H×W×3 uint8."""
    return (
        ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()
    )


def check_sampling(steps: int | None, guidance_scale: float | None, seed: int) -> None:
    """Refuse settings that cannot sample: no steps, a non-finite CFG scale (NaN makes an
    all-black video), a seed torch cannot take."""
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise GenerationError(
            f"--steps {steps} is not a number of sampling steps", "give --steps >= 1"
        )
    if guidance_scale is not None and not math.isfinite(guidance_scale):
        raise GenerationError(
            f"--guidance {guidance_scale} is not a finite number", "give a CFG scale such as 3.5"
        )
    if not 0 <= seed <= SEED_MAX:
        raise GenerationError(f"--seed {seed} is out of range", f"give a seed from 0 to {SEED_MAX}")


def planned_frames(loaded: LoadedModel, num_samples: int) -> int:
    """Frames generated for ``num_samples`` of audio: round(duration · fps), at least one."""
    return max(1, round(num_samples / loaded.sample_rate * loaded.fps))


@torch.no_grad()
def generate_clips(
    loaded: LoadedModel,
    face: np.ndarray,
    audio: np.ndarray,
    *,
    steps: int | None = None,
    guidance_scale: float | None = None,
    seed: int = 0,
    progress: bool = True,
) -> Iterator[np.ndarray]:
    """The frames for ``audio`` (mono, at the model's sample rate), one clip at a time:
    ``K×size×size×3`` uint8 chunks whose lengths add up to :func:`planned_frames`.

    Audio longer than one training clip is generated clip by clip; each clip sees the last
    motion frames of the previous one (the first clip sees the reference frame repeated, as
    in training). Only the current clip and its motion frames are held.
    """
    cfg, dev = loaded.cfg, loaded.device
    if loaded.spec.sample is None:
        raise GenerationError(
            f"model '{loaded.spec.name}' does not generate video ({loaded.spec.description})",
            "give the checkpoint of a video model",
        )
    check_sampling(steps, guidance_scale, seed)
    steps = int(steps if steps is not None else cfg.model.sample.steps)
    guidance_scale = float(
        guidance_scale if guidance_scale is not None else cfg.model.sample.guidance_scale
    )
    fps, sr, clip = loaded.fps, loaded.sample_rate, loaded.clip_frames
    total_frames = planned_frames(loaded, len(audio))
    num_clips = math.ceil(total_frames / clip)
    # Rounding F can leave up to half a frame of audio past the last frame; it is kept (unused).
    padded = np.zeros(max(len(audio), round(num_clips * clip / fps * sr) + 1), dtype=np.float32)
    padded[: len(audio)] = audio

    ref = to_tensor_frames(square_face(face, loaded.size)).unsqueeze(0).to(dev)
    m = max(1, loaded.motion_frames)
    motion = ref.unsqueeze(2).repeat(1, 1, m, 1, 1)
    generator = torch.Generator(device=dev).manual_seed(seed)
    done = 0
    for c in tqdm(range(num_clips), desc="generate", disable=not progress):
        start, stop = round(c * clip / fps * sr), round((c + 1) * clip / fps * sr)
        wav = torch.from_numpy(padded[start:stop]).unsqueeze(0).to(dev)
        conditions = Conditions(audio=wav, ref=ref, num_frames=clip, motion=motion)
        video = loaded.spec.sample(
            loaded.model,
            conditions,
            steps=steps,
            guidance_scale=guidance_scale,
            generator=generator,
        )
        motion = video[:, :, -m:]
        keep = min(video.shape[2], total_frames - done)
        done += keep
        yield to_uint8_frames(video[0, :, :keep])


def generate_video(
    loaded: LoadedModel,
    face: np.ndarray,
    audio: np.ndarray,
    *,
    steps: int | None = None,
    guidance_scale: float | None = None,
    seed: int = 0,
    progress: bool = True,
) -> np.ndarray:
    """Frames F×size×size×3 uint8 for ``audio`` (mono, at the model's sample rate), all at once.

    F = round(duration · fps), so the video matches the audio within half a frame. Holds every
    frame: for long audio use :func:`write_video`, which streams them to the file.
    """
    chunks = generate_clips(
        loaded,
        face,
        audio,
        steps=steps,
        guidance_scale=guidance_scale,
        seed=seed,
        progress=progress,
    )
    return np.concatenate(list(chunks), axis=0)


def write_video(
    loaded: LoadedModel,
    face: np.ndarray,
    audio: np.ndarray,
    out: str | Path,
    *,
    steps: int | None = None,
    guidance_scale: float | None = None,
    seed: int = 0,
    progress: bool = True,
    soundtrack: np.ndarray | None = None,
) -> int:
    """Generate the video for ``audio`` straight into the mp4 ``out`` (with the audio as its
    sound track, trimmed or padded to the frames); returns the number of frames.

    ``soundtrack`` (same rate, e.g. the song a vocal separator took ``audio`` from) replaces
    ``audio`` as the mp4's sound; the model is still driven by ``audio``.

    Each clip is encoded as soon as it is sampled. The file is ``<out>.part`` until the end;
    if generation fails, the part file keeps every clip encoded so far and ``out`` is untouched.
    """
    check_sampling(steps, guidance_scale, seed)
    total = planned_frames(loaded, len(audio))
    sound = audio if soundtrack is None else soundtrack
    wave = fit_length(sound, round(total / loaded.fps * loaded.sample_rate))
    with Mp4Writer(out, loaded.fps, sample_rate=loaded.sample_rate) as writer:
        for frames in generate_clips(
            loaded,
            face,
            audio,
            steps=steps,
            guidance_scale=guidance_scale,
            seed=seed,
            progress=progress,
        ):
            writer.write(frames)
        writer.set_audio(wave)
    return writer.frames_written


def sample_video(
    spec: ModelSpec,
    model: torch.nn.Module,
    dataset: Dataset,
    path: Path,
    cfg: DictConfig,
    device: torch.device,
) -> Path | None:
    """The trainer's sample: generate the first item of ``dataset`` from fixed noise
    (``seed + 777``) and write it beside its ground truth, with its sound, to the mp4 ``path``.
    None for an empty dataset."""
    if len(dataset) == 0:
        return None
    batch = to_device(resize_batch(default_collate([dataset[0]]), cfg.trainer.size), device)
    generator = torch.Generator(device=device if device.type == "cuda" else "cpu")
    video = spec.sample(
        model,
        Conditions.from_batch(batch, device=device),
        steps=cfg.trainer.sample_steps,
        guidance_scale=cfg.model.sample.guidance_scale,
        generator=generator.manual_seed(cfg.seed + 777),
    )
    side_by_side = torch.cat([video[0], batch["video"][0]], dim=-1)  # 3×F×H×2W
    audio = batch["audio"][0].float().cpu().numpy()
    return write_mp4(path, to_uint8_frames(side_by_side), cfg.data.fps, audio, cfg.data.sample_rate)
