"""Read SynthSing face parameters back from frames, without the truth.

The SynthSing renderer (``singer.data.synth``) draws fixed feature colours (mouth, eyes, brows)
at fixed places relative to the head centre, on a plain background. So the face parameters can
be measured from *any* frames (decoded clips, or a model's generated frames):

- ``sway``:  horizontal centroid of the head silhouette (everything that is not background).
- ``nod``:   vertical centroid of the silhouette, minus its offset from the head centre.
- ``mouth_width`` / ``mouth_open``: area and horizontal spread of mouth-coloured pixels
  (a filled ellipse of half-width ``a`` has horizontal variance a²/4 and area π·a·b).
- ``eye_close``: visible area of eye-coloured pixels over the open-eye area.
- ``brow``:  vertical centroid of brow-coloured pixels relative to the head centre.

"Mouth-coloured" is a soft per-pixel weight: the projection of the pixel colour on the line from
the skin colour to the fixed feature colour, clipped to [0, 1]; anti-aliased edges count
fractionally, so areas and centroids are sub-pixel accurate.

    python -m singer.data.estimator --data DIR   # Pearson r and MAE per cue vs meta.jsonl truth
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import decord
import numpy as np
from tqdm.auto import tqdm

from singer.cli import entry_point
from singer.data import synth as S

# Cues returned by estimate_face_params (ESTIMATED_CUES plus the head nod).
RETURNED_CUES = S.ESTIMATED_CUES + ("nod",)

# Measurement windows, in fractions of the frame size around the head centre. Each holds its
# feature at every parameter value, with a margin from its neighbours (see synth's geometry).
MOUTH_WINDOW = (0.125, 0.095)  # semi-axes of an elliptical window around the mouth centre
EYE_WINDOW_X = 0.07  # half-width around each eye centre
EYE_WINDOW_Y = (-0.084, 0.03)
BROW_WINDOW_X = 0.05
BROW_WINDOW_Y = (-0.215, -0.084)
SKIN_PATCH_X = 0.03  # between the eyes and brows, above the mouth: only skin there
SKIN_PATCH_Y = (-0.02, 0.06)  # relative to the silhouette centroid
TYPICAL_HAIR_OFFSET = -0.045  # silhouette centroid minus head centre, typical over identities

MIN_SILHOUETTE = 0.02  # of the frame: less than this is "no face here"
MIN_CONTRAST = 30.0  # skin must be at least this far (RGB) from each feature colour


def _border_colour(frames: np.ndarray) -> np.ndarray:
    """Median colour of the outermost pixel ring over all frames (3,)."""
    ring = np.concatenate(
        [
            frames[:, 0].reshape(-1, 3),
            frames[:, -1].reshape(-1, 3),
            frames[:, :, 0].reshape(-1, 3),
            frames[:, :, -1].reshape(-1, 3),
        ]
    )
    return np.median(ring, axis=0)


def _projection_weight(image: np.ndarray, skin: np.ndarray, colour) -> np.ndarray:
    """Soft membership (F×H×W in [0, 1]) of each pixel in a feature of ``colour`` drawn over skin."""
    luma = np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
    axis = float((np.asarray(colour, dtype=np.float32) - skin) @ luma)
    weight = ((image - skin) @ luma) / axis
    return np.clip(weight, 0.0, 1.0)


def _silhouette_centroid(
    image: np.ndarray, background: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centroid (x, y in px, each F) and area fraction (F) of the non-background silhouette."""
    _, height, width, _ = image.shape
    # Skin and hair are at least 80 RGB units from the background by construction; weights
    # saturate at half that so the edge pixels count about as much as they are covered.
    weight = np.clip(np.linalg.norm(image - background, axis=-1) / 40.0, 0.0, 1.0)
    xs = np.arange(width, dtype=np.float32) + 0.5
    ys = np.arange(height, dtype=np.float32) + 0.5
    mass = weight.sum(axis=(1, 2))
    safe = np.maximum(mass, 1e-6)
    hx = (weight.sum(axis=1) * xs).sum(axis=1) / safe
    hy = (weight.sum(axis=2) * ys).sum(axis=1) / safe
    return hx, hy, mass / (height * width)


def _weighted_moments(weight: np.ndarray, mask: np.ndarray, xs: np.ndarray, ys: np.ndarray):
    """Area, centroid and horizontal variance (each F) of ``weight`` inside ``mask`` (F×H×W)."""
    w = weight * mask
    area = w.sum(axis=(1, 2))
    safe = np.maximum(area, 1e-6)
    mx = (w * xs).sum(axis=(1, 2)) / safe
    my = (w * ys).sum(axis=(1, 2)) / safe
    var_x = (w * (xs - mx[:, None, None]) ** 2).sum(axis=(1, 2)) / safe
    return area, mx, my, var_x


def _mouth(image, skin, cx, cy, size, xs, ys):
    """Mouth moments in an elliptical window around the expected mouth centre."""
    weight = _projection_weight(image, skin, S.MOUTH_COLOUR)
    ax, ay = MOUTH_WINDOW[0] * size, MOUTH_WINDOW[1] * size
    mouth_cy = cy + S.MOUTH_Y * size
    inside = ((xs - cx[:, None, None]) / ax) ** 2 + (
        (ys - mouth_cy[:, None, None]) / ay
    ) ** 2 <= 1.0
    return _weighted_moments(weight, inside, xs, ys)


def rest_offset(identity: dict, size: int) -> float:
    """Silhouette centroid minus head centre (px, y) of ``identity``'s face at rest."""
    rest = S.render_face({name: np.zeros(1) for name in S.FACE_CUES}, identity, size).astype(
        np.float32
    )
    _, hy, _ = _silhouette_centroid(rest, np.asarray(identity["background"], dtype=np.float32))
    return float(hy[0] - S.REST_Y * size)


def estimate_face_params(frames: np.ndarray, identity: dict | None = None) -> dict[str, np.ndarray]:
    """Face parameters of every frame, on the truth's scale: ``{cue: F float64}``.

    ``frames`` is ``F×H×W×3`` uint8 RGB of one clip (square, any size the renderer supports).
    Returns every name in ``ESTIMATED_CUES`` plus ``"nod"``. Colours (background, skin) are
    measured from the frames themselves, so one call should hold frames of one clip. The head
    centre's height inside the silhouette is taken from the mouth, whose centre is fixed on the
    face (median over the clip); ``identity`` (the clip's ``record["identity"]``), when given,
    only places the search window for it and stands in when no frame shows a mouth.

    Frames without a recognisable face (too little non-background, or a skin colour that cannot
    be told apart from the feature colours) give NaN for every cue. Values are clipped to each
    cue's range ([0, 1]; sway [-1, 1]).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be F×H×W×3, got shape {frames.shape}")
    num_frames, height, width, _ = frames.shape
    if height != width:
        raise ValueError(f"SynthSing frames are square, got {width}x{height}")
    nan = {name: np.full(num_frames, np.nan) for name in RETURNED_CUES}
    if num_frames == 0:
        return nan
    size = float(width)
    image = frames.astype(np.float32)
    xs = (np.arange(width, dtype=np.float32) + 0.5)[None, None, :]
    ys = (np.arange(height, dtype=np.float32) + 0.5)[None, :, None]

    background = _border_colour(image)
    hx, hy, coverage = _silhouette_centroid(image, background)
    is_face = (coverage > MIN_SILHOUETTE) & (coverage < 0.95)
    if not is_face.any():
        return nan

    # Skin: the patch between the eyes, located from the silhouette alone.
    px = np.abs(xs - hx[:, None, None]) <= SKIN_PATCH_X * size
    py = (ys - hy[:, None, None] >= SKIN_PATCH_Y[0] * size) & (
        ys - hy[:, None, None] <= SKIN_PATCH_Y[1] * size
    )
    patch = (px & py) & is_face[:, None, None]
    if not patch.any():
        return nan
    skin = np.median(image[patch], axis=0)
    if (
        min(
            np.linalg.norm(skin - np.asarray(c, dtype=np.float32))
            for c in (S.MOUTH_COLOUR, S.EYE_COLOUR, S.BROW_COLOUR)
        )
        < MIN_CONTRAST
    ):
        return nan

    # Head centre: x from the (left-right symmetric) silhouette; y from the silhouette minus
    # its offset from the head centre. The offset is constant over a clip; it is measured from
    # the mouth, whose centre is fixed on the face (median over the clip). Measuring it on the
    # frames themselves beats predicting it from the identity, because video coding shifts the
    # silhouette's soft edges differently for each hair and skin colour.
    guess = hy - (
        rest_offset(identity, width) if identity is not None else TYPICAL_HAIR_OFFSET * size
    )
    area, _, my, _ = _mouth(image, skin, hx, guess, size, xs, ys)
    ok = is_face & (area > 0.5)
    if ok.any():
        offset = float(np.median((hy - (my - S.MOUTH_Y * size))[ok]))
    else:
        offset = float(np.median(hy - guess))
    cx, cy = hx, hy - offset

    sway = (cx - S.REST_X * size) / (S.SWAY_AMP * size)
    nod = (cy - S.REST_Y * size) / (S.NOD_AMP * size)

    # Mouth: half-width a from the horizontal variance (a²/4), half-height b from the area πab.
    area, _, _, var_x = _mouth(image, skin, cx, cy, size, xs, ys)
    half_width = 2.0 * np.sqrt(np.maximum(var_x, 0.0))
    half_height = area / (math.pi * np.maximum(half_width, 1e-6))
    mouth_width = (half_width / size - S.MOUTH_RX0) / S.MOUTH_RX1
    mouth_open = (half_height / size - S.MOUTH_RY0) / S.MOUTH_RY1
    mouth_ok = area > 0.5

    # Eyes: visible area over the open-eye area, both eyes together.
    eye_weight = _projection_weight(image, skin, S.EYE_COLOUR)
    rel_y = ys - cy[:, None, None]
    eye_rows = (rel_y >= EYE_WINDOW_Y[0] * size) & (rel_y <= EYE_WINDOW_Y[1] * size)
    eye_cols = np.zeros_like(eye_rows)
    brow_cols = np.zeros_like(eye_rows)
    for side in (-1.0, 1.0):
        offset_x = np.abs(xs - (cx + side * S.EYE_X * size)[:, None, None])
        eye_cols = eye_cols | (offset_x <= EYE_WINDOW_X * size)
        offset_x = np.abs(xs - (cx + side * S.BROW_X * size)[:, None, None])
        brow_cols = brow_cols | (offset_x <= BROW_WINDOW_X * size)
    eye_area = (eye_weight * (eye_rows & eye_cols)).sum(axis=(1, 2))
    eye_close = 1.0 - eye_area / (2.0 * math.pi * S.EYE_RX * S.EYE_RY * size * size)

    # Brows: their centroid height; the arch lowers the centroid by a third of its depth.
    brow_weight = _projection_weight(image, skin, S.BROW_COLOUR)
    brow_rows = (rel_y >= BROW_WINDOW_Y[0] * size) & (rel_y <= BROW_WINDOW_Y[1] * size)
    brow_area, _, brow_y, _ = _weighted_moments(brow_weight, brow_rows & brow_cols, xs, ys)
    brow = -((brow_y - cy) / size - S.BROW_ARCH / 3.0 - S.BROW_Y) / S.BROW_AMP
    brow_ok = brow_area > 0.5

    out = {
        "mouth_open": np.where(mouth_ok, np.clip(mouth_open, 0.0, 1.0), np.nan),
        "mouth_width": np.where(mouth_ok, np.clip(mouth_width, 0.0, 1.0), np.nan),
        "brow": np.where(brow_ok, np.clip(brow, 0.0, 1.0), np.nan),
        "sway": np.clip(sway, -1.0, 1.0),
        "eye_close": np.clip(eye_close, 0.0, 1.0),
        "nod": np.clip(nod, 0.0, 1.0),
    }
    return {name: np.where(is_face, out[name], np.nan).astype(np.float64) for name in RETURNED_CUES}


# =============================================================================================
# Checking the estimator against a SynthSing folder
# =============================================================================================


def pearson_r(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation over the finite pairs; NaN when either side is constant."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if len(a) < 2 or a.std() < 1e-9 or b.std() < 1e-9:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def read_frames(path: str | Path) -> np.ndarray:
    """All frames of a video (F×H×W×3 uint8 RGB), decoded with decord."""
    reader = decord.VideoReader(str(path))
    frames = reader.get_batch(list(range(len(reader)))).asnumpy()
    del reader
    return frames


def check_dataset(data: str | Path, *, progress: bool = True) -> dict:
    """Estimate every clip of a SynthSing folder and compare with its truth.

    Returns ``{"cues": {cue: {"r", "mae", "frames"}}, "sway_talking_mean_abs", "clips"}``. Pearson r
    and MAE are pooled over the frames of all clips; for ``sway`` (constant 0 in talking clips)
    they are pooled over singing clips only, and ``sway_talking_mean_abs`` reports how far the
    estimate strays from 0 on talking clips.
    """
    data = Path(data)
    records = [
        json.loads(line)
        for line in (data / "meta.jsonl").read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    pooled = {name: ([], []) for name in RETURNED_CUES}
    talking_sway = []
    for record in tqdm(records, desc="estimator check", unit="clip", disable=not progress):
        frames = read_frames(data / record["file"])
        n = min(len(frames), record["num_frames"])
        estimate = estimate_face_params(frames[:n], identity=record.get("identity"))
        for name in RETURNED_CUES:
            truth = np.asarray(record["truth"][name][:n], dtype=np.float64)
            if name == "sway" and record["kind"] != "singing":
                talking_sway.append(np.abs(estimate[name]))
                continue
            pooled[name][0].append(truth)
            pooled[name][1].append(estimate[name])
    cues = {}
    for name, (truths, estimates) in pooled.items():
        truth = np.concatenate(truths) if truths else np.zeros(0)
        estimate = np.concatenate(estimates) if estimates else np.zeros(0)
        ok = np.isfinite(estimate)
        cues[name] = {
            "r": pearson_r(truth, estimate),
            "mae": float(np.mean(np.abs(truth[ok] - estimate[ok]))) if ok.any() else float("nan"),
            "frames": int(ok.sum()),
        }
    sway_abs = np.concatenate(talking_sway) if talking_sway else np.zeros(0)
    return {
        "cues": cues,
        "sway_talking_mean_abs": float(np.nanmean(sway_abs)) if sway_abs.size else float("nan"),
        "clips": len(records),
    }


@entry_point
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Check the face-parameter estimator against SynthSing truth."
    )
    parser.add_argument("--data", required=True, help="a SynthSing folder (with meta.jsonl)")
    args = parser.parse_args(argv)
    report = check_dataset(args.data)
    print(f"{'cue':12s} {'pearson r':>10s} {'MAE':>8s} {'frames':>7s}")
    for name, row in report["cues"].items():
        print(f"{name:12s} {row['r']:10.4f} {row['mae']:8.4f} {row['frames']:7d}")
    print(f"sway on talking clips: mean |estimate| = {report['sway_talking_mean_abs']:.4f}")
    out = Path(args.data) / "estimator_check.json"
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    raise SystemExit(main())
