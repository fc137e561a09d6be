"""SynthSing with accompaniment: a music bed under the voice, the clean voice kept as truth."""

import hashlib
import json
import math

import numpy as np
import pytest
import torch
from scipy.io import wavfile

from singer.data import synth as S
from singer.data.media import read_audio
from singer.metrics.separation import si_sdr

CLIPS, SECONDS, SIZE, SEED = 2, 1.5, 32, 11


def _hashes(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _generate(out, **extra):
    return S.generate_dataset(
        out, clips=CLIPS, seed=SEED, size=SIZE, seconds=SECONDS, progress=False, **extra
    )


@pytest.fixture(scope="module")
def with_music(tmp_path_factory):
    out = tmp_path_factory.mktemp("music") / "a"
    return out, _generate(out, accompaniment=True, vmr_db=6.0, music_style="mixed")


def test_same_seed_gives_identical_bytes(with_music, tmp_path):
    out, _ = with_music
    again = tmp_path / "b"
    _generate(again, accompaniment=True, vmr_db=6.0, music_style="mixed")
    first = _hashes(out)
    assert first == _hashes(again)
    assert {f"vocals/clip{i:05d}.wav" for i in range(CLIPS)} <= set(first)
    other = tmp_path / "c"
    _generate(other, accompaniment=True, vmr_db=0.0, music_style="mixed")
    assert _hashes(other)["clips/clip00000.mp4"] != first["clips/clip00000.mp4"]


def test_voice_face_and_truth_are_those_of_plain_synthsing(with_music, tmp_path):
    """The music draws from its own stream: every record field of plain SynthSing is unchanged,
    the plain output has no accompaniment traces, and the kept voice is the plain voice."""
    _, records = with_music
    plain_dir = tmp_path / "plain"
    plain = _generate(plain_dir)
    assert not (plain_dir / "vocals").exists()
    summary = json.loads((plain_dir / "synth.json").read_text())
    assert "accompaniment" not in summary
    for rec, ref in zip(records, plain, strict=True):
        assert {k: v for k, v in rec.items() if k not in ("accompaniment", "vocals")} == ref
        assert "accompaniment" not in ref and "vocals" not in ref
    # The plain voice (decoded from the plain mp4) and the kept voice differ only by a gain
    # and the AAC coding.
    _, vocal = wavfile.read(with_music[0] / records[0]["vocals"])
    plain_audio = read_audio(
        plain_dir / plain[0]["file"], 16000, num_samples=plain[0]["num_samples"]
    )
    score = si_sdr(torch.from_numpy(plain_audio).double(), torch.from_numpy(vocal).double())
    assert float(score) > 20.0


def test_records_and_mixture_level(with_music):
    out, records = with_music
    summary = json.loads((out / "synth.json").read_text())
    assert summary["accompaniment"] is True and summary["vmr_db"] == 6.0
    for record in records:
        info = record["accompaniment"]
        assert info["style"] in S.MUSIC_STYLES and info["vmr_db"] == 6.0
        assert (
            S.STYLES[info["style"]].tempo[0]
            <= info["tempo_bpm"]
            <= S.STYLES[info["style"]].tempo[1]
        )
        rate, vocal = wavfile.read(out / record["vocals"])
        assert rate == 16000 and vocal.dtype == np.float32 and len(vocal) == record["num_samples"]
        mixture = read_audio(out / record["file"], 16000, num_samples=record["num_samples"])
        # What the harness hears (decoded AAC) scores about the voice-to-music ratio.
        score = float(si_sdr(torch.from_numpy(mixture).double(), torch.from_numpy(vocal).double()))
        assert abs(score - 6.0) < 1.5, score
        assert np.abs(mixture).max() < 0.6  # -6 dBFS peak, plus the AAC coder's overshoot


def test_mix_sets_the_voice_to_music_ratio():
    rng = np.random.default_rng(0)
    vocal = rng.standard_normal(16000) * 0.1
    music = rng.standard_normal(16000)
    for vmr in (-6.0, 0.0, 9.0):
        mixture, part, gain = S.mix_accompaniment(vocal, music, vmr)
        np.testing.assert_allclose(mixture, part + gain * music, atol=1e-6)
        ratio = 10 * np.log10(np.mean(part.astype(np.float64) ** 2) / np.mean((gain * music) ** 2))
        assert ratio == pytest.approx(vmr, abs=1e-3)
        assert np.abs(mixture).max() == pytest.approx(0.5, rel=1e-6)


@pytest.mark.parametrize("style", S.MUSIC_STYLES)
def test_each_style_plays_chords_bass_and_drums(style):
    sr = 16000
    music, info = S.synth_music(
        np.random.default_rng(1), num_samples=4 * sr, sample_rate=sr, style=style, root_hz=220.0
    )
    assert music.shape == (4 * sr,) and np.isfinite(music).all()
    assert np.sqrt(np.mean(music**2)) == pytest.approx(1.0, rel=1e-6)
    assert info["style"] == style
    spectrum = np.abs(np.fft.rfft(music)) ** 2
    freqs = np.fft.rfftfreq(len(music), 1 / sr)

    def band(lo, hi):
        return spectrum[(freqs >= lo) & (freqs < hi)].sum() / spectrum.sum()

    assert band(40, 120) > 0.02  # bass (and kick)
    assert band(120, 1000) > 0.05  # chords
    assert band(3000, 8000) > 1e-4  # snare and hi-hats
    with pytest.raises(ValueError, match="music style"):
        S.synth_music(
            np.random.default_rng(1), num_samples=sr, sample_rate=sr, style="jazz", root_hz=220.0
        )


def test_estimate_key_finds_the_tonic_of_a_major_melody():
    tonic = 233.08
    steps = np.array([0, 2, 4, 5, 7, 9, 11, 12, 7, 4, 0, 2])
    pitch = tonic * 2.0 ** (np.repeat(steps, 5) / 12)
    found = S.estimate_key(pitch, np.zeros_like(pitch))
    octaves = math.log2(found / tonic)  # the tonic, in whichever octave
    assert octaves == pytest.approx(round(octaves), abs=1e-9)


def test_cli_with_accompaniment(tmp_path):
    args = f"--out {tmp_path / 'd'} --clips 1 --seed 0 --seconds 1 --size 32 --accompaniment"
    S.main([*args.split(), "--vmr-db", "-3", "--music-style", "ballad"])
    record = json.loads((tmp_path / "d" / "meta.jsonl").read_text().splitlines()[0])
    assert (
        record["accompaniment"]["style"] == "ballad" and record["accompaniment"]["vmr_db"] == -3.0
    )
    assert (tmp_path / "d" / record["vocals"]).is_file()
