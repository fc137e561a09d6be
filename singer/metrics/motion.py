"""SynthSing motion fidelity: do the generated faces move as the ground truth says they should?

For every clip with ground truth (``EvalBatch.has_cues``), the face parameters are read back
from the *generated* frames by the SynthSing estimator
(:func:`singer.data.estimator.estimate_face_params`; frames converted from [-1, 1] to uint8
RGB, centre-cropped to a square if needed) and compared, cue by cue, with the true per-frame
cues (``EvalBatch.cues``, ``B×F×K`` in ``singer.data.synth.CUES`` order):

- ``motion/<cue>_r``: Pearson correlation over the clip's frames (mean over clips). NaN for a
  clip where the truth or the estimate is constant (e.g. head sway in talking clips, which is
  always 0): such clips are left out of the mean, but still count in the MAE.
- ``motion/<cue>_mae``: mean absolute error in the truth's units ([0, 1]; sway [-1, 1]) over
  frames where a face was found (mean over clips).
- ``motion/<cue>_r_pooled``: Pearson r over the frames of all clips together (set level, as
  ``python -m singer.data.estimator`` reports it; it also rewards getting each clip's level
  right, not only its motion).
- ``motion/r_mean`` / ``motion/mae_mean``: per clip the mean over cues, then the mean over clips.
- ``motion/face_rate``: share of generated frames in which the estimator found a face at all
  (frames without one give NaN estimates and are left out of r and MAE, so read the other
  values together with this one).

The cues are ``mouth_open``, ``mouth_width``, ``brow`` (eyebrow height), ``sway`` (head sway)
and ``eye_close`` by default (``cues=[...]`` adds ``nod``, which the estimator also reads).
Every key but the pooled ones has per-clip values for the evaluator's bootstrap, one per clip
in the order seen (NaN for clips without ground truth). Clips without ground truth are
skipped; when no clip had any, every value is NaN.

The estimator can use the clip's identity (colours and shape of the rendered speaker) to place
its search window, but ``EvalBatch`` does not carry it. Without it the estimator measures the
head-centre offset from the mouth in the frames themselves (the median over the clip), which is
what it does on decoded clips too, so no accuracy is lost when a mouth is visible.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch

from singer.data import estimator as E
from singer.data import synth as S
from singer.metrics.base import EvalBatch, Metric
from singer.registry import METRICS


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


def _nanmean(values) -> float:
    data = np.asarray(values, dtype=np.float64)
    data = data[np.isfinite(data)]
    return float(data.mean()) if data.size else float("nan")


@METRICS.register("motion_fidelity")
class MotionFidelity(Metric):
    """SynthSing ground truth: per-cue Pearson r and MAE of cues read from generated frames."""

    name = "motion_fidelity"

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

    def reset(self) -> None:
        self.clips: dict[str, list[float]] = {key: [] for key in self.keys()}
        self.pooled: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {
            c: ([], []) for c in self.cues
        }

    def _skip(self) -> None:
        for values in self.clips.values():
            values.append(float("nan"))

    def update(self, batch: EvalBatch) -> None:
        clips, frames = batch.generated.shape[0], batch.generated.shape[2]
        if batch.cues is None:
            for _ in range(clips):
                self._skip()
            return
        truth_all = batch.cues.detach().double().cpu().numpy()
        if truth_all.shape[:2] != (clips, frames) or truth_all.shape[2] != len(self.cue_order):
            raise ValueError(
                f"motion_fidelity: cues have shape {truth_all.shape}, expected {(clips, frames, len(self.cue_order))} "
                f"(B×F×K for cue order {self.cue_order})"
            )
        if batch.has_cues is None:
            has = np.ones(clips, dtype=bool)
        else:
            has = np.asarray(torch.as_tensor(batch.has_cues).cpu(), dtype=bool).reshape(-1)
        if not has.any():
            for _ in range(clips):
                self._skip()
            return
        images = video_to_uint8(batch.generated)
        for i in range(clips):
            if not has[i]:
                self._skip()
                continue
            estimate = E.estimate_face_params(images[i])
            face = np.isfinite(np.stack([estimate[name] for name in E.RETURNED_CUES])).any(axis=0)
            rs, maes = [], []
            for cue in self.cues:
                truth = truth_all[i, :, self.cue_order.index(cue)]
                guess = np.asarray(estimate[cue], dtype=np.float64)
                ok = np.isfinite(guess) & np.isfinite(truth)
                r = E.pearson_r(truth, guess)
                mae = float(np.abs(truth[ok] - guess[ok]).mean()) if ok.any() else float("nan")
                self.clips[f"motion/{cue}_r"].append(r)
                self.clips[f"motion/{cue}_mae"].append(mae)
                self.pooled[cue][0].append(truth)
                self.pooled[cue][1].append(guess)
                rs.append(r)
                maes.append(mae)
            self.clips["motion/r_mean"].append(_nanmean(rs))
            self.clips["motion/mae_mean"].append(_nanmean(maes))
            self.clips["motion/face_rate"].append(float(face.mean()) if len(face) else float("nan"))

    def compute(self) -> dict[str, float]:
        out = {}
        for cue in self.cues:
            out[f"motion/{cue}_r"] = _nanmean(self.clips[f"motion/{cue}_r"])
            out[f"motion/{cue}_mae"] = _nanmean(self.clips[f"motion/{cue}_mae"])
            truths, guesses = self.pooled[cue]
            if truths:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    out[f"motion/{cue}_r_pooled"] = E.pearson_r(
                        np.concatenate(truths), np.concatenate(guesses)
                    )
            else:
                out[f"motion/{cue}_r_pooled"] = float("nan")
        for key in ("motion/r_mean", "motion/mae_mean", "motion/face_rate"):
            out[key] = _nanmean(self.clips[key])
        return out

    def per_clip(self) -> dict[str, list[float]]:
        return {key: list(values) for key, values in self.clips.items()}
