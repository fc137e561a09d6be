"""SynthSing motion fidelity: do the generated faces move as the ground truth says they should?

For every item with ground truth (``EvalBatch.has_cues``), the face parameters are read back
from the *generated* frames by the SynthSing estimator
(:func:`singer.data.estimator.estimate_face_params`; frames converted from [-1, 1] to uint8
RGB, centre-cropped to a square if needed) and compared, cue by cue, with the true per-frame
cues (``EvalBatch.cues``, ``B×F×K`` in ``singer.data.synth.CUES`` order).

**Per clip, never pooled.** A clip's value is computed over all of its evaluated frames (its
windows, in order), then clips are averaged (by the evaluator, into speakers first). A
correlation pooled over the frames of many clips would reward getting each clip's *level*
right, which the reference frame gives away; it is not motion, so it is not reported.

- ``motion/<cue>_r``: Pearson correlation over the clip's frames. A generated cue that does not
  move while the truth does scores 0 (it follows none of the motion); a clip whose truth is
  constant for a cue (head sway in talking clips, always 0) gives NaN and is left out of that
  cue's mean.
- ``motion/<cue>_mae``: mean absolute error in the truth's units ([0, 1]; sway [-1, 1]) over
  frames where a face was found.
- ``motion/r_mean`` / ``motion/mae_mean``: per clip the mean over cues.
- ``motion/face_rate``: share of generated frames in which the estimator found a face at all
  (frames without one give NaN estimates and are left out, so read the rest with this one).
- ``motion/seg/<segment>/<cue>_mae`` (when the batch carries SynthSing's audio causes): the
  error on frames of one ground-truth segment type — ``rest`` (the voice is below -40 dB: the
  mouth should stay closed), ``onset`` (the 4 frames from a note/syllable onset), ``held``
  (held ≥ 0.5 s: the eyes close), ``vibrato`` (sung frames with vibrato under way, ≥ 0.15 s
  into a note) — and ``motion/seg/<segment>/share``, the share of frames of that type.

The cues are ``mouth_open``, ``mouth_width``, ``brow`` (eyebrow height), ``sway`` (head sway)
and ``eye_close`` by default (``cues=[...]`` adds ``nod``, which the estimator also reads).

``per_clip()`` gives one value per item (window) in the order seen, as the metric contract
asks; ``clip_values()`` gives the per-clip values above, which the evaluator uses.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from singer.data import estimator as E
from singer.data import synth as S
from singer.metrics.base import EvalBatch, Metric, nanmean
from singer.registry import METRICS

SEGMENTS = ("rest", "onset", "held", "vibrato")
CAUSES = ("loudness", "pitch", "vibrato_phase", "f2", "held", "onset")  # dataset.CAUSES order


def video_to_uint8(video: torch.Tensor) -> np.ndarray:
    """``B×3×F×H×W`` in [-1, 1] → ``B×F×S×S×3`` uint8 RGB (centre square of side ``min(H, W)``)."""
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(f"video must be B×3×F×H×W, got shape {tuple(video.shape)}")
    h, w = video.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    video = video[..., top : top + side, left : left + side]
    frames = ((video.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return frames.permute(0, 2, 3, 4, 1).cpu().numpy()


def fidelity_r(truth: np.ndarray, guess: np.ndarray) -> float:
    """Pearson r over the finite pairs. NaN when the truth does not vary (nothing to follow);
    0 when the truth varies and the estimate does not (it follows none of it)."""
    truth, guess = np.asarray(truth, dtype=np.float64), np.asarray(guess, dtype=np.float64)
    ok = np.isfinite(truth) & np.isfinite(guess)
    truth, guess = truth[ok], guess[ok]
    if len(truth) < 3 or truth.std() < 1e-6:
        return float("nan")
    if guess.std() < 1e-6:
        return 0.0
    return float(np.corrcoef(truth, guess)[0, 1])


def segment_masks(causes: np.ndarray) -> dict[str, np.ndarray]:
    """Frames ``F`` of each segment type from SynthSing's causes ``F×C`` (``CAUSES`` order)."""
    loud = causes[:, CAUSES.index("loudness")]
    held = causes[:, CAUSES.index("held")]
    onset = causes[:, CAUSES.index("onset")] > 0.5
    phase = causes[:, CAUSES.index("vibrato_phase")]
    near_onset = np.zeros_like(onset)
    for k in np.flatnonzero(onset):
        near_onset[k : k + 4] = True
    sung = np.abs(phase).max() > 0  # talking clips have no vibrato phase at all
    return {
        "rest": loud <= S.LEVEL_FLOOR_DB,
        "onset": near_onset,
        "held": held >= S.EYE_HOLD_START,
        "vibrato": (held >= 0.15) & (loud > S.LEVEL_FLOOR_DB) & sung,
    }


@METRICS.register("motion_fidelity")
class MotionFidelity(Metric):
    """SynthSing ground truth: per-clip Pearson r and MAE of cues read from generated frames."""

    name = "motion_fidelity"
    audio_driven = True

    def __init__(self, cues: Sequence[str] | None = None, cue_order: Sequence[str] | None = None):
        self.cue_order = tuple(cue_order) if cue_order is not None else tuple(S.CUES)
        self.cues = tuple(cues) if cues is not None else tuple(S.ESTIMATED_CUES)
        unknown = [c for c in self.cues if c not in E.RETURNED_CUES]
        if unknown:
            raise ValueError(
                f"motion_fidelity: the estimator does not read {unknown}; choose from {E.RETURNED_CUES}"
            )
        absent = [c for c in self.cues if c not in self.cue_order]
        if absent:
            raise ValueError(
                f"motion_fidelity: cues {absent} are not in cue_order {self.cue_order}"
            )
        self.reset()

    def keys(self) -> list[str]:
        per_cue = [f"motion/{c}_{s}" for c in self.cues for s in ("r", "mae")]
        return [*per_cue, "motion/r_mean", "motion/mae_mean", "motion/face_rate"]

    def segment_keys(self) -> list[str]:
        return [
            f"motion/seg/{seg}/{name}"
            for seg in SEGMENTS
            for name in ("share", *(f"{c}_mae" for c in self.cues))
        ]

    def reset(self) -> None:
        # One record per item: (clip id, start, truth F×K', estimate F×K', causes F×C or None).
        self.items: list[tuple[str, int, np.ndarray, np.ndarray, np.ndarray | None] | None] = []

    def update(self, batch: EvalBatch) -> None:
        clips, frames = batch.generated.shape[0], batch.generated.shape[2]
        if batch.cues is None:
            self.items.extend([None] * clips)
            return
        truth_all = batch.cues.detach().double().cpu().numpy()
        if truth_all.shape[:2] != (clips, frames) or truth_all.shape[2] != len(self.cue_order):
            raise ValueError(
                f"motion_fidelity: cues have shape {truth_all.shape}, expected {(clips, frames, len(self.cue_order))} "
                f"(B×F×K for cue order {self.cue_order})"
            )
        has = (
            np.ones(clips, dtype=bool)
            if batch.has_cues is None
            else np.asarray(torch.as_tensor(batch.has_cues).cpu(), dtype=bool).reshape(-1)
        )
        if not has.any():
            self.items.extend([None] * clips)
            return
        causes = None if batch.causes is None else batch.causes.detach().double().cpu().numpy()
        images = video_to_uint8(batch.generated)
        columns = [self.cue_order.index(c) for c in self.cues]
        for i in range(clips):
            if not has[i]:
                self.items.append(None)
                continue
            estimate = E.estimate_face_params(images[i])
            guess = np.stack([estimate[c] for c in self.cues], axis=1)  # F×K'
            face = np.isfinite(np.stack([estimate[n] for n in E.RETURNED_CUES])).any(axis=0)
            guess = np.where(face[:, None], guess, np.nan)
            clip_id = batch.clip_ids[i] if batch.clip_ids else f"item{len(self.items)}"
            start = int(batch.starts[i]) if batch.starts is not None else 0
            self.items.append(
                (
                    clip_id,
                    start,
                    truth_all[i][:, columns],
                    guess,
                    None if causes is None else causes[i],
                )
            )

    # -- per item (window) and per clip ------------------------------------------------------
    def _score(self, truth: np.ndarray, guess: np.ndarray, causes: np.ndarray | None) -> dict:
        out = {}
        rs, maes = [], []
        for k, cue in enumerate(self.cues):
            ok = np.isfinite(truth[:, k]) & np.isfinite(guess[:, k])
            r = fidelity_r(truth[:, k], guess[:, k])
            mae = float(np.abs(truth[ok, k] - guess[ok, k]).mean()) if ok.any() else float("nan")
            out[f"motion/{cue}_r"], out[f"motion/{cue}_mae"] = r, mae
            rs.append(r)
            maes.append(mae)
        out["motion/r_mean"], out["motion/mae_mean"] = nanmean(rs), nanmean(maes)
        face = np.isfinite(guess).any(axis=1)
        out["motion/face_rate"] = float(face.mean()) if len(face) else float("nan")
        if causes is not None:
            for seg, mask in segment_masks(causes).items():
                out[f"motion/seg/{seg}/share"] = float(mask.mean())
                for k, cue in enumerate(self.cues):
                    ok = mask & np.isfinite(guess[:, k]) & np.isfinite(truth[:, k])
                    out[f"motion/seg/{seg}/{cue}_mae"] = (
                        float(np.abs(truth[ok, k] - guess[ok, k]).mean())
                        if ok.any()
                        else float("nan")
                    )
        return out

    def _all_keys(self) -> list[str]:
        has_causes = any(item is not None and item[4] is not None for item in self.items)
        return self.keys() + (self.segment_keys() if has_causes else [])

    def per_clip(self) -> dict[str, list[float]]:
        keys = self._all_keys()
        out: dict[str, list[float]] = {key: [] for key in keys}
        for item in self.items:
            scores = {} if item is None else self._score(item[2], item[3], item[4])
            for key in keys:
                out[key].append(scores.get(key, float("nan")))
        return out

    def clip_values(self) -> dict[str, dict[str, float]]:
        """Every key computed over the concatenated windows of each clip (in start order)."""
        by_clip: dict[str, list] = {}
        for item in self.items:
            if item is not None:
                by_clip.setdefault(item[0], []).append(item)
        keys = self._all_keys()
        out: dict[str, dict[str, float]] = {key: {} for key in keys}
        for clip_id, parts in by_clip.items():
            parts.sort(key=lambda part: part[1])
            truth = np.concatenate([p[2] for p in parts])
            guess = np.concatenate([p[3] for p in parts])
            causes = None if parts[0][4] is None else np.concatenate([p[4] for p in parts])
            scores = self._score(truth, guess, causes)
            for key in keys:
                out[key][clip_id] = scores.get(key, float("nan"))
        return out

    def compute(self) -> dict[str, float]:
        """Mean over clips of the per-clip values (NaN for keys no clip could score)."""
        values = self.clip_values()
        if not any(values.values()):
            return {key: float("nan") for key in self.keys()}
        return {key: nanmean(list(per_clip.values())) for key, per_clip in values.items()}
