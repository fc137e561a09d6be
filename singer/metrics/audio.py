"""Audio statistics of the evaluated clips (the singing-vs-talking descriptors).

``audio_stats`` applies the tool of :mod:`singer.data.audio_stats` to the driving audio of every
clip (``EvalBatch.audio``, ``B×S`` mono at ``sample_rate``). It describes the *input* of the
evaluation, not the generated video: it shows how singing-like the evaluated audio is next to the
video metrics (the band ablation leaves it out: ``reads_video = False``). Keys (``audio/…``):

- ``median_pitch_hz``, ``vibrato_energy``, ``loudness_range_db``, ``spectral_centroid_hz``,
  ``voiced_fraction``: the tool's per-clip statistics (definitions in its module docstring);
- ``f0_range_st``: pitch range, p95 − p5 of the voiced f0 in semitones (same f0 tracker);
- ``rms_db``: overall level, 20·log10 of the clip's RMS (dB re full scale; −120 for silence).

``compute()`` averages each statistic over the clips where it is defined (a clip that is too
short or has no voiced frames gives NaN pitch statistics); ``per_clip()`` has one value per
clip. The tracker needs ≥ 0.1 s of audio; the f0 range needs ≥ 2 voiced 10 ms frames.
"""

from __future__ import annotations

import numpy as np

from singer.data import audio_stats as A
from singer.metrics.base import EvalBatch, Metric, nanmean
from singer.registry import METRICS

EXTRA_STATS = ("f0_range_st", "rms_db")
ALL_STATS = (*A.STATS, "voiced_fraction", *EXTRA_STATS)


def extra_audio_stats(wave: np.ndarray, sr: int) -> dict[str, float]:
    """``f0_range_st`` and ``rms_db`` of one mono waveform (see the module docstring)."""
    wave = np.asarray(wave, dtype=np.float64).reshape(-1)
    rms = float(np.sqrt(np.mean(wave**2))) if wave.size else 0.0
    out = {"f0_range_st": float("nan"), "rms_db": 20.0 * np.log10(rms) if rms > 1e-6 else -120.0}
    if len(wave) >= int(0.1 * sr) and np.any(wave):
        track = A.track_pitch(wave, sr)
        f0 = track["f0"][track["voiced"]]
        if f0.size >= 2:
            lo, hi = np.percentile(f0, [5, 95])
            out["f0_range_st"] = float(12.0 * np.log2(hi / lo))
    return {k: float(v) for k, v in out.items()}


@METRICS.register("audio_stats")
class AudioStats(Metric):
    """Singing-vs-talking audio statistics of the driving audio (pitch, vibrato, loudness), per clip."""

    name = "audio_stats"
    reads_video = False

    def __init__(self, stats: list[str] | None = None):
        self.stats = tuple(stats) if stats is not None else ALL_STATS
        unknown = [s for s in self.stats if s not in ALL_STATS]
        if unknown:
            raise ValueError(f"audio_stats: unknown statistics {unknown}; choose from {ALL_STATS}")
        self.reset()

    def reset(self) -> None:
        self.values: dict[str, list[float]] = {f"audio/{s}": [] for s in self.stats}

    def update(self, batch: EvalBatch) -> None:
        audio = batch.audio.detach().double().cpu().numpy()
        audio = audio.reshape(audio.shape[0], -1)  # B×S (a B×1×S channel axis is folded in)
        want_extra = any(s in EXTRA_STATS for s in self.stats)
        for wave in audio:
            row = A.clip_audio_stats(wave, int(batch.sample_rate))
            if want_extra:
                row.update(extra_audio_stats(wave, int(batch.sample_rate)))
            for stat in self.stats:
                self.values[f"audio/{stat}"].append(float(row[stat]))

    def compute(self) -> dict[str, float]:
        return {key: nanmean(values) for key, values in self.values.items()}

    def per_clip(self) -> dict[str, list[float]]:
        return {key: list(values) for key, values in self.values.items()}
