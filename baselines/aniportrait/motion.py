"""Face motion parameters: rendering them as a landmark image, and reading them from real video.

Motion parameters are SynthSing's face cues, ``B×F×K`` in ``singer.data.synth.CUES`` order
(mouth_open, mouth_width, brow, sway, eye_close, nod).

:func:`render_motion` draws them as a 3-channel "pose image" (AniPortrait renders projected
face landmarks; ours is its simplest analogue): Gaussian blobs in the renderer's face layout,
channel 0 the mouth (sized by width and opening), channel 1 the eyes (squashed by closure),
channel 2 the brows (raised by the brow cue), all moved with the head by sway and nod. Values
are in [-1, 1] like pixels. Plain tensor ops; nothing is learned and it is not trained through.

:func:`face_box_motion` is the real-data target (no landmark model ships with the harness): the
per-frame face box of the clip, found by the same bundled detector that ``singer.data.prepare``
crops with, as sway/nod in SynthSing's units relative to the crop centre (the prepared crop is
centred on the clip's face box). Only those two cues are valid; the others are masked out of
the stage-1 loss and drawn at rest values in stage 2.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from singer.data import synth as S
from singer.data.prepare import FaceDetector

MOTION_CHANNELS = 3
K = len(S.CUES)
CUE = {name: i for i, name in enumerate(S.CUES)}
# Rest values for cues a real clip cannot measure (mouth half-wide, everything else at rest).
REST = torch.tensor([0.5 if name == "mouth_width" else 0.0 for name in S.CUES])
LOW = torch.tensor([-1.0 if name == "sway" else 0.0 for name in S.CUES])
HIGH = torch.ones(K)


def clamp_motion(motion: torch.Tensor) -> torch.Tensor:
    """Clamp ``B×F×K`` parameters to their valid ranges (sway [-1, 1], the rest [0, 1])."""
    return torch.maximum(torch.minimum(motion, HIGH.to(motion)), LOW.to(motion))


def _blob(xs, ys, cx, cy, sx, sy) -> torch.Tensor:
    return torch.exp(
        -0.5
        * (
            ((xs - cx[..., None, None]) / sx[..., None, None]) ** 2
            + ((ys - cy[..., None, None]) / sy[..., None, None]) ** 2
        )
    )


def render_motion(motion: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Motion ``B×F×K`` → landmark image ``B×3×F×H×W`` in [-1, 1] (see the module docstring)."""
    m = clamp_motion(motion.float())
    ys = (torch.arange(height, device=m.device, dtype=torch.float32) + 0.5)[:, None] / height
    xs = (torch.arange(width, device=m.device, dtype=torch.float32) + 0.5)[None, :] / width
    cue = {name: m[..., i] for name, i in CUE.items()}
    cx = S.REST_X + S.SWAY_AMP * cue["sway"]
    cy = S.REST_Y + S.NOD_AMP * cue["nod"]
    one = torch.ones_like(cx)

    mouth = _blob(
        xs,
        ys,
        cx,
        cy + S.MOUTH_Y,
        S.MOUTH_RX0 + S.MOUTH_RX1 * cue["mouth_width"],
        S.MOUTH_RY0 + S.MOUTH_RY1 * cue["mouth_open"] + 0.005,
    )
    eye_ry = S.EYE_RY * (1.0 - cue["eye_close"]) + 0.004
    eye_cy = cy + S.EYE_Y + S.EYE_RY - eye_ry
    brow_cy = cy + S.BROW_Y - S.BROW_AMP * cue["brow"]
    eyes = torch.zeros_like(mouth)
    brows = torch.zeros_like(mouth)
    for sign in (-1.0, 1.0):
        eyes = torch.maximum(
            eyes, _blob(xs, ys, cx + sign * S.EYE_X, eye_cy, S.EYE_RX * one, eye_ry)
        )
        brows = torch.maximum(
            brows,
            _blob(
                xs,
                ys,
                cx + sign * S.BROW_X,
                brow_cy,
                S.BROW_HALF_LEN * one,
                S.BROW_HALF_THICK * 1.5 * one,
            ),
        )
    return torch.stack([mouth, eyes, brows], dim=1) * 2.0 - 1.0


Detector = Callable[[np.ndarray], "tuple[float, float, float] | None"]


def default_detector() -> Detector:
    """The bundled frontal-face detector ``singer.data.prepare`` crops with (local weights only)."""
    return FaceDetector().detect


def face_box_motion(video: torch.Tensor, detector: Detector) -> tuple[torch.Tensor, torch.Tensor]:
    """Face-box trajectory of ``video`` ``B×3×F×H×W`` ([-1, 1]) as motion targets.

    Returns ``(motion B×F×K, valid B×F×K bool)``: sway = (box centre x − ½)/SWAY_AMP and
    nod = (box centre y − ½)/NOD_AMP (frame fractions; SynthSing's head-shift units), valid where
    the detector found a face; every other cue is at its rest value and invalid.
    """
    b, _, f, h, w = video.shape
    frames = ((video.detach().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    frames = frames.permute(0, 2, 3, 4, 1).cpu().numpy()  # B×F×H×W×3
    motion = REST.to(video.device).repeat(b, f, 1)
    valid = torch.zeros(b, f, K, dtype=torch.bool, device=video.device)
    for i in range(b):
        for j in range(f):
            box = detector(frames[i, j])
            if box is None:
                continue
            cx, cy, _ = box
            motion[i, j, CUE["sway"]] = (cx / w - 0.5) / S.SWAY_AMP
            motion[i, j, CUE["nod"]] = (cy / h - 0.5) / S.NOD_AMP
            valid[i, j, CUE["sway"]] = valid[i, j, CUE["nod"]] = True
    return motion, valid
