"""Singing vs talking audio statistics: the f0 tracker, the per-clip statistics and the report."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from singer.data import audio_stats as A
from singer.data import synth as S

SR = 16000


def _tone(f0: np.ndarray, sr: int = SR) -> np.ndarray:
    """A bright harmonic tone following the per-sample pitch ``f0``."""
    phase = 2 * np.pi * np.cumsum(f0) / sr
    return sum(np.cos(k * phase) / k for k in range(1, 8)) * 0.2


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("stats") / "synth"
    S.generate_dataset(out, clips=8, seed=21, size=32, seconds=3.0, progress=False)
    return out


def test_pitch_tracker_on_known_tones():
    t = np.arange(SR) / SR
    for f0 in (95.0, 220.0, 550.0):
        track = A.track_pitch(_tone(np.full(SR, f0)), SR)
        assert track["voiced"].mean() > 0.9
        assert abs(np.median(track["f0"][track["voiced"]]) / f0 - 1) < 0.01
    silence = A.track_pitch(np.zeros(SR), SR)
    assert not silence["voiced"].any()
    # Vibrato at 6 Hz, ±50 cents, puts the contour's modulation into the 4–8 Hz band;
    # the same notes held steady, with a step between them, do not.
    vibrato = 220.0 * 2 ** (50 * np.sin(2 * np.pi * 6 * t) / 1200)
    steps = np.where(t < 0.5, 220.0, 262.0)
    with_vibrato = A.clip_audio_stats(_tone(vibrato), SR)
    plain = A.clip_audio_stats(
        _tone(steps) + 1e-3 * np.random.default_rng(0).standard_normal(SR), SR
    )
    assert with_vibrato["vibrato_energy"] > 0.8
    assert plain["vibrato_energy"] < with_vibrato["vibrato_energy"] - 0.4


def test_loudness_range_and_centroid_on_known_signals():
    t = np.arange(2 * SR) / SR
    envelope_db = np.where(t < 1.0, 0.0, -20.0)  # two halves, 20 dB apart
    wave = _tone(np.full(len(t), 200.0)) * 10 ** (envelope_db / 20)
    stats = A.clip_audio_stats(wave, SR)
    assert 18 < stats["loudness_range_db"] < 22
    sine = 0.3 * np.sin(2 * np.pi * 1000 * t)
    assert abs(A.clip_audio_stats(sine, SR)["spectral_centroid_hz"] - 1000) < 60
    empty = A.clip_audio_stats(np.zeros(SR), SR)
    assert np.isnan(empty["median_pitch_hz"]) and empty["voiced_fraction"] == 0.0


def test_tracker_follows_synth_truth(synth_dir):
    records = [json.loads(line) for line in (synth_dir / "meta.jsonl").read_text().splitlines()]
    for record in records[:2]:
        wave = A.read_audio(
            synth_dir / record["file"], seconds=record["num_frames"] / record["fps"]
        )
        assert len(wave) == record["num_samples"]
        track = A.track_pitch(wave, SR)
        # Truth is per video frame (40 ms); the tracker hops 10 ms: compare at frame centres.
        centres = ((np.arange(record["num_frames"]) + 0.5) / record["fps"] / A.HOP_S).astype(int)
        centres = np.minimum(centres, len(track["f0"]) - 1)
        voiced = track["voiced"][centres] & (np.asarray(record["truth"]["held"]) > 0.05)
        ratio = track["f0"][centres][voiced] / np.asarray(record["truth"]["pitch"])[voiced]
        assert voiced.sum() > 20 and np.median(np.abs(ratio - 1)) < 0.03


def test_singing_and_talking_separate(synth_dir, tmp_path):
    out = tmp_path / "report"
    A.main(["--data", str(synth_dir), "--out", str(out)])
    df = pd.read_csv(out / "audio_stats.csv")
    assert len(df) == 8 and sorted(df["label"].unique()) == ["singing", "talking"]
    assert set(A.STATS) <= set(df.columns)
    medians = df.groupby("label")[list(A.STATS)].median()
    assert medians.loc["singing", "vibrato_energy"] > medians.loc["talking", "vibrato_energy"] + 0.2
    assert medians.loc["singing", "loudness_range_db"] > medians.loc["talking", "loudness_range_db"]
    assert (
        medians.loc["singing", "median_pitch_hz"] > 1.5 * medians.loc["talking", "median_pitch_hz"]
    )
    summary = (out / "audio_stats_summary.md").read_text()
    assert "| singing | 4 |" in summary and "| talking | 4 |" in summary
    png = (out / "audio_stats.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_plain_media_folders_are_labelled_by_name_or_label(synth_dir, tmp_path):
    songs = tmp_path / "songs"
    songs.mkdir()
    for name in ("clip00000.mp4", "clip00002.mp4"):
        shutil.copy(synth_dir / "clips" / name, songs / name)
    items = A.dataset_items(songs)
    assert [(p.name, label, seconds) for p, label, seconds in items] == [
        ("clip00000.mp4", "songs", None),
        ("clip00002.mp4", "songs", None),
    ]
    df = A.run([songs, synth_dir], tmp_path / "out", labels=["mine"], progress=False)
    assert (df["label"] == "mine").sum() == 2
    assert set(df["label"]) == {"mine", "singing", "talking"}
    # Without a known length the audio is trimmed to the video's length.
    assert len(A.read_audio(songs / "clip00000.mp4")) == 3 * SR
    with pytest.raises(FileNotFoundError):
        A.dataset_items(tmp_path / "nowhere")
