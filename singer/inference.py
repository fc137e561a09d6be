"""Loading trained models and generating videos of any length (clips chained by motion frames)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from singer.config import validate
from singer.models.spec import Conditions, ModelSpec, get_model_spec
from singer.trainer import CHECKPOINT_NAME, resolve_device


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
        raise FileNotFoundError(f"no checkpoint at {path} (give a .pt file or a run directory)")
    return path


def load_model(
    checkpoint: str | Path, *, device: str = "auto", use_ema: bool = True
) -> LoadedModel:
    """Rebuild the model from the config saved in the checkpoint and load its (EMA) weights."""
    path = resolve_checkpoint(checkpoint)
    state = torch.load(path, map_location="cpu", weights_only=True)
    cfg = validate(OmegaConf.create(state["config"]))
    spec = get_model_spec(cfg.model.name)
    model = spec.build(cfg)
    model.load_state_dict(state["ema" if use_ema else "model"])
    dev = resolve_device(device)
    return LoadedModel(model.to(dev).eval(), spec, cfg, int(state["step"]), dev)


def square_face(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop an H×W×3 uint8 image to a square and resize it to size×size."""
    import cv2

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


@torch.no_grad()
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
    """Frames F×size×size×3 uint8 for ``audio`` (mono, at the model's sample rate).

    F = round(duration · fps), so the video matches the audio within half a frame. Audio longer
    than one training clip is generated clip by clip; each clip sees the last motion frames of
    the previous one (the first clip sees the reference frame repeated, as in training).
    """
    from tqdm.auto import tqdm

    cfg, dev = loaded.cfg, loaded.device
    if loaded.spec.sample is None:
        raise ValueError(
            f"model '{loaded.spec.name}' does not generate video ({loaded.spec.description})"
        )
    steps = int(steps if steps is not None else cfg.model.sample.steps)
    guidance_scale = float(
        guidance_scale if guidance_scale is not None else cfg.model.sample.guidance_scale
    )
    fps, sr, clip = loaded.fps, loaded.sample_rate, loaded.clip_frames
    total_frames = max(1, round(len(audio) / sr * fps))
    num_clips = math.ceil(total_frames / clip)
    # Rounding F can leave up to half a frame of audio past the last frame; it is kept (unused).
    padded = np.zeros(max(len(audio), round(num_clips * clip / fps * sr) + 1), dtype=np.float32)
    padded[: len(audio)] = audio

    ref = to_tensor_frames(square_face(face, loaded.size)).unsqueeze(0).to(dev)
    m = max(1, loaded.motion_frames)
    motion = ref.unsqueeze(2).repeat(1, 1, m, 1, 1)
    generator = torch.Generator(device=dev).manual_seed(seed)
    pieces = []
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
        pieces.append(video[0])
        motion = video[:, :, -m:]
    return to_uint8_frames(torch.cat(pieces, dim=1)[:, :total_frames])
