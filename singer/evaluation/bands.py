"""The frequency-band ablation: which audio bands drive which facial motion.

For each band of ``EvalProtocol.band_edges`` the audio is **band-stopped** (the band removed,
everything else kept), the clip is regenerated with the *same* seed, batch and therefore the
same initial noise, and the change against the full-band generation is measured:

- ``cue/<name>``: mean over frames of |cue(band-stopped) − cue(full band)|, each cue read back
  from the generated frames by :func:`singer.data.estimator.estimate_face_params` (SynthSing
  units, [0, 1]; sway [-1, 1]); frames where the estimator finds no face are left out;
- ``pixel_l1``: mean |Δ| over pixels, in [0, 1] intensity units (defined for any model/data);
- every protocol metric key ``k``: ``k(band-stopped) − k(full band)`` (per clip where the metric
  reports per-clip values, else per seed). Both generations are scored against the same
  reference clip and the same, full-band audio: the band stop is an intervention on the
  model's input only, so a model that ignores its audio has a zero row for every target.

Per-item values are averaged over seeds, then into their independent unit (the clip's speaker),
and bootstrapped over units (set-level metrics: over seeds). The result is a bands × targets
table with CIs and unit counts, rendered as a heatmap.

Filters are zero-phase so that no band shift in time masquerades as a motion change:

- ``butter`` (default): a Butterworth band-stop (band-pass for the probes) of order
  ``band_filter_order`` in second-order sections, run forwards and backwards
  (``scipy.signal.sosfiltfilt``): twice the attenuation in dB, no phase shift. A band that starts
  at 0 Hz becomes a high-pass (low-pass for band-pass) and one that reaches Nyquist a low-pass.
- ``fft``: a brick-wall mask on the real FFT of the whole clip (exact band edges, but rings in
  time and treats the clip as periodic).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.signal import butter, sosfiltfilt

from singer.data.estimator import estimate_face_params
from singer.bootstrap import bootstrap_ci
from singer.evaluation.units import group_mean

TABLE_COLUMNS = ("band", "lo_hz", "hi_hz", "target", "delta", "ci_lo", "ci_hi", "n")


# -- filters --------------------------------------------------------------------------------
def band_label(lo: float, hi: float) -> str:
    """``"250-500Hz"``, ``"2k-4kHz"``: short, sortable-looking labels for tables and plots."""

    def fmt(f: float) -> str:
        return f"{f / 1000:g}k" if f >= 1000 else f"{f:g}"

    return f"{fmt(lo)}-{fmt(hi)}Hz"


def _butter_sos(lo: float, hi: float, sample_rate: int, order: int, mode: str) -> np.ndarray | None:
    """SOS of the Butterworth that removes (``mode="stop"``) or keeps (``"pass"``) [lo, hi].

    ``None`` means the identity (pass everything) or, signalled by the caller, silence.
    """
    nyquist = sample_rate / 2.0
    low_open, high_open = lo <= 0.0, hi >= nyquist
    if low_open and high_open:
        return None
    if low_open:
        btype = "highpass" if mode == "stop" else "lowpass"
        return butter(order, hi, btype=btype, fs=sample_rate, output="sos")
    if high_open:
        btype = "lowpass" if mode == "stop" else "highpass"
        return butter(order, lo, btype=btype, fs=sample_rate, output="sos")
    btype = "bandstop" if mode == "stop" else "bandpass"
    return butter(order, [lo, hi], btype=btype, fs=sample_rate, output="sos")


def _filter(audio, lo: float, hi: float, sample_rate: int, *, method: str, order: int, mode: str):
    """Shared body of :func:`bandstop` / :func:`bandpass` for numpy arrays and torch tensors."""
    is_tensor = torch.is_tensor(audio)
    data = (
        audio.detach().cpu().double().numpy() if is_tensor else np.asarray(audio, dtype=np.float64)
    )
    nyquist = sample_rate / 2.0
    if hi <= lo:
        raise ValueError(f"a band needs lo < hi, got [{lo}, {hi}] Hz")
    if lo >= nyquist:  # the band lies above what this sample rate can hold
        out = data.copy() if mode == "stop" else np.zeros_like(data)
    elif method == "fft":
        freqs = np.fft.rfftfreq(data.shape[-1], d=1.0 / sample_rate)
        in_band = (freqs >= lo) & (freqs < hi) if hi < nyquist else freqs >= lo
        keep = ~in_band if mode == "stop" else in_band
        spectrum = np.fft.rfft(data, axis=-1) * keep
        out = np.fft.irfft(spectrum, n=data.shape[-1], axis=-1)
    elif method == "butter":
        sos = _butter_sos(lo, min(hi, nyquist), sample_rate, order, mode)
        if sos is None:  # the band is the whole spectrum
            out = np.zeros_like(data) if mode == "stop" else data.copy()
        else:
            out = sosfiltfilt(sos, data, axis=-1)
    else:
        raise ValueError(f"band filter method must be 'butter' or 'fft', got {method!r}")
    if is_tensor:
        return torch.from_numpy(np.ascontiguousarray(out)).to(
            dtype=audio.dtype, device=audio.device
        )
    return out.astype(np.asarray(audio).dtype, copy=False)


def bandstop(
    audio, lo: float, hi: float, sample_rate: int, *, method: str = "butter", order: int = 8
):
    """Remove ``[lo, hi]`` Hz from ``audio`` (``…×S``, numpy or torch; same type back), zero-phase."""
    return _filter(audio, lo, hi, sample_rate, method=method, order=order, mode="stop")


def bandpass(
    audio, lo: float, hi: float, sample_rate: int, *, method: str = "butter", order: int = 8
):
    """Keep only ``[lo, hi]`` Hz of ``audio`` (``…×S``, numpy or torch; same type back), zero-phase."""
    return _filter(audio, lo, hi, sample_rate, method=method, order=order, mode="pass")


# -- cues from frames -----------------------------------------------------------------------
def estimate_cues(video: torch.Tensor, cue_names: Sequence[str]) -> np.ndarray:
    """Cues read from generated frames: video ``B×3×F×H×W`` in [-1, 1] → ``B×F×K`` float64 (NaN: no face)."""
    frames = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    frames = frames.permute(0, 2, 3, 4, 1).cpu().numpy()  # B×F×H×W×3
    out = np.full((frames.shape[0], frames.shape[1], len(cue_names)), np.nan)
    for i, clip in enumerate(frames):
        estimate = estimate_face_params(clip)
        for k, name in enumerate(cue_names):
            if name in estimate:
                out[i, :, k] = estimate[name]
    return out


def _nanmean_rows(values: np.ndarray) -> np.ndarray:
    """Mean over every axis but the first, ignoring NaN (all-NaN rows → NaN, without a warning)."""
    flat = values.reshape(values.shape[0], -1)
    counts = np.isfinite(flat).sum(axis=1)
    sums = np.where(np.isfinite(flat), flat, 0.0).sum(axis=1)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


# -- the sensitivity accumulator --------------------------------------------------------------
MetricFactory = Callable[[], dict]  # → {metric name: fresh Metric}
EvalBatchFactory = Callable[
    [dict, torch.Tensor, torch.Tensor], object
]  # (batch, video, audio) → EvalBatch


@dataclass
class _SeedState:
    """Per-seed accumulators: one fresh metric set per band plus the full band."""

    metrics: dict[int, dict]  # band index (-1 = full band) → {name: Metric}
    per_clip: dict[tuple[int, str], list[float]] = field(
        default_factory=dict
    )  # (band, target) → clips


class BandSensitivity:
    """Streams (full-band, band-stopped) generations and builds the sensitivity table.

    Use: ``start_seed()``; per batch ``add_full(batch, video, audio)`` then for each band
    ``add_band(i, batch, video, audio)``; ``end_seed()``; finally ``table()``. Only per-clip
    scalars are kept, so memory does not grow with resolution.
    """

    def __init__(
        self,
        bands: Sequence[tuple[float, float]],
        cue_names: Sequence[str],
        metric_factory: MetricFactory,
        eval_batch: EvalBatchFactory,
    ):
        self.bands = [(float(lo), float(hi)) for lo, hi in bands]
        self.cue_names = tuple(cue_names)
        self.metric_factory = metric_factory
        self.eval_batch = eval_batch
        self._seed: _SeedState | None = None
        self._full_video: torch.Tensor | None = None
        self._full_cues: np.ndarray | None = None
        # (band, target) → per seed, per clip values; (band, key) → per seed set-level deltas
        self.clip_deltas: dict[tuple[int, str], list[list[float]]] = {}
        self.set_deltas: dict[tuple[int, str], list[float]] = {}

    def start_seed(self) -> None:
        self._seed = _SeedState(
            metrics={i: self.metric_factory() for i in range(-1, len(self.bands))}
        )

    def _push(self, band: int, target: str, values: np.ndarray) -> None:
        self._seed.per_clip.setdefault((band, target), []).extend(float(v) for v in values)

    def add_full(self, batch: dict, video: torch.Tensor, audio: torch.Tensor) -> None:
        """The full-band generation of one batch (video ``B×3×F×H×W``, audio ``B×S``)."""
        self._full_video = video.detach().float().cpu()
        self._full_cues = estimate_cues(video, self.cue_names)
        eval_batch = self.eval_batch(batch, video, audio)
        for metric in self._seed.metrics[-1].values():
            metric.update(eval_batch)

    def add_band(self, band: int, batch: dict, video: torch.Tensor, audio: torch.Tensor) -> None:
        """The generation of the same batch with band ``band`` stopped (same seed and noise).

        ``audio`` is what the metrics see; the evaluator passes the clip's original audio.
        """
        video_cpu = video.detach().float().cpu()
        self._push(
            band, "pixel_l1", _nanmean_rows((video_cpu - self._full_video).abs().numpy() / 2.0)
        )
        cues = estimate_cues(video, self.cue_names)
        for k, name in enumerate(self.cue_names):
            self._push(
                band, f"cue/{name}", _nanmean_rows(np.abs(cues[..., k] - self._full_cues[..., k]))
            )
        eval_batch = self.eval_batch(batch, video, audio)
        for metric in self._seed.metrics[band].values():
            metric.update(eval_batch)

    def end_seed(self) -> None:
        seed = self._seed
        full = {k: v for m in seed.metrics[-1].values() for k, v in m.compute().items()}
        full_clips = {k: v for m in seed.metrics[-1].values() for k, v in m.per_clip().items()}
        for band in range(len(self.bands)):
            metrics = seed.metrics[band]
            values = {k: v for m in metrics.values() for k, v in m.compute().items()}
            clips = {k: v for m in metrics.values() for k, v in m.per_clip().items()}
            for key, value in values.items():
                if key in clips and key in full_clips:
                    delta = np.asarray(clips[key], dtype=np.float64) - np.asarray(
                        full_clips[key], dtype=np.float64
                    )
                    seed.per_clip[(band, key)] = list(delta)
                else:
                    self.set_deltas.setdefault((band, key), []).append(
                        float(value) - float(full.get(key, np.nan))
                    )
        for key, values in seed.per_clip.items():
            self.clip_deltas.setdefault(key, []).append(values)
        self._seed = None

    def targets(self) -> list[str]:
        """Column order: pixel change, the cues, then metric keys (sorted)."""
        found = {t for _, t in self.clip_deltas} | {t for _, t in self.set_deltas}
        fixed = ["pixel_l1"] + [f"cue/{c}" for c in self.cue_names]
        return [t for t in fixed if t in found] + sorted(found - set(fixed))

    def table(
        self,
        *,
        n_boot: int = 1000,
        alpha: float = 0.05,
        seed: int = 0,
        units: Sequence[str] | None = None,
    ) -> list[dict]:
        """Rows ``{band, lo_hz, hi_hz, target, delta, ci_lo, ci_hi, n}`` (bands × targets).

        ``units`` names the independent unit (speaker) of every item, in the order the items
        were added: item deltas are averaged over seeds, then into their unit, and the interval
        resamples units (``n`` of them). Without ``units`` every item counts as one.
        """
        rows = []
        for band, (lo, hi) in enumerate(self.bands):
            for target in self.targets():
                if (band, target) in self.clip_deltas:
                    per_seed = np.asarray(
                        self.clip_deltas[(band, target)], dtype=np.float64
                    )  # seeds × clips
                    with np.errstate(invalid="ignore"):
                        items = _nanmean_rows(per_seed.T)  # an item's delta, averaged over seeds
                    if units is not None and len(units) == len(items):
                        values = np.asarray(list(group_mean(list(items), list(units)).values()))
                    else:
                        values = items
                else:
                    values = np.asarray(self.set_deltas.get((band, target), []), dtype=np.float64)
                estimate, lo_ci, hi_ci = bootstrap_ci(values, n=n_boot, alpha=alpha, seed=seed)
                rows.append(
                    {
                        "band": band_label(lo, hi),
                        "lo_hz": lo,
                        "hi_hz": hi,
                        "target": target,
                        "delta": estimate,
                        "ci_lo": lo_ci,
                        "ci_hi": hi_ci,
                        "n": int(np.isfinite(values).sum()),
                    }
                )
        return rows


# -- plot -----------------------------------------------------------------------------------
def is_motion_target(target: str) -> bool:
    """``pixel_l1`` and the ``cue/<name>`` columns (the rest are metric keys)."""
    return target == "pixel_l1" or target.startswith("cue/")


def plot_heatmap(
    rows: list[dict],
    path: str | Path,
    *,
    value: str = "delta",
    index: str = "band",
    columns: str = "target",
    title: str = "",
    scale_by: str = "columns",
    note_missing: str = "no value",
) -> Path:
    """A seaborn heatmap of a long table (one row per cell) → PNG at ``path``.

    Colours are normalised per target (``scale_by="columns"``: per column, ``"index"``: per
    row), since targets have different units, or not at all (``"none"``: the raw values on
    [-1, 1], clipped; for R²); the cells are annotated with the raw values.
    Missing cells (NaN) stay blank, and a footnote says so with ``note_missing`` as the reason.
    """
    # lazy: start-up: matplotlib, pandas and seaborn take seconds, and the evaluation package
    # imports this module whether or not anything is plotted
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # lazy: start-up: after the backend is chosen
    import pandas as pd
    import seaborn as sns

    if scale_by not in ("columns", "index", "none"):
        raise ValueError(f"scale_by must be 'columns', 'index' or 'none', got {scale_by!r}")
    frame = pd.DataFrame(rows)
    frame[value] = pd.to_numeric(frame[value], errors="coerce")
    order = list(dict.fromkeys(frame[index]))
    col_order = list(dict.fromkeys(frame[columns]))
    grid = frame.pivot_table(
        index=index, columns=columns, values=value, aggfunc="first", dropna=False
    )
    grid = grid.reindex(index=order, columns=col_order)
    if scale_by == "none":
        shown, bar = grid.clip(-1.0, 1.0), f"{value} (clipped to [-1, 1])"
    else:
        axis = 0 if scale_by == "columns" else 1
        scale = grid.abs().max(axis=axis).replace(0.0, 1.0).fillna(1.0)
        shown = grid.div(scale, axis=1 if scale_by == "columns" else 0)
        bar = f"{value} / max |{value}| of the {'column' if axis == 0 else 'row'}"
    label_width = max((len(str(x)) for x in order), default=4)
    fig_w = 1.6 + 0.075 * label_width + 0.8 * len(col_order)
    fig, ax = plt.subplots(figsize=(max(4.5, fig_w), 1.3 + 0.4 * len(order)))
    sns.heatmap(
        shown,
        annot=grid,
        fmt=".3g",
        cmap="vlag",
        center=0.0,
        vmin=-1,
        vmax=1,
        ax=ax,
        cbar_kws={"label": bar},
        annot_kws={"size": 7},
    )
    missing = bool(grid.isna().to_numpy().any())
    ax.set_title(title + (f"\n(blank cell: {note_missing})" if missing else ""), fontsize=10)
    ax.set_xlabel("")
    ax.set_ylabel("")
    ax.tick_params(axis="x", rotation=90)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_sensitivity(rows: list[dict], out_dir: str | Path, *, title: str = "") -> dict[str, Path]:
    """The band-sensitivity table as up to two heatmaps in ``out_dir``:

    - ``band_sensitivity.png``: bands × (``pixel_l1`` and every cue), the motion matrix;
    - ``band_sensitivity_metrics.png``: metric keys × bands (targets as rows: there are many),
      leaving out keys that are undefined in every band.

    Returns ``{file name: path}``.
    """
    out_dir = Path(out_dir)
    motion = [r for r in rows if is_motion_target(r["target"])]
    metrics = [r for r in rows if not is_motion_target(r["target"])]
    defined = {r["target"] for r in metrics if r["delta"] is not None and np.isfinite(r["delta"])}
    metrics = [r for r in metrics if r["target"] in defined]
    files = {}
    if motion:
        files["band_sensitivity.png"] = plot_heatmap(
            motion,
            out_dir / "band_sensitivity.png",
            title=f"{title}: change when a band is removed".lstrip(": "),
            note_missing="the estimator found no face in the generated frames",
        )
    if metrics:
        files["band_sensitivity_metrics.png"] = plot_heatmap(
            metrics,
            out_dir / "band_sensitivity_metrics.png",
            index="target",
            columns="band",
            scale_by="index",
            title=f"{title}: metric change (band stopped − full band)".lstrip(": "),
        )
    return files
