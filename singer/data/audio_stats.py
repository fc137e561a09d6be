"""Singing vs talking: per-clip audio statistics in frequency and amplitude.

The SINGER paper's starting observation is that singing differs from talking in its pitch, its
pitch modulation (vibrato) and its loudness dynamics. This tool measures that on any clips:

    python -m singer.data.audio_stats --data SYNTH_DIR --out OUT
    python -m singer.data.audio_stats --data my_songs --label singing --data my_talks --label talking --out OUT

A ``--data`` folder with a SynthSing ``meta.jsonl`` takes each clip's label from its ``kind``;
any other folder is scanned for media files, labelled with the ``--label`` given at the same
position or else the folder's name. Writes ``OUT/audio_stats.csv`` (one row per clip),
``OUT/audio_stats_summary.md`` (median and IQR per group) and ``OUT/audio_stats.png``.

Per-clip statistics (all from a YIN-style f0 tracker, 10 ms hop):

- ``median_pitch_hz``: median f0 over voiced frames.
- ``vibrato_energy``: fraction of the f0 contour's modulation power that lies in 4–8 Hz. The
  contour is in cents; its modulation is what is left around a 250 ms running median (the
  melody), over voiced stretches of at least 0.4 s with short unvoiced gaps bridged.
- ``loudness_range_db``: p95 − p5 of frame RMS level (dB) over voiced frames.
- ``spectral_centroid_hz``: mean spectral centroid over non-silent frames.
- ``voiced_fraction``: share of frames found voiced.
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from collections.abc import Iterable
from pathlib import Path

import decord
import numpy as np
from scipy.ndimage import median_filter
from tqdm.auto import tqdm

from singer.cli import entry_point
from singer.data import media

STATS = ("median_pitch_hz", "vibrato_energy", "loudness_range_db", "spectral_centroid_hz")
STAT_LABELS = {
    "median_pitch_hz": "median pitch (Hz)",
    "vibrato_energy": "vibrato-band energy (4–8 Hz share)",
    "loudness_range_db": "loudness range (dB, p95−p5)",
    "spectral_centroid_hz": "spectral centroid (Hz)",
}
MEDIA_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4a", ".wav", ".flac", ".mp3", ".ogg")

HOP_S = 0.01  # analysis hop: the f0 contour is sampled at 100 Hz
WINDOW_S = 0.025  # YIN integration window
F0_RANGE = (60.0, 1000.0)
YIN_THRESHOLD = 0.15
SILENCE_BELOW_DB = 35.0  # frames this far under the clip's loudest frame count as silent
SILENCE_FLOOR_DB = -80.0  # and so does anything under this level (dB re full scale)
VIBRATO_BAND = (4.0, 8.0)
MIN_STRETCH_S = 0.4  # shortest voiced stretch whose contour enters the modulation spectrum
BRIDGE_GAP_S = 0.1  # unvoiced gaps up to this long are bridged in the contour
# Running-median window that follows the melody (note to note) but not a vibrato: longer than
# the slowest vibrato period (4 Hz → 250 ms).
MELODY_WINDOW_S = 0.25


# =============================================================================================
# Analysis
# =============================================================================================


def _frames(wave: np.ndarray, length: int, hop: int) -> np.ndarray:
    """Overlapping frames ``T×length`` starting every ``hop`` samples (zero-padded at the end)."""
    count = max(1, int(math.ceil(len(wave) / hop)))
    padded = np.zeros((count - 1) * hop + length, dtype=np.float64)
    padded[: len(wave)] = wave
    index = np.arange(count)[:, None] * hop + np.arange(length)[None, :]
    return padded[index]


def track_pitch(wave: np.ndarray, sr: int) -> dict[str, np.ndarray]:
    """YIN-style f0 tracking, vectorised over frames.

    Returns ``{"f0": T Hz (NaN when unvoiced), "voiced": T bool, "level_db": T frame RMS dB,
    "aperiodicity": T}`` with one frame every ``HOP_S`` seconds.
    """
    wave = np.asarray(wave, dtype=np.float64).reshape(-1)
    hop, window = int(round(HOP_S * sr)), int(round(WINDOW_S * sr))
    tau_min, tau_max = int(sr / F0_RANGE[1]), int(math.ceil(sr / F0_RANGE[0]))
    x = _frames(wave, window + tau_max + 1, hop)

    # Difference function d(τ) = Σ_j (x_j − x_{j+τ})² over the window, via one FFT correlation.
    n_fft = 1 << int(math.ceil(math.log2(x.shape[1] + window)))
    head = np.fft.rfft(x[:, :window], n_fft)
    full = np.fft.rfft(x, n_fft)
    corr = np.fft.irfft(np.conj(head) * full, n_fft)[:, : tau_max + 1]
    energy = np.concatenate([np.zeros((len(x), 1)), np.cumsum(x * x, axis=1)], axis=1)
    taus = np.arange(tau_max + 1)
    shifted = energy[:, taus + window] - energy[:, taus]
    diff = np.maximum(energy[:, [window]] + shifted - 2.0 * corr, 0.0)

    # Cumulative-mean-normalised difference; the first dip under the threshold is the period.
    running = np.cumsum(diff[:, 1:], axis=1) / np.arange(1, tau_max + 1)
    cmnd = np.ones_like(diff)
    cmnd[:, 1:] = diff[:, 1:] / np.maximum(running, 1e-12)
    search = cmnd[:, tau_min:]
    below = search < YIN_THRESHOLD
    tau = np.where(below.any(axis=1), below.argmax(axis=1), search.argmin(axis=1)) + tau_min
    rows = np.arange(len(x))
    for _ in range(tau_max):  # walk down to the bottom of the dip
        step = (tau + 1 <= tau_max) & (cmnd[rows, np.minimum(tau + 1, tau_max)] < cmnd[rows, tau])
        if not step.any():
            break
        tau = tau + step
    # Parabolic refinement around the chosen lag.
    left = cmnd[rows, np.clip(tau - 1, 0, tau_max)]
    mid = cmnd[rows, tau]
    right = cmnd[rows, np.clip(tau + 1, 0, tau_max)]
    curvature = left - 2.0 * mid + right
    shift = np.where(
        np.abs(curvature) > 1e-12,
        0.5 * (left - right) / np.where(curvature == 0, 1, curvature),
        0.0,
    )
    refined = tau + np.clip(shift, -0.5, 0.5)

    level_db = 10.0 * np.log10(np.mean(x[:, :window] ** 2, axis=1) + 1e-12)
    loud_enough = (level_db > level_db.max() - SILENCE_BELOW_DB) & (level_db > SILENCE_FLOOR_DB)
    voiced = (mid < YIN_THRESHOLD) & loud_enough
    f0 = np.where(voiced, sr / refined, np.nan)
    return {"f0": f0, "voiced": voiced, "level_db": level_db, "aperiodicity": mid}


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Half-open index ranges of the True runs of ``mask``."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def vibrato_energy(f0: np.ndarray, voiced: np.ndarray, frame_rate: float = 1.0 / HOP_S) -> float:
    """Share of the f0 contour's modulation power (in cents) that lies in the vibrato band.

    Unvoiced gaps up to ``BRIDGE_GAP_S`` are bridged by linear interpolation. In every voiced
    stretch of at least ``MIN_STRETCH_S`` the modulation is the contour minus its running median
    over ``MELODY_WINDOW_S`` (so note changes and phrase-level drift do not count as
    modulation); its Hann-windowed power spectra are summed over stretches, and the share of
    the non-DC power in ``VIBRATO_BAND`` is returned. NaN when the clip has no such stretch.
    """
    if voiced.sum() < 2:
        return float("nan")
    cents = np.full(len(f0), np.nan)
    cents[voiced] = 1200.0 * np.log2(f0[voiced] / np.median(f0[voiced]))
    # A 3-point median removes isolated octave jumps of the tracker.
    padded = np.pad(cents, 1, mode="edge")
    with warnings.catch_warnings():  # all-NaN windows (unvoiced) stay NaN, quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        cents = np.nanmedian(np.stack([padded[:-2], padded[1:-1], padded[2:]]), axis=0)
    cents[~voiced] = np.nan
    filled = voiced.copy()
    index = np.arange(len(cents))
    for start, stop in _runs(~voiced):
        if 0 < start and stop < len(voiced) and (stop - start) / frame_rate <= BRIDGE_GAP_S:
            filled[start:stop] = True
    cents[filled & ~voiced] = np.interp(index[filled & ~voiced], index[voiced], cents[voiced])

    melody_frames = max(3, int(round(MELODY_WINDOW_S * frame_rate)) | 1)
    n_fft = 1 << int(math.ceil(math.log2(max(8 * frame_rate, 8))))
    freqs = np.fft.rfftfreq(n_fft, d=1.0 / frame_rate)
    power = np.zeros(len(freqs))
    for start, stop in _runs(filled):
        if (stop - start) / frame_rate < MIN_STRETCH_S:
            continue
        # What is left around the running median (the note-level melody) is the modulation.
        segment = cents[start:stop]
        segment = segment - median_filter(segment, size=melody_frames, mode="nearest")
        while len(segment) > n_fft:  # very long stretches: analyse in n_fft pieces
            power += np.abs(np.fft.rfft(segment[:n_fft] * np.hanning(n_fft), n_fft)) ** 2
            segment = segment[n_fft:]
        if len(segment) >= MIN_STRETCH_S * frame_rate:
            power += np.abs(np.fft.rfft(segment * np.hanning(len(segment)), n_fft)) ** 2
    total = power[1:].sum()
    if total <= 0:
        return float("nan")
    band = (freqs >= VIBRATO_BAND[0]) & (freqs <= VIBRATO_BAND[1])
    return float(power[band].sum() / total)


def spectral_centroid(wave: np.ndarray, sr: int, level_db: np.ndarray) -> float:
    """Mean spectral centroid (Hz) over frames within ``SILENCE_BELOW_DB`` of the loudest."""
    hop, window = int(round(HOP_S * sr)), int(round(WINDOW_S * sr))
    x = _frames(np.asarray(wave, dtype=np.float64), window, hop)
    n = min(len(x), len(level_db))
    x, level_db = x[:n], level_db[:n]
    n_fft = 1 << int(math.ceil(math.log2(window)))
    magnitude = np.abs(np.fft.rfft(x * np.hanning(window), n_fft))
    freqs = np.fft.rfftfreq(n_fft, d=1.0 / sr)
    centroid = (magnitude * freqs).sum(axis=1) / np.maximum(magnitude.sum(axis=1), 1e-12)
    loud = (level_db > level_db.max() - SILENCE_BELOW_DB) & (level_db > SILENCE_FLOOR_DB)
    return float(centroid[loud].mean()) if loud.any() else float("nan")


def clip_audio_stats(wave: np.ndarray, sr: int) -> dict[str, float]:
    """Statistics of one mono waveform ``wave`` (S) at ``sr`` Hz (see the module docstring)."""
    wave = np.asarray(wave, dtype=np.float64).reshape(-1)
    nan = {name: float("nan") for name in STATS} | {"voiced_fraction": 0.0}
    if len(wave) < int(0.1 * sr) or not np.any(wave):
        return nan
    track = track_pitch(wave, sr)
    voiced = track["voiced"]
    out = dict(nan)
    out["voiced_fraction"] = float(voiced.mean())
    out["spectral_centroid_hz"] = spectral_centroid(wave, sr, track["level_db"])
    if voiced.sum() >= 2:
        out["median_pitch_hz"] = float(np.median(track["f0"][voiced]))
        levels = track["level_db"][voiced]
        out["loudness_range_db"] = float(np.percentile(levels, 95) - np.percentile(levels, 5))
        out["vibrato_energy"] = vibrato_energy(track["f0"], voiced)
    return out


# =============================================================================================
# Collecting clips
# =============================================================================================


def read_audio(
    path: str | Path, sample_rate: int = 16000, seconds: float | None = None
) -> np.ndarray:
    """Mono waveform (S float32) of a media file, resampled to ``sample_rate``.

    Decoding goes through ``singer.data.media.read_audio`` when the media layer has it (it
    avoids decord's faulty resampling of sources at other rates), else decord's AudioReader.
    AAC padding makes decoded audio slightly longer than its video, so it is trimmed to
    ``seconds`` when given, else to the video's length when the file has a video stream.
    """
    if hasattr(media, "read_audio"):
        wave = np.asarray(
            media.read_audio(path, sample_rate=sample_rate), dtype=np.float32
        ).reshape(-1)
    else:
        reader = decord.AudioReader(str(path), sample_rate=sample_rate, mono=True)
        wave = reader[:].asnumpy().reshape(-1).astype(np.float32)
        del reader
    if seconds is None:
        try:
            video = decord.VideoReader(str(path))
            seconds = len(video) / float(video.get_avg_fps())
            del video
        except Exception:  # an audio-only file: nothing to trim to
            seconds = None
    if seconds is not None:
        wave = wave[: int(round(seconds * sample_rate))]
    return wave


def dataset_items(
    data: str | Path, label: str | None = None
) -> list[tuple[Path, str, float | None]]:
    """``(path, label, seconds)`` for every clip in ``data``.

    A SynthSing folder (with ``meta.jsonl``) gives its clips in order, labelled by ``kind``
    unless ``label`` is given, with their exact length; any other folder gives its media files
    (recursively, sorted), labelled ``label`` or the folder's name.
    """
    data = Path(data)
    if not data.is_dir():
        raise FileNotFoundError(f"no such folder: {data}")
    meta = data / "meta.jsonl"
    if meta.exists():
        items = []
        for line in meta.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                seconds = record["num_frames"] / float(record["fps"])
                items.append((data / record["file"], label or record["kind"], seconds))
        return items
    files = sorted(p for p in data.rglob("*") if p.suffix.lower() in MEDIA_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"no media files ({', '.join(MEDIA_SUFFIXES)}) under {data}")
    return [(path, label or data.resolve().name, None) for path in files]


def collect_stats(
    paths_with_labels: Iterable[tuple], *, sample_rate: int = 16000, progress: bool = True
):
    """One row per clip: ``path, clip, label`` and the statistics. Returns a pandas DataFrame.

    Each item is ``(path, label)`` or ``(path, label, seconds)``; ``seconds`` trims the decoded
    audio to the clip's true length. Files without readable audio are skipped with a warning.
    """
    # lazy: start-up: pandas takes a second, and the metrics package imports this module
    import pandas as pd

    items = list(paths_with_labels)
    rows = []
    for item in tqdm(items, desc="audio stats", unit="clip", disable=not progress):
        path, label = Path(item[0]), str(item[1])
        seconds = item[2] if len(item) > 2 else None
        try:
            wave = read_audio(path, sample_rate=sample_rate, seconds=seconds)
        except Exception as error:  # decord raises its own error types for files without audio
            warnings.warn(f"skipping {path}: no readable audio ({error})", stacklevel=2)
            continue
        rows.append(
            {
                "path": str(path),
                "clip": path.stem,
                "label": label,
                **clip_audio_stats(wave, sample_rate),
            }
        )
    columns = ["path", "clip", "label", *STATS, "voiced_fraction"]
    return pd.DataFrame(rows, columns=columns)


def summarize(df) -> str:
    """Markdown table: per label, the clip count and median [p25, p75] of every statistic."""
    header = "| group | clips | " + " | ".join(STAT_LABELS[name] for name in STATS) + " |"
    lines = [
        "# Singing vs talking: audio statistics",
        "",
        "Median [interquartile range] per group.",
        "",
        header,
        "|" + "---|" * (2 + len(STATS)),
    ]
    for label, group in df.groupby("label", sort=True):
        cells = []
        for name in STATS:
            values = group[name].dropna().to_numpy()
            if len(values) == 0:
                cells.append("n/a")
                continue
            p25, median, p75 = np.percentile(values, [25, 50, 75])
            digits = 3 if name == "vibrato_energy" else 1
            cells.append(f"{median:.{digits}f} [{p25:.{digits}f}, {p75:.{digits}f}]")
        lines.append(f"| {label} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_stats(df, out_png: str | Path) -> Path:
    """Four panels (one per statistic): distribution per label, boxes with the clips on top."""
    # lazy: start-up: matplotlib and seaborn take seconds, and the metrics package imports
    # this module
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: start-up: after the backend is chosen
    import seaborn as sns

    order = sorted(df["label"].unique())
    fig, axes = plt.subplots(2, 2, figsize=(9, 7))
    for ax, name in zip(axes.flat, STATS):
        data = df[["label", name]].dropna()
        if len(data):
            with (
                warnings.catch_warnings()
            ):  # seaborn 0.13 still passes matplotlib's deprecated `vert`
                warnings.simplefilter("ignore", matplotlib.MatplotlibDeprecationWarning)
                sns.boxplot(
                    data=data,
                    x="label",
                    y=name,
                    hue="label",
                    order=order,
                    hue_order=order,
                    ax=ax,
                    fliersize=0,
                    legend=False,
                )
            sns.stripplot(
                data=data, x="label", y=name, order=order, ax=ax, color="black", size=3, alpha=0.6
            )
        ax.set_title(STAT_LABELS[name])
        ax.set_xlabel("")
        ax.set_ylabel("")
    fig.suptitle("Singing vs talking: frequency and amplitude")
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png


def run(
    data: list[str | Path], out: str | Path, labels: list[str] | None = None, progress: bool = True
):
    """Collect every ``data`` folder, then write csv, markdown summary and plot under ``out``."""
    labels = list(labels or [])
    items = []
    for index, folder in enumerate(data):
        items += dataset_items(folder, labels[index] if index < len(labels) else None)
    df = collect_stats(items, progress=progress)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "audio_stats.csv", index=False)
    (out / "audio_stats_summary.md").write_text(summarize(df), encoding="utf-8")
    plot_stats(df, out / "audio_stats.png")
    return df


@entry_point
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Per-clip singing vs talking audio statistics.")
    parser.add_argument(
        "--data",
        action="append",
        required=True,
        help="a SynthSing folder or a folder of media files (repeatable)",
    )
    parser.add_argument(
        "--label",
        action="append",
        default=[],
        help="label for the --data at the same position (repeatable)",
    )
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args(argv)
    df = run(args.data, args.out, labels=args.label)
    print(summarize(df))
    print(f"wrote {Path(args.out) / 'audio_stats.csv'}, audio_stats_summary.md, audio_stats.png")


if __name__ == "__main__":
    raise SystemExit(main())
