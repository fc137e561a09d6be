"""Lip, face and pose region masks for Hallo's hierarchical audio attention.

Masks are soft (blurred edges, as Hallo blurs its landmark masks) and form a partition of unity
at every pixel: ``lip + face + pose = 1``, where

* ``lip``  is an ellipse around the mouth (with a margin for its largest opening);
* ``face`` is the rest of the face ellipse (eyes, brows, cheeks): the expression region;
* ``pose`` is everything outside the face (head outline, hair, background), where head motion
  shows (Hallo's "pose" mask is likewise the complement of the expanded face mask).

Two geometries (fractions of the frame; y grows downwards):

``synthsing``  the SynthSing renderer's own geometry (``singer.data.synth``): head centre at
               ``REST_X + SWAY_AMP·sway``, ``REST_Y + NOD_AMP·nod``; the face ellipse takes the
               largest face size an identity can have; the mouth ellipse its largest opening plus
               a margin. With per-frame cues the masks follow the head sway and nod; without
               them they sit at the rest pose (a static mask, as Hallo uses one per video).
``face_box``   real data prepared by ``singer.data.prepare``: each clip is a square crop centred
               on the detected face box, the crop ``FACE_SCALE`` × the box side. So the face box
               is the centred square of side ``1 / FACE_SCALE``; the face ellipse is that box
               expanded by ``FACE_EXPAND`` (Hallo's face_expand_ratio); the lip region is a
               heuristic box in the lower third of the face box (centre at +0.30 side below the
               box centre, half-width 0.25 side, half-height 0.13 side). Static per clip.
"""

from __future__ import annotations

import torch

from singer.data import synth as S
from singer.data.prepare import FACE_SCALE

REGIONS = ("lip", "face", "pose")
GEOMETRIES = ("synthsing", "face_box")

EDGE = 0.04  # soft-edge width, fraction of the frame
LIP_MARGIN = 0.03
FACE_EXPAND = 1.2
SYNTH_FACE_RX, SYNTH_FACE_RY = (
    0.28,
    0.34,
)  # the largest face an identity can have (synth.sample_speaker)
BOX_LIP_DY, BOX_LIP_RX, BOX_LIP_RY = 0.30, 0.25, 0.13  # lip heuristic, in face-box sides


def _soft_ellipse(xs, ys, cx, cy, rx, ry, edge: float = EDGE) -> torch.Tensor:
    """Soft coverage of ellipses: centres ``B×F`` (or floats) on a grid ``H×W`` → ``B×F×H×W``."""
    dx = (xs - cx[..., None, None]) / rx
    dy = (ys - cy[..., None, None]) / ry
    r = torch.sqrt(dx * dx + dy * dy)
    distance = (r - 1.0) * min(rx, ry)  # first-order distance to the outline, frame units
    return (0.5 - distance / edge).clamp(0.0, 1.0)


def _partition(lip: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
    face = torch.maximum(face, lip)
    return torch.stack([lip, face - lip, 1.0 - face], dim=1)  # B×3×F×H×W


def region_masks(
    geometry: str,
    batch_size: int,
    num_frames: int,
    height: int,
    width: int,
    *,
    cues: torch.Tensor | None = None,
    has_cues: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Soft region masks ``B×3×F×H×W`` (order :data:`REGIONS`), summing to 1 at every pixel.

    ``cues`` (``B×F×K`` in ``singer.data.synth.CUES`` order) and ``has_cues`` (``B`` bool) move the
    ``synthsing`` masks with the head sway and nod of the samples that have truth; other samples
    (and the ``face_box`` geometry) get static masks.
    """
    if geometry not in GEOMETRIES:
        raise ValueError(
            f"unknown region geometry '{geometry}'; choose one of {', '.join(GEOMETRIES)}"
        )
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5)[:, None] / height
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5)[None, :] / width
    zeros = torch.zeros(batch_size, num_frames, device=device)
    if geometry == "face_box":
        side = 1.0 / FACE_SCALE
        cx, cy = zeros + 0.5, zeros + 0.5
        lip = _soft_ellipse(
            xs, ys, cx, cy + BOX_LIP_DY * side, BOX_LIP_RX * side, BOX_LIP_RY * side
        )
        face = _soft_ellipse(xs, ys, cx, cy, 0.5 * side * FACE_EXPAND, 0.6 * side * FACE_EXPAND)
        return _partition(lip, face)

    sway, nod = zeros, zeros
    if cues is not None:
        keep = (
            torch.ones(batch_size, dtype=torch.bool, device=device)
            if has_cues is None
            else has_cues.to(device)
        )
        keep = keep.view(-1, 1).float()
        sway = cues[..., S.CUES.index("sway")].float().to(device) * keep
        nod = cues[..., S.CUES.index("nod")].float().to(device) * keep
    cx = S.REST_X + S.SWAY_AMP * sway
    cy = S.REST_Y + S.NOD_AMP * nod
    lip = _soft_ellipse(
        xs,
        ys,
        cx,
        cy + S.MOUTH_Y,
        S.MOUTH_RX0 + S.MOUTH_RX1 + LIP_MARGIN,
        S.MOUTH_RY0 + S.MOUTH_RY1 + LIP_MARGIN,
    )
    face = _soft_ellipse(xs, ys, cx, cy, SYNTH_FACE_RX, SYNTH_FACE_RY)
    return _partition(lip, face)
