"""SynthSing: a synthetic singing/talking benchmark with per-frame ground truth.

Every clip is a real mp4 (H.264 + AAC, 25 fps, 16 kHz mono) of a procedurally drawn face whose
motion follows fixed laws driven by the synthesized voice. The causes (audio) and the effects
(face) are written beside the clips, so a model's output can be scored against known truth.

    python -m singer.data.synth --out DIR --clips 24 --seed 0 --kind mixed

Output::

    DIR/clips/<clip_id>.mp4   one clip per record
    DIR/meta.jsonl            one JSON record per clip, in clip order
    DIR/synth.json            the generation arguments

With ``--accompaniment [--vmr-db 0 --music-style mixed]`` each soundtrack is the voice over a
synthetic music bed (chords, bass and drums, in the singer's key, at a tempo and bar phase of its
own), mixed at the given voice-to-music power ratio, and the clean voice is kept as ground truth::

    DIR/vocals/<clip_id>.wav  the voice alone, float32, scaled as it is in the mixture

The face, the truth and the voice are the same as without accompaniment (the music draws from a
random stream of its own): the face laws follow the voice alone.

Per-frame truth (``record["truth"][name]``, one float per video frame; frame ``k`` is sampled at
its centre time ``(k + 0.5) / fps``):

=================  ===========================================================================
``loudness``       level of the voice-source envelope in dB relative to the clip's loudest
                   frame (0 dB), floored at -60 dB (silence).
``pitch``          f0 of the glottal source in Hz, vibrato included. Defined on every frame: in
                   rests it holds the previous note's pitch (the source is silent there).
``vibrato_phase``  phase of the vibrato oscillator in radians, wrapped to [-pi, pi). Always 0
                   for talking.
``f2``             second formant of the vowel filter in Hz (speaker's formant scale included).
``held``           seconds the current note/syllable has been sustained since its onset;
                   0 in rests.
``onset``          1.0 on the frame in which a note/syllable starts, else 0.0.
``mouth_open``     [0, 1]: level × (0.3 + 0.7 · openness); level maps loudness -40..0 dB to
                   0..1, openness maps F1 (formant scale removed) 250..750 Hz to 0..1.
``mouth_width``    [0, 1]: F2 (formant scale removed) 800..2300 Hz on a log scale (spread /i/
                   → 1, rounded /o/, /u/ → 0).
``brow``           [0, 1]: pitch within the speaker's range for this kind (log scale).
``sway``           [-1, 1]: vibrato gate × sin(vibrato_phase); the gate fades in ~150 ms into
                   a note and out at its end. 0 for talking.
``eye_close``      [0, 1]: (held − 0.5 s) / 0.7 s: eyes close gradually on long notes.
``nod``            [0, 1): 1 − exp(−Σ accent · bump(t − onset)); the bump peaks 70 ms after
                   each note/syllable onset, the accent follows the event's level.
=================  ===========================================================================

Mouth, brow and eye cues are smoothed after their law by a zero-phase Gaussian (σ = 1, 2 and
1.5 frames) so that no cue jumps further between frames than a face could move. The face truth
is exactly what the renderer drew (rounded to 5 decimals before drawing).
The same laws serve both kinds; talking simply has no vibrato and no long notes.
"""

from __future__ import annotations

import argparse
import json
import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from scipy.io import wavfile
from scipy.ndimage import gaussian_filter1d
from scipy.signal import butter, lfilter, sosfilt
from tqdm.auto import tqdm

from singer.cli import UserError, entry_point
from singer.data.media import write_mp4

AUDIO_CAUSES = ("loudness", "pitch", "vibrato_phase", "f2", "held", "onset")
FACE_CUES = ("mouth_open", "mouth_width", "brow", "sway", "eye_close", "nod")
ESTIMATED_CUES = ("mouth_open", "mouth_width", "brow", "sway", "eye_close")
# Order of the per-frame ground truth tensor ``B×F×K`` used across the harness.
CUES = FACE_CUES
KINDS = ("singing", "talking")

SYNTH_VERSION = 2  # 2: clips are cut from a longer performance (LEAD_SECONDS)
# Every clip is cut from a performance that started LEAD_SECONDS (uniform) earlier, so clips
# begin anywhere in a phrase. Had every clip begun with the performance (a rest, then the first
# note), any two unrelated clips would share that rise: mouth opening correlated r ≈ 0.3 between
# clips of different speakers, a motion score earned by the time axis alone.
LEAD_SECONDS = (0.5, 1.5)
TRUTH_DECIMALS = 5

# ---------------------------------------------------------------------------------------------
# Face geometry. All lengths are fractions of the frame size; y grows downwards and is measured
# from the head centre. The facial features sit at the same place for every identity (only the
# outline, hair and colours vary), which lets the estimator read them back without the truth.
# ---------------------------------------------------------------------------------------------
REST_X = 0.5  # head centre at rest
REST_Y = 0.54
SWAY_AMP = 0.03  # horizontal head shift at sway = ±1
NOD_AMP = 0.035  # downward head shift at nod = 1

EYE_X = 0.085  # eye centres at ±EYE_X
EYE_Y = -0.03
EYE_RX = 0.045
EYE_RY = 0.03  # open eye; closing squashes it towards its fixed lower edge

BROW_X = 0.085
BROW_Y = -0.13  # brow centre at brow = 0; it rises by BROW_AMP at brow = 1
BROW_AMP = 0.055
BROW_HALF_LEN = 0.035
BROW_HALF_THICK = 0.012
BROW_ARCH = 0.01  # the brow ends sit this much lower than its middle

MOUTH_Y = 0.15
MOUTH_RX0, MOUTH_RX1 = 0.05, 0.05  # half-width = RX0 + RX1 · mouth_width
MOUTH_RY0, MOUTH_RY1 = 0.015, 0.05  # half-height = RY0 + RY1 · mouth_open

# Feature colours are fixed for every identity and far from every skin tone.
MOUTH_COLOUR = (70, 10, 25)
EYE_COLOUR = (25, 22, 40)
BROW_COLOUR = (55, 35, 28)

SKIN_TONES = np.array(
    [(241, 210, 185), (226, 178, 140), (200, 140, 100), (165, 112, 80), (125, 84, 62)],
    dtype=np.float64,
)
HAIR_TONES = np.array(
    [(28, 24, 24), (70, 45, 30), (120, 80, 45), (150, 68, 38), (212, 178, 112), (172, 170, 168)],
    dtype=np.float64,
)
HAIR_STYLES = ("short", "long", "bun")

# ---------------------------------------------------------------------------------------------
# Voice. Reference formants (adult voice, formant scale 1.0) and consonant noise bands.
# ---------------------------------------------------------------------------------------------
VOWELS = {
    "a": (730.0, 1090.0, 2440.0),
    "e": (530.0, 1840.0, 2480.0),
    "i": (270.0, 2290.0, 3010.0),
    "o": (570.0, 840.0, 2410.0),
    "u": (300.0, 870.0, 2240.0),
}
FORMANT_BANDWIDTHS = (90.0, 110.0, 170.0)
# name: (band low Hz, band high Hz, duration s, silent closure before the burst s)
CONSONANTS = {
    "s": (4000.0, 7500.0, 0.07, 0.0),
    "sh": (1800.0, 4200.0, 0.07, 0.0),
    "f": (1200.0, 7000.0, 0.05, 0.0),
    "t": (2500.0, 6500.0, 0.02, 0.03),
    "k": (1200.0, 3500.0, 0.025, 0.03),
    "p": (300.0, 3000.0, 0.015, 0.03),
}
SILENCE_DB = -60.0

# Face laws (see module docstring).
OPEN_F1 = (250.0, 750.0)  # F1 (at formant scale 1) mapped to vowel openness 0..1
WIDTH_F2 = (800.0, 2300.0)  # F2 (at formant scale 1) mapped to mouth width 0..1, log scale
LEVEL_FLOOR_DB = -40.0  # loudness at which the mouth is closed
EYE_HOLD_START, EYE_HOLD_SPAN = 0.5, 0.7  # seconds held before the eyes start closing / to close
NOD_TAU = 0.07  # seconds from onset to the nod's peak


@dataclass(frozen=True)
class Speaker:
    """One synthetic person: how they look (``identity``) and how they sound (``voice``)."""

    speaker_id: str
    identity: dict = field(default_factory=dict)
    voice: dict = field(default_factory=dict)


# =============================================================================================
# Speakers
# =============================================================================================


def _colour_distance(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))


def sample_speaker(rng: np.random.Generator, speaker_id: str = "spk000") -> Speaker:
    """Draw a speaker: face identity (colours, face shape, hair) and voice (pitch ranges, formants)."""
    skin_pos = rng.uniform(0, len(SKIN_TONES) - 1)
    lo = int(skin_pos)
    hi = min(lo + 1, len(SKIN_TONES) - 1)
    skin = (
        SKIN_TONES[lo] + (skin_pos - lo) * (SKIN_TONES[hi] - SKIN_TONES[lo]) + rng.uniform(-6, 6, 3)
    )
    # Hair must stand apart from the skin so the hairline is visible.
    while True:
        hair = HAIR_TONES[rng.integers(len(HAIR_TONES))] + rng.uniform(-10, 10, 3)
        if _colour_distance(hair, skin) > 60:
            break
    # The background must stand apart from everything drawn on top of it.
    while True:
        background = rng.uniform(20, 235, 3)
        if (
            min(
                _colour_distance(background, c)
                for c in (skin, hair, MOUTH_COLOUR, EYE_COLOUR, BROW_COLOUR)
            )
            > 80
        ):
            break
    identity = {
        "skin": [int(round(float(v))) for v in np.clip(skin, 0, 255)],
        "hair": [int(round(float(v))) for v in np.clip(hair, 0, 255)],
        "background": [int(round(float(v))) for v in background],
        "face_rx": round(float(rng.uniform(0.23, 0.28)), 4),
        "face_ry": round(float(rng.uniform(0.30, 0.34)), 4),
        "hair_style": HAIR_STYLES[int(rng.integers(len(HAIR_STYLES)))],
        "hair_pad_x": round(float(rng.uniform(0.02, 0.05)), 4),
        "hair_pad_y": round(float(rng.uniform(0.02, 0.05)), 4),
        "hairline": round(float(rng.uniform(-0.27, -0.24)), 4),
    }
    # One "voice height" places both the singing and the talking range, so a high talker is
    # also a high singer.
    height = float(rng.uniform(0, 1))
    sing_lo = 180.0 + 120.0 * height
    talk_lo = 90.0 + 40.0 * height
    voice = {
        "singing_range_hz": [
            round(sing_lo, 2),
            round(min(600.0, sing_lo * 2 ** rng.uniform(1.0, 1.3)), 2),
        ],
        "talking_range_hz": [
            round(talk_lo, 2),
            round(min(220.0, talk_lo * rng.uniform(1.55, 1.7)), 2),
        ],
        "formant_scale": round(0.92 + 0.18 * height + float(rng.uniform(-0.03, 0.03)), 4),
        "tilt": round(
            float(rng.uniform(1.1, 1.5)), 4
        ),  # source spectral slope: harmonic k has k^-tilt
        "breath": round(
            float(rng.uniform(0.01, 0.04)), 4
        ),  # aspiration noise relative to the source
    }
    return Speaker(speaker_id=speaker_id, identity=identity, voice=voice)


# =============================================================================================
# Score: notes (singing) or syllables (talking)
# =============================================================================================


@dataclass
class _Event:
    start: float  # onset time, s (consonant starts here; voicing follows it)
    duration: float  # until the next event or rest, s
    pitch: float  # Hz (target at the start of the event)
    pitch_end: float  # Hz (target at the end; glides between the two)
    vowel: str
    level_db: float  # voiced level, dB ≤ 0
    swell_db: float  # crescendo (+) or decrescendo (−) over the event
    consonant: str | None
    vibrato_rate: float = 0.0
    vibrato_depth: float = 0.0  # cents
    vibrato_delay: float = 0.0  # s after onset


def _plan_singing(rng: np.random.Generator, voice: dict, seconds: float) -> list[_Event]:
    lo, hi = voice["singing_range_hz"]
    tonic = lo * 2 ** (rng.integers(0, 5) / 12)
    major = [0, 2, 4, 5, 7, 9, 11]
    scale = [tonic * 2 ** ((12 * octave + s) / 12) for octave in range(3) for s in major]
    scale = [f for f in scale if lo <= f <= hi] or [lo]
    degree = int(rng.integers(len(scale)))
    events, t = [], float(rng.uniform(0.0, 0.25))
    while t < seconds:
        duration = float(rng.uniform(0.3, 1.5))
        degree = int(np.clip(degree + rng.integers(-2, 3), 0, len(scale) - 1))
        events.append(
            _Event(
                start=t,
                duration=duration,
                pitch=scale[degree],
                pitch_end=scale[degree],
                vowel=str(rng.choice(list(VOWELS))),
                level_db=float(rng.uniform(-22.0, 0.0)),
                swell_db=float(rng.uniform(-8.0, 8.0)),
                consonant=str(rng.choice(list(CONSONANTS))) if rng.random() < 0.5 else None,
                vibrato_rate=float(rng.uniform(5.0, 7.0)),
                vibrato_depth=float(rng.uniform(20.0, 80.0)),
                vibrato_delay=float(rng.uniform(0.12, 0.18)),
            )
        )
        t += duration
        if rng.random() < 0.3:  # a breath between notes
            t += float(rng.uniform(0.1, 0.35))
    return events


def _plan_talking(rng: np.random.Generator, voice: dict, seconds: float) -> list[_Event]:
    lo, hi = voice["talking_range_hz"]
    span = math.log2(hi / lo)
    events, t = [], float(rng.uniform(0.0, 0.2))
    while t < seconds:
        phrase_start, phrase_len = t, float(rng.uniform(1.2, 2.5))
        phrase_end = t + phrase_len
        base_db = float(rng.uniform(-3.0, 0.0))
        # Declination: pitch drifts down over the phrase.
        top, bottom = rng.uniform(0.55, 0.8), rng.uniform(0.05, 0.25)

        def declined(
            time: float, top=top, bottom=bottom, start=phrase_start, length=phrase_len
        ) -> float:
            frac = min(max((time - start) / length, 0.0), 1.0)
            return lo * 2 ** (span * (top + (bottom - top) * frac))

        while t < phrase_end and t < seconds:
            duration = float(rng.uniform(0.15, 0.25))
            stressed = rng.random() < 0.35
            accent = (
                float(rng.uniform(1.0, 2.5)) if stressed else float(rng.uniform(-0.5, 0.5))
            )  # semitones
            pitch = min(hi, max(lo, declined(t) * 2 ** (accent / 12)))
            pitch_end = min(hi, max(lo, declined(t + duration) * 2 ** (0.5 * accent / 12)))
            events.append(
                _Event(
                    start=t,
                    duration=duration,
                    pitch=pitch,
                    pitch_end=pitch_end,
                    vowel=str(rng.choice(list(VOWELS))),
                    level_db=base_db
                    + (
                        float(rng.uniform(0.0, 3.0)) if stressed else float(rng.uniform(-7.0, -2.0))
                    ),
                    swell_db=float(rng.uniform(-3.0, 0.0)),
                    consonant=str(rng.choice(list(CONSONANTS))) if rng.random() < 0.8 else None,
                )
            )
            t += duration
        t += float(rng.uniform(0.15, 0.35))  # pause between phrases
    return events


# =============================================================================================
# Audio: control curves and source-filter synthesis
# =============================================================================================


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _controls(
    events: list[_Event], kind: str, voice: dict, num_samples: int, sr: int
) -> dict[str, np.ndarray]:
    """Per-sample control curves (all shape ``S``) for the score ``events``."""
    t = np.arange(num_samples) / sr
    log_pitch = np.full(num_samples, math.log2(events[0].pitch))
    level_db = np.full(num_samples, SILENCE_DB - 20.0)
    formants = np.empty((3, num_samples))
    formants[:] = np.array(VOWELS[events[0].vowel])[:, None]
    vib_rate = np.full(num_samples, events[0].vibrato_rate or 6.0)
    vib_gate = np.zeros(num_samples)
    vib_depth = np.zeros(num_samples)
    held = np.zeros(num_samples)
    attack = 0.06 if kind == "singing" else 0.025
    release = 0.05 if kind == "singing" else 0.03

    for index, ev in enumerate(events):
        s0 = int(round(ev.start * sr))
        if s0 >= num_samples:
            break
        s1 = min(num_samples, int(round((ev.start + ev.duration) * sr)))
        following = events[index + 1] if index + 1 < len(events) else None
        adjacent = following is not None and abs(following.start - (ev.start + ev.duration)) < 1e-9
        legato = adjacent and not following.consonant  # else the voice stops for the consonant
        # Pitch holds from this onset until the next onset (also through a rest).
        hold_end = (
            min(num_samples, int(round(following.start * sr)))
            if following is not None
            else num_samples
        )
        seg = slice(s0, hold_end)
        u = np.clip((t[seg] - ev.start) / ev.duration, 0.0, 1.0)
        log_pitch[seg] = math.log2(ev.pitch) + u * (math.log2(ev.pitch_end) - math.log2(ev.pitch))
        formants[:, seg] = np.array(VOWELS[ev.vowel])[:, None]
        vib_rate[seg] = ev.vibrato_rate or vib_rate[max(s0 - 1, 0)]

        # Voicing starts after the consonant (and its closure, for plosives).
        cons = CONSONANTS[ev.consonant] if ev.consonant else (0.0, 0.0, 0.0, 0.0)
        voice_on = ev.start + cons[3] + 0.6 * cons[2]
        local = t[s0:s1] - ev.start
        pos = np.clip(local / ev.duration, 0.0, 1.0)
        db = ev.level_db + ev.swell_db * (pos - 0.5)
        # Fade in at voicing onset, fade out at the end unless the next vowel follows at once.
        previous = events[index - 1] if index > 0 else None
        tied = previous is not None and abs(previous.start + previous.duration - ev.start) < 1e-9
        if tied and not ev.consonant:
            fade_in = np.ones(s1 - s0)  # legato: the voice carries straight on into this event
        else:
            fade_in = _smoothstep((t[s0:s1] - voice_on) / attack)
        fade_out = (
            np.ones_like(fade_in)
            if legato
            else _smoothstep((ev.start + ev.duration - t[s0:s1]) / release)
        )
        gain = np.maximum(fade_in * fade_out, 1e-4)
        level_db[s0:s1] = db + 20.0 * np.log10(gain)
        voiced = (t[s0:s1] >= voice_on) & (fade_out > 0.5)
        held[s0:s1] = np.where(voiced, local, 0.0)

        if kind == "singing":
            # Vibrato fades in ~150 ms into the note and out over the note's last 80 ms.
            gate_in = _smoothstep((local - ev.vibrato_delay) / 0.2)
            gate_out = _smoothstep((ev.duration - local) / 0.08)
            vib_gate[s0:s1] = gate_in * gate_out
            vib_depth[s0:s1] = ev.vibrato_depth

    # Glides between notes/syllables and formant transitions between vowels.
    glide = 0.03 if kind == "singing" else 0.025
    log_pitch = gaussian_filter1d(log_pitch, sigma=glide * sr, mode="nearest")
    transition = 0.035 if kind == "singing" else 0.015
    formants = gaussian_filter1d(formants, sigma=transition * sr, axis=1, mode="nearest")
    formants *= voice["formant_scale"]

    vib_phase = 2 * np.pi * np.cumsum(vib_rate) / sr if kind == "singing" else np.zeros(num_samples)
    vib_signal = vib_gate * np.sin(vib_phase)
    f0 = 2.0 ** (log_pitch + vib_depth * vib_signal / 1200.0)
    amplitude = gaussian_filter1d(10.0 ** (level_db / 20.0), sigma=0.004 * sr, mode="nearest")
    return {
        "f0": f0,
        "amplitude": amplitude,
        "formants": formants,
        "held": held,
        "vib_phase": vib_phase,
        "vib_gate": vib_gate,
    }


def _glottal_source(f0: np.ndarray, sr: int, tilt: float) -> np.ndarray:
    """Band-limited harmonic pulse train at ``f0`` (S,): harmonics in cosine phase, k^-tilt slope."""
    phase = 2 * np.pi * np.cumsum(f0) / sr
    nyquist_guard = 0.45 * sr
    source = np.zeros_like(f0)
    for k in range(1, int(nyquist_guard / f0.min()) + 1):
        # Harmonics fade out smoothly before Nyquist so glides do not click.
        fade = np.clip((nyquist_guard - k * f0) / (0.04 * sr), 0.0, 1.0)
        if not fade.any():
            break
        source += (k**-tilt) * fade * np.cos(k * phase)
    return source


def _formant_filter(x: np.ndarray, formants: np.ndarray, sr: int, block: int = 32) -> np.ndarray:
    """Cascade of three two-pole resonators (unit gain at DC) whose centre frequencies follow
    ``formants`` (3×S), updated every ``block`` samples with the filter state carried over."""
    out = x
    for j, bandwidth in enumerate(FORMANT_BANDWIDTHS):
        radius = math.exp(-math.pi * bandwidth / sr)
        y = np.empty_like(out)
        state = np.zeros(2)
        for s0 in range(0, len(out), block):
            s1 = min(len(out), s0 + block)
            freq = formants[j, (s0 + s1) // 2]
            c = 2 * radius * math.cos(2 * math.pi * min(freq, 0.45 * sr) / sr)
            a = [1.0, -c, radius * radius]
            b = [1.0 - c + radius * radius]
            y[s0:s1], state = lfilter(b, a, out[s0:s1], zi=state)
        out = y
    return out


def _consonant_noise(
    rng: np.random.Generator, events: list[_Event], num_samples: int, sr: int
) -> np.ndarray:
    """Band-passed noise bursts at the onsets that carry a consonant (S,)."""
    noise = np.zeros(num_samples)
    for ev in events:
        if not ev.consonant:
            continue
        low, high, duration, closure = CONSONANTS[ev.consonant]
        s0 = int(round((ev.start + closure) * sr))
        n = int(round(duration * sr))
        if s0 >= num_samples or n < 4:
            continue
        n = min(n, num_samples - s0)
        high = min(high, 0.45 * sr)  # low sample rates squeeze the band under Nyquist
        low = min(low, 0.5 * high)
        sos = butter(2, [low, high], btype="bandpass", fs=sr, output="sos")
        burst = sosfilt(sos, rng.standard_normal(n))
        u = np.linspace(0.0, 1.0, n)
        shape = _smoothstep(u / 0.2) * _smoothstep((1.0 - u) / 0.5)
        level = 10.0 ** ((ev.level_db - 10.0) / 20.0)
        noise[s0 : s0 + n] += level * shape * burst / (np.std(burst) + 1e-9)
    return noise


def synth_audio(
    rng: np.random.Generator, kind: str, voice: dict, *, num_samples: int, sample_rate: int
) -> tuple[np.ndarray, dict[str, np.ndarray], list[_Event]]:
    """Synthesize one performance: ``(wave S float32 peak 0.5, per-sample controls, events)``."""
    seconds = num_samples / sample_rate
    events = (
        _plan_singing(rng, voice, seconds)
        if kind == "singing"
        else _plan_talking(rng, voice, seconds)
    )
    ctl = _controls(events, kind, voice, num_samples, sample_rate)
    source = _glottal_source(ctl["f0"], sample_rate, voice["tilt"])
    source = source / (np.abs(source).max() + 1e-9) + voice["breath"] * rng.standard_normal(
        num_samples
    )
    voiced = _formant_filter(source * ctl["amplitude"], ctl["formants"], sample_rate)
    # Consonant bursts are scaled relative to the voiced signal so their balance does not
    # depend on the formant filter's gain.
    voiced_rms = (
        np.sqrt(np.mean(voiced[ctl["amplitude"] > 0.1] ** 2))
        if (ctl["amplitude"] > 0.1).any()
        else 1.0
    )
    wave = voiced + voiced_rms * _consonant_noise(rng, events, num_samples, sample_rate)
    # Peak at -6 dBFS leaves room for the AAC encoder's overshoot.
    wave = 0.5 * wave / (np.abs(wave).max() + 1e-9)
    return wave.astype(np.float32), ctl, events


# =============================================================================================
# Truth: audio causes per frame and the face laws
# =============================================================================================


def _frame_causes(
    ctl: dict, events: list[_Event], num_frames: int, fps: float, sr: int
) -> dict[str, np.ndarray]:
    """Audio causes per video frame (each ``F``), sampled at frame centres."""
    num_samples = len(ctl["f0"])
    centres = np.clip(
        ((np.arange(num_frames) + 0.5) / fps * sr).astype(np.int64), 0, num_samples - 1
    )
    bounds = np.clip(
        np.round(np.arange(num_frames + 1) / fps * sr).astype(np.int64), 0, num_samples
    )
    # Loudness averages the envelope over each frame's samples.
    sums = np.concatenate([[0.0], np.cumsum(ctl["amplitude"])])
    counts = np.maximum(bounds[1:] - bounds[:-1], 1)
    mean_amp = (sums[bounds[1:]] - sums[bounds[:-1]]) / counts
    loudness = 20.0 * np.log10(np.maximum(mean_amp, 1e-9))
    loudness = np.maximum(loudness - loudness.max(), SILENCE_DB)
    onset = np.zeros(num_frames)
    for ev in events:
        k = int(math.floor(ev.start * fps))
        if 0 <= k < num_frames:
            onset[k] = 1.0
    phase = np.angle(np.exp(1j * ctl["vib_phase"][centres]))
    phase = np.where(phase >= np.pi, -np.pi, phase)
    return {
        "loudness": loudness,
        "pitch": ctl["f0"][centres],
        "vibrato_phase": phase,
        "f2": ctl["formants"][1, centres],
        "held": ctl["held"][centres],
        "onset": onset,
    }


def face_laws(
    causes: dict[str, np.ndarray],
    ctl: dict,
    events: list[_Event],
    *,
    kind: str,
    voice: dict,
    fps: float,
    sr: int,
) -> dict[str, np.ndarray]:
    """Face parameters per frame (each ``F``) from the audio, by the benchmark's fixed laws.

    Each law is followed by a short zero-phase smoothing so that no parameter jumps further
    between two frames than a face could move.
    """
    num_frames = len(causes["pitch"])
    num_samples = len(ctl["f0"])
    centres = np.clip(
        ((np.arange(num_frames) + 0.5) / fps * sr).astype(np.int64), 0, num_samples - 1
    )
    scale = voice["formant_scale"]
    f1 = ctl["formants"][0, centres] / scale
    f2 = ctl["formants"][1, centres] / scale

    level = np.clip((causes["loudness"] - LEVEL_FLOOR_DB) / -LEVEL_FLOOR_DB, 0.0, 1.0)
    openness = np.clip((f1 - OPEN_F1[0]) / (OPEN_F1[1] - OPEN_F1[0]), 0.0, 1.0)
    mouth_open = gaussian_filter1d(level * (0.3 + 0.7 * openness), sigma=1.0, mode="nearest")

    width = (np.log(f2) - math.log(WIDTH_F2[0])) / (math.log(WIDTH_F2[1]) - math.log(WIDTH_F2[0]))
    mouth_width = gaussian_filter1d(np.clip(width, 0.0, 1.0), sigma=1.0, mode="nearest")

    lo, hi = voice["singing_range_hz" if kind == "singing" else "talking_range_hz"]
    brow = np.clip(np.log2(causes["pitch"] / lo) / math.log2(hi / lo), 0.0, 1.0)
    brow = gaussian_filter1d(brow, sigma=2.0, mode="nearest")  # also irons out the vibrato wobble

    sway = (
        ctl["vib_gate"][centres] * np.sin(ctl["vib_phase"][centres])
        if kind == "singing"
        else np.zeros(num_frames)
    )

    eye_close = np.clip((causes["held"] - EYE_HOLD_START) / EYE_HOLD_SPAN, 0.0, 1.0)
    eye_close = gaussian_filter1d(eye_close, sigma=1.5, mode="nearest")

    times = (np.arange(num_frames) + 0.5) / fps
    drive = np.zeros(num_frames)
    for ev in events:
        lag = np.maximum(times - ev.start, 0.0)
        accent = float(np.clip((ev.level_db - LEVEL_FLOOR_DB) / -LEVEL_FLOOR_DB, 0.3, 1.0))
        bump = (lag / NOD_TAU) * np.exp(
            1.0 - lag / NOD_TAU
        )  # 0 before the onset, peak 1 at NOD_TAU
        drive += accent * bump
    nod = 1.0 - np.exp(-drive)

    params = {
        "mouth_open": np.clip(mouth_open, 0.0, 1.0),
        "mouth_width": np.clip(mouth_width, 0.0, 1.0),
        "brow": np.clip(brow, 0.0, 1.0),
        "sway": np.clip(sway, -1.0, 1.0),
        "eye_close": np.clip(eye_close, 0.0, 1.0),
        "nod": np.clip(nod, 0.0, 1.0),
    }
    # The stored truth is rounded; the renderer draws exactly the rounded values.
    return {name: np.round(params[name], TRUTH_DECIMALS) for name in FACE_CUES}


# =============================================================================================
# Face renderer
# =============================================================================================


def _ellipse_coverage(x, y, cx, cy, rx, ry):
    """Anti-aliased coverage of a filled ellipse, from a first-order signed distance."""
    dx, dy = (x - cx) / rx, (y - cy) / ry
    r = np.maximum(np.sqrt(dx * dx + dy * dy), 1e-6)
    grad = np.sqrt((dx / rx) ** 2 + (dy / ry) ** 2) / r
    dist = (r - 1.0) / np.maximum(grad, 1e-6)
    return np.clip(0.5 - dist, 0.0, 1.0)


def _span_coverage(y, top, bottom):
    """Exact vertical coverage of the span [top, bottom] over pixels centred at ``y``."""
    return np.clip(np.minimum(bottom, y + 0.5) - np.maximum(top, y - 0.5), 0.0, 1.0)


def _thin_ellipse_coverage(x, y, cx, cy, rx, ry):
    """Coverage of a wide, possibly sub-pixel-thin ellipse, column by column: each column's
    chord is covered exactly in y, so the drawn area stays right even when ``ry`` → 0."""
    u = np.clip((x - cx) / rx, -1.0, 1.0)
    half = ry * np.sqrt(1.0 - u * u)
    return _span_coverage(y, cy - half, cy + half)


def _blend(image, alpha, colour):
    """``image`` (…×3) += alpha (…) · (colour − image), in place."""
    image += alpha[..., None] * (np.asarray(colour, dtype=np.float32) - image)


def render_face(
    params: dict[str, np.ndarray], identity: dict, size: int, *, chunk: int = 64
) -> np.ndarray:
    """Draw the face for every frame of ``params`` (each cue: ``F``) → ``F×size×size×3`` uint8.

    ``identity`` is a speaker's ``identity`` dict (colours, face and hair shape). Cues missing from
    ``params`` stay at rest (0). Rendering is vectorised over frames in chunks of ``chunk``.
    """
    if size < 16:
        raise ValueError(f"size must be at least 16 px, got {size}")
    lengths = {len(np.atleast_1d(v)) for v in params.values()}
    if len(lengths) != 1:
        raise ValueError(f"all cues need the same number of frames, got lengths {sorted(lengths)}")
    num_frames = lengths.pop()
    cue = {
        name: np.asarray(params.get(name, np.zeros(num_frames)), dtype=np.float32).reshape(-1)
        for name in FACE_CUES
    }
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for start in range(0, num_frames, chunk):
        sl = slice(start, min(num_frames, start + chunk))
        frames[sl] = _render_chunk({k: v[sl] for k, v in cue.items()}, identity, size)
    return frames


def _render_chunk(cue: dict[str, np.ndarray], identity: dict, size: int) -> np.ndarray:
    n = len(cue["sway"])
    s = float(size)
    # Pixel centres in pixel units; per-frame scalars broadcast as (F, 1, 1).
    x = (np.arange(size, dtype=np.float32) + 0.5)[None, None, :]
    y = (np.arange(size, dtype=np.float32) + 0.5)[None, :, None]

    def per_frame(values):
        return np.asarray(values, dtype=np.float32)[:, None, None]

    cx = per_frame(s * (REST_X + SWAY_AMP * cue["sway"]))
    cy = per_frame(s * (REST_Y + NOD_AMP * cue["nod"]))
    rx, ry = identity["face_rx"] * s, identity["face_ry"] * s
    pad_x, pad_y = identity["hair_pad_x"] * s, identity["hair_pad_y"] * s

    image = np.empty((n, size, size, 3), dtype=np.float32)
    image[:] = np.asarray(identity["background"], dtype=np.float32)

    # Hair behind the head.
    hair_cy = cy - 0.05 * s
    hair = _ellipse_coverage(x, y, cx, hair_cy, rx + pad_x, ry + pad_y)
    if identity["hair_style"] == "long":
        # Hair falls behind the head down to the jaw.
        side = np.clip(0.5 - (np.abs(x - cx) - (rx + pad_x)), 0.0, 1.0)
        length = _span_coverage(y, hair_cy, cy + 0.22 * s)
        hair = np.maximum(hair, side * length)
    elif identity["hair_style"] == "bun":
        bun_cy = hair_cy - (ry + pad_y) + 0.01 * s
        hair = np.maximum(hair, _ellipse_coverage(x, y, cx, bun_cy, 0.06 * s, 0.06 * s))
    _blend(image, hair, identity["hair"])

    # Face, then a fringe over its top: the hairline is higher in the middle.
    face = _ellipse_coverage(x, y, cx, cy, rx, ry)
    _blend(image, face, identity["skin"])
    u = np.clip((x - cx) / rx, -1.0, 1.0)
    hairline = cy + s * (identity["hairline"] - 0.04 * (1.0 - u * u))
    fringe = face * np.clip(0.5 - (y - hairline), 0.0, 1.0)
    _blend(image, fringe, identity["hair"])

    # Brows: thick arcs, raised with the brow cue.
    brow_cy = cy + s * (BROW_Y - BROW_AMP * per_frame(cue["brow"]))
    half_thick = BROW_HALF_THICK * s
    for side_sign in (-1.0, 1.0):
        bx = cx + side_sign * BROW_X * s
        along = np.clip((x - bx) / (BROW_HALF_LEN * s), -1.0, 1.0)
        centre = brow_cy + BROW_ARCH * s * along * along
        ends = np.clip(0.5 + BROW_HALF_LEN * s - np.abs(x - bx), 0.0, 1.0)
        _blend(
            image, ends * _span_coverage(y, centre - half_thick, centre + half_thick), BROW_COLOUR
        )

    # Eyes: the lid squashes each eye towards its fixed lower edge.
    eye_ry = EYE_RY * s * (1.0 - per_frame(cue["eye_close"]))
    eye_cy = cy + s * (EYE_Y + EYE_RY) - eye_ry
    for side_sign in (-1.0, 1.0):
        eye = _thin_ellipse_coverage(x, y, cx + side_sign * EYE_X * s, eye_cy, EYE_RX * s, eye_ry)
        _blend(image, eye, EYE_COLOUR)

    # Mouth: width from the vowel, opening from loudness × vowel openness; centre fixed.
    mouth_rx = s * (MOUTH_RX0 + MOUTH_RX1 * per_frame(cue["mouth_width"]))
    mouth_ry = s * (MOUTH_RY0 + MOUTH_RY1 * per_frame(cue["mouth_open"]))
    _blend(
        image, _thin_ellipse_coverage(x, y, cx, cy + MOUTH_Y * s, mouth_rx, mouth_ry), MOUTH_COLOUR
    )

    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# =============================================================================================
# Accompaniment: a synthetic music bed under the voice (``--accompaniment``)
# =============================================================================================

MUSIC_STYLES = ("pop", "ballad", "dance")
MAJOR_STEPS = (0, 2, 4, 5, 7, 9, 11)
# Chord progressions as major-scale degrees (0 = I), one chord per 4-beat bar.
PROGRESSIONS = ((0, 4, 5, 3), (5, 3, 0, 4), (0, 5, 3, 4), (0, 3, 4, 3))
BEATS_PER_BAR = 4


@dataclass(frozen=True)
class MusicStyle:
    """How one style of music bed is played. Times within a bar are in beats (0 ≤ b < 4)."""

    tempo: tuple[float, float]  # beats per minute, drawn per clip from this range
    chord_hits: tuple[float, ...]  # chord onsets; each chord lasts ``chord_beats``
    chord_beats: float
    chord_attack: float  # s
    bass_hits: tuple[float, ...]
    bass_beats: float
    kick: tuple[float, ...]
    snare: tuple[float, ...]
    hat: tuple[float, ...]
    mix: tuple[float, float, float]  # RMS weights of chords, bass, drums in the bed


STYLES = {
    # Held chords re-struck every bar, root-fifth bass, backbeat snare and eighth-note hats.
    "pop": MusicStyle(
        tempo=(90.0, 118.0),
        chord_hits=(0.0,),
        chord_beats=4.0,
        chord_attack=0.03,
        bass_hits=(0.0, 2.0, 2.5),
        bass_beats=0.9,
        kick=(0.0, 2.0),
        snare=(1.0, 3.0),
        hat=tuple(0.5 * k for k in range(8)),
        mix=(1.0, 0.8, 0.9),
    ),
    # Slow swelling pads, one long bass note per bar, a soft kick and snare.
    "ballad": MusicStyle(
        tempo=(60.0, 76.0),
        chord_hits=(0.0,),
        chord_beats=4.0,
        chord_attack=0.25,
        bass_hits=(0.0,),
        bass_beats=4.0,
        kick=(0.0,),
        snare=(2.0,),
        hat=(),
        mix=(1.0, 0.7, 0.4),
    ),
    # Four-on-the-floor kick, off-beat chord stabs, bass and hats.
    "dance": MusicStyle(
        tempo=(118.0, 128.0),
        chord_hits=(0.5, 1.5, 2.5, 3.5),
        chord_beats=0.3,
        chord_attack=0.005,
        bass_hits=(0.5, 1.5, 2.5, 3.5),
        bass_beats=0.4,
        kick=(0.0, 1.0, 2.0, 3.0),
        snare=(1.0, 3.0),
        hat=(0.5, 1.5, 2.5, 3.5),
        mix=(0.8, 1.0, 1.1),
    ),
}


def estimate_key(pitch: np.ndarray, loudness: np.ndarray) -> float:
    """Tonic in Hz of the major key that holds most voiced frames (``loudness`` above the
    mouth's floor), read from the per-frame truth, so the music is in the singer's key.

    The singer's tuning need not be A = 440 Hz: the tuning offset is the circular mean of the
    frames' pitch in cents modulo a semitone (vibrato averages out), and the pitch classes are
    counted on that grid against the seven major-scale templates.
    """
    pitch = np.asarray(pitch, dtype=np.float64)
    voiced = np.asarray(loudness) > LEVEL_FLOOR_DB
    cents = 1200.0 * np.log2((pitch[voiced] if voiced.any() else pitch) / 440.0)
    angle = np.angle(np.mean(np.exp(2j * np.pi * cents / 100.0)))
    offset = 100.0 * angle / (2 * np.pi)
    classes = np.round((cents - offset) / 100.0).astype(np.int64) % 12
    counts = np.bincount(classes, minlength=12)
    scores = [sum(int(counts[(root + step) % 12]) for step in MAJOR_STEPS) for root in range(12)]
    root = int(np.argmax(scores))
    return 440.0 * 2.0 ** ((100.0 * root + offset) / 1200.0)


def _into_octave(freq: float, low: float) -> float:
    """``freq`` moved by whole octaves into [low, 2·low)."""
    return float(low * 2.0 ** (math.log2(freq / low) % 1.0))


def _envelope(n: int, sr: int, attack: float, decay: float, release: float) -> np.ndarray:
    """Attack ramp, exponential decay (time constant ``decay`` s), release ramp at the end."""
    t = np.arange(n) / sr
    env = _smoothstep(t / max(attack, 1.0 / sr)) * np.exp(-t / decay)
    return env * _smoothstep((n / sr - t) / max(release, 1.0 / sr))


def _harmonic_tone(freq: float, n: int, sr: int, tilt: float, phases: np.ndarray) -> np.ndarray:
    """Sum of harmonics ``k`` of ``freq`` with amplitude ``k^-tilt`` below 0.45·sr."""
    t = np.arange(n) / sr
    out = np.zeros(n)
    for k in range(1, int(0.45 * sr / freq) + 1):
        out += k**-tilt * np.sin(2 * np.pi * k * freq * t + phases[k % len(phases)])
    return out


def _add(track: np.ndarray, start: int, sound: np.ndarray) -> None:
    """``track[start:start+len(sound)] += sound``, clipped to the track (start may be < 0)."""
    lo, hi = max(start, 0), min(len(track), start + len(sound))
    if hi > lo:
        track[lo:hi] += sound[lo - start : hi - start]


def _drum(rng: np.random.Generator, kind: str, sr: int) -> np.ndarray:
    if kind == "kick":  # a sine sweeping down from ~150 Hz
        n = int(0.35 * sr)
        t = np.arange(n) / sr
        freq = 50.0 + 100.0 * np.exp(-t / 0.03)
        return np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.exp(-t / 0.15)
    if kind == "snare":  # band-passed noise plus a short body tone
        n = int(0.25 * sr)
        t = np.arange(n) / sr
        sos = butter(2, [1500.0, min(5000.0, 0.45 * sr)], btype="bandpass", fs=sr, output="sos")
        noise = sosfilt(sos, rng.standard_normal(n))
        noise /= np.std(noise) + 1e-9
        return 0.6 * noise * np.exp(-t / 0.08) + np.sin(2 * np.pi * 190.0 * t) * np.exp(-t / 0.04)
    n = int(0.08 * sr)  # closed hi-hat: high-passed noise
    t = np.arange(n) / sr
    sos = butter(2, min(5000.0, 0.4 * sr), btype="highpass", fs=sr, output="sos")
    noise = sosfilt(sos, rng.standard_normal(n))
    return 0.5 * noise / (np.std(noise) + 1e-9) * np.exp(-t / 0.02)


def synth_music(
    rng: np.random.Generator,
    *,
    num_samples: int,
    sample_rate: int,
    style: str,
    root_hz: float,
) -> tuple[np.ndarray, dict]:
    """A music bed ``S`` (float64, unit RMS): chords, bass and drums in the major key of
    ``root_hz``, at a tempo drawn from ``style``; returns it with a description of what was played.

    The bed starts at a random point of its first bar (the song is already playing) and has no
    relation to the voice's timing, so neither its beats nor its level carry the face's motion.
    """
    if style not in STYLES:
        raise ValueError(f"music style must be one of {MUSIC_STYLES}, got {style!r}")
    st, sr = STYLES[style], sample_rate
    tempo = float(rng.uniform(*st.tempo))
    beat = 60.0 / tempo
    progression = PROGRESSIONS[int(rng.integers(len(PROGRESSIONS)))]
    offset = float(rng.uniform(0.0, BEATS_PER_BAR * beat))  # time into the song at sample 0
    tonic = _into_octave(root_hz, 130.81)  # chords voiced from C3 upwards
    bars = int(math.ceil((num_samples / sr + offset) / (BEATS_PER_BAR * beat))) + 1

    chords, bass, drums = (np.zeros(num_samples) for _ in range(3))
    phases = rng.uniform(0.0, 2 * np.pi, 16)
    for bar in range(bars):
        degree = progression[bar % len(progression)]
        bar_start = bar * BEATS_PER_BAR * beat - offset
        steps = [MAJOR_STEPS[(degree + i) % 7] + 12 * ((degree + i) // 7) for i in (0, 2, 4)]
        for hit in st.chord_hits:
            n = int(st.chord_beats * beat * sr)
            env = _envelope(n, sr, st.chord_attack, 4.0 * st.chord_beats * beat, 0.05)
            velocity = float(rng.uniform(0.8, 1.0))
            for semis in steps:
                freq = tonic * 2.0 ** (semis / 12.0)
                # Two voices detuned by ±6 cents: a chorused, saw-like pad.
                for cents in (-6.0, 6.0):
                    tone = _harmonic_tone(freq * 2.0 ** (cents / 1200.0), n, sr, 1.6, phases)
                    _add(chords, int(round((bar_start + hit * beat) * sr)), velocity * env * tone)
        bass_freq = _into_octave(tonic * 2.0 ** (steps[0] / 12.0), 55.0)
        for hit in st.bass_hits:
            n = int(st.bass_beats * beat * sr)
            t = np.arange(n) / sr
            tone = sum(
                a * np.sin(2 * np.pi * k * bass_freq * t)
                for k, a in ((1, 1.0), (2, 0.5), (3, 0.25))
            )
            env = _envelope(n, sr, 0.005, 0.5, 0.03) * float(rng.uniform(0.85, 1.0))
            _add(bass, int(round((bar_start + hit * beat) * sr)), env * tone)
        for kind, hits in (("kick", st.kick), ("snare", st.snare), ("hat", st.hat)):
            for hit in hits:
                sound = _drum(rng, kind, sr) * float(rng.uniform(0.75, 1.0))
                _add(drums, int(round((bar_start + hit * beat) * sr)), sound)

    bed = np.zeros(num_samples)
    for part, weight in zip((chords, bass, drums), st.mix, strict=True):
        rms = np.sqrt(np.mean(part**2))
        if rms > 0:
            bed += weight * part / rms
    bed /= np.sqrt(np.mean(bed**2)) + 1e-12
    info = {
        "style": style,
        "tempo_bpm": round(tempo, 3),
        "root_hz": round(tonic, 3),
        "progression": list(progression),
    }
    return bed, info


def mix_accompaniment(
    vocal: np.ndarray, music: np.ndarray, vmr_db: float, *, peak: float = 0.5
) -> tuple[np.ndarray, np.ndarray, float]:
    """``(mixture, vocal part, music gain)``, each ``S`` float32.

    The music is scaled so that the voice-to-music ratio (mean power of the voice over the
    clip / mean power of the music, in dB) is ``vmr_db``; the sum is then scaled to ``peak``,
    and the vocal part by the same factor, so ``mixture == vocal part + gain · music`` up to
    float32 rounding. With uncorrelated parts, the mixture's SI-SDR against the vocal part is
    about ``vmr_db``.
    """
    vocal = np.asarray(vocal, dtype=np.float64)
    music = np.asarray(music, dtype=np.float64)
    gain = np.sqrt(np.mean(vocal**2) / (np.mean(music**2) + 1e-12)) * 10.0 ** (-vmr_db / 20.0)
    mixture = vocal + gain * music
    scale = peak / (np.abs(mixture).max() + 1e-9)
    return (
        (scale * mixture).astype(np.float32),
        (scale * vocal).astype(np.float32),
        float(scale * gain),
    )


def _write_wav(path: Path, wave: np.ndarray, sample_rate: int) -> None:
    """Float32 WAV, written whole and then renamed into place (same bytes for the same wave)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    wavfile.write(tmp, int(sample_rate), np.asarray(wave, dtype=np.float32))
    tmp.replace(path)


def add_accompaniment(
    rng: np.random.Generator, wave: np.ndarray, record: dict, *, vmr_db: float, style: str
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Put a music bed under the clip's voice ``wave`` (``S``): ``(mixture, vocal, info)``.

    ``style`` is one of ``MUSIC_STYLES`` or ``mixed`` (drawn per clip). Singing is accompanied
    in its own key (read from the truth); talking gets a random key.
    """
    if style == "mixed":
        style = MUSIC_STYLES[int(rng.integers(len(MUSIC_STYLES)))]
    truth = record["truth"]
    if record["kind"] == "singing":
        root = estimate_key(np.asarray(truth["pitch"]), np.asarray(truth["loudness"]))
    else:
        root = 110.0 * 2.0 ** (int(rng.integers(12)) / 12.0)
    music, info = synth_music(
        rng,
        num_samples=len(wave),
        sample_rate=int(record["sample_rate"]),
        style=style,
        root_hz=root,
    )
    mixture, vocal, gain = mix_accompaniment(wave, music, vmr_db)
    return mixture, vocal, {**info, "vmr_db": float(vmr_db), "music_gain": round(gain, 6)}


# =============================================================================================
# Clips and datasets
# =============================================================================================


def synth_clip(
    rng: np.random.Generator,
    kind: str,
    *,
    size: int = 64,
    seconds: float = 4.0,
    fps: float = 25,
    sample_rate: int = 16000,
    speaker: Speaker | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """One clip: ``(frames F×size×size×3 uint8, audio S float32, record)``.

    ``F = round(seconds · fps)`` and ``S = round(F / fps · sample_rate)``. The record holds the
    clip's ``kind``, ``speaker_id``, ``identity``, ``voice``, sizes and the per-frame ``truth`` of
    every name in ``AUDIO_CAUSES + FACE_CUES`` (see the module docstring for units).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if size % 2 or not 32 <= size <= 128:
        raise ValueError(f"size must be an even number of pixels in [32, 128], got {size}")
    num_frames = int(round(seconds * fps))
    if num_frames < 1:
        raise ValueError(
            f"seconds × fps must give at least one frame, got {seconds} s at {fps} fps"
        )
    num_samples = int(round(num_frames / fps * sample_rate))
    if speaker is None:
        speaker = sample_speaker(rng)

    # The performance starts `lead` frames before the clip (see LEAD_SECONDS).
    lead = int(rng.integers(round(LEAD_SECONDS[0] * fps), round(LEAD_SECONDS[1] * fps) + 1))
    lead_samples = int(round(lead / fps * sample_rate))
    total_samples = lead_samples + num_samples
    wave, ctl, events = synth_audio(
        rng, kind, speaker.voice, num_samples=total_samples, sample_rate=sample_rate
    )
    # Cut the clip out: the controls lose the lead, event times shift by it (an event that began
    # before the clip still shapes its first frames: a held note, a nod under way).
    ctl = {name: values[..., lead_samples:] for name, values in ctl.items()}
    events = [replace(ev, start=ev.start - lead / fps) for ev in events]
    causes = _frame_causes(ctl, events, num_frames, fps, sample_rate)
    face = face_laws(causes, ctl, events, kind=kind, voice=speaker.voice, fps=fps, sr=sample_rate)
    wave = wave[lead_samples:]
    wave = (0.5 * wave / (np.abs(wave).max() + 1e-9)).astype(np.float32)  # peak at -6 dBFS again
    frames = render_face(face, speaker.identity, size)

    truth = {name: [round(float(v), TRUTH_DECIMALS) for v in causes[name]] for name in AUDIO_CAUSES}
    truth.update({name: [float(v) for v in face[name]] for name in FACE_CUES})
    record = {
        "kind": kind,
        "speaker_id": speaker.speaker_id,
        "identity": speaker.identity,
        "voice": speaker.voice,
        "fps": fps,
        "sample_rate": sample_rate,
        "size": size,
        "num_frames": num_frames,
        "num_samples": num_samples,
        "seconds": num_frames / fps,
        "num_events": sum(ev.start >= 0 for ev in events),
        "lead_seconds": lead / fps,
        "truth": truth,
    }
    return frames, wave, record


def clip_kind(index: int, kind: str) -> str:
    """Kind of clip ``index`` for a dataset of ``kind`` (mixed alternates singing, talking, ...)."""
    if kind == "mixed":
        return KINDS[index % 2]
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS + ('mixed',)}, got {kind!r}")
    return kind


def num_speakers(clips: int) -> int:
    """Distinct speakers in a dataset of ``clips`` clips: about one per two clips."""
    return max(1, (clips + 1) // 2)


def _speaker_for(seed: int, index: int) -> Speaker:
    # Each speaker has its own random stream, keyed by (seed, speaker index), so a speaker
    # looks and sounds the same in every clip and in every dataset size.
    rng = np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(0, index)))
    return sample_speaker(rng, speaker_id=f"spk{index:03d}")


def _make_clip(task: dict) -> dict:
    """Generate and write clip ``task["index"]``; return its record. Runs in worker processes."""
    index, seed = task["index"], task["seed"]
    rng = np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(1, index)))
    kind = clip_kind(index, task["kind"])
    speaker = _speaker_for(seed, index // 2)
    frames, wave, record = synth_clip(
        rng,
        kind,
        size=task["size"],
        seconds=task["seconds"],
        fps=task["fps"],
        sample_rate=task["sample_rate"],
        speaker=speaker,
    )
    clip_id = f"clip{index:05d}"
    rel = f"clips/{clip_id}.mp4"
    extra = {}
    if task.get("accompaniment"):
        # The music has a random stream of its own, so the voice, the face and the truth are
        # the same bytes as without accompaniment.
        music_rng = np.random.default_rng(
            np.random.SeedSequence(entropy=seed, spawn_key=(2, index))
        )
        wave, vocal, info = add_accompaniment(
            music_rng, wave, record, vmr_db=task["vmr_db"], style=task["music_style"]
        )
        extra = {"accompaniment": info, "vocals": f"vocals/{clip_id}.wav"}
        _write_wav(Path(task["out"]) / extra["vocals"], vocal, task["sample_rate"])
    write_mp4(Path(task["out"]) / rel, frames, task["fps"], wave, task["sample_rate"])
    return {"clip_id": clip_id, "file": rel, "index": index, "seed": seed, **record, **extra}


def generate_dataset(
    out: str | Path,
    clips: int,
    seed: int,
    kind: str = "mixed",
    size: int = 64,
    seconds: float = 4.0,
    fps: float = 25,
    sample_rate: int = 16000,
    workers: int = 1,
    progress: bool = True,
    accompaniment: bool = False,
    vmr_db: float = 0.0,
    music_style: str = "mixed",
) -> list[dict]:
    """Write ``clips`` clips, ``meta.jsonl`` and ``synth.json`` under ``out``; return the records.

    Clip ``i`` draws from its own random stream keyed by ``(seed, i)`` and speaker ``i // 2``
    from one keyed by ``(seed, i // 2)``, so the output is byte-identical for any ``workers``.

    ``accompaniment``: each clip's soundtrack is its voice over a music bed (chords, bass,
    drums; ``music_style`` in ``MUSIC_STYLES`` or ``mixed``) at a voice-to-music ratio of
    ``vmr_db`` dB, drawn from a third stream keyed by ``(seed, i)``. The clean voice, scaled as
    in the mixture, is written to ``vocals/<clip_id>.wav`` (float32) and named in the record's
    ``vocals``; ``accompaniment`` describes the bed. The face and the truth are unchanged.
    """
    if clips < 1:
        raise ValueError(f"clips must be at least 1, got {clips}")
    clip_kind(0, kind)  # validates kind
    if accompaniment and music_style not in (*MUSIC_STYLES, "mixed"):
        raise ValueError(
            f"music_style must be one of {(*MUSIC_STYLES, 'mixed')}, got {music_style!r}"
        )
    if size % 2 or not 32 <= size <= 128:
        raise ValueError(f"size must be an even number of pixels in [32, 128], got {size}")
    out = Path(out)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    args = {
        "clips": clips,
        "seed": seed,
        "kind": kind,
        "size": size,
        "seconds": seconds,
        "fps": fps,
        "sample_rate": sample_rate,
        "version": SYNTH_VERSION,
    }
    if accompaniment:  # only then, so that synth.json of plain SynthSing keeps its bytes
        args.update(accompaniment=True, vmr_db=float(vmr_db), music_style=music_style)
    tasks = [{**args, "index": i, "out": str(out)} for i in range(clips)]
    bar = tqdm(total=clips, desc="SynthSing", unit="clip", disable=not progress)
    records = []
    if workers <= 1:
        for task in tasks:
            records.append(_make_clip(task))
            bar.update()
    else:
        # "spawn" keeps workers independent of whatever threads the parent process runs.
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            for record in pool.map(_make_clip, tasks):
                records.append(record)
                bar.update()
    bar.close()

    lines = [json.dumps(record, sort_keys=True) for record in records]
    (out / "meta.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = {**args, "num_speakers": num_speakers(clips)}
    (out / "synth.json").write_text(
        json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return records


def check_arguments(args: argparse.Namespace) -> None:
    """The command line's numbers, checked before any work: one user error naming them all."""
    problems = []
    if args.clips < 1:
        problems.append(f"--clips {args.clips} (give 1 or more)")
    if not 0 <= args.seed <= 2**31 - 1:
        problems.append(f"--seed {args.seed} (give 0 to {2**31 - 1})")
    if args.size % 2 or not 32 <= args.size <= 128:
        problems.append(f"--size {args.size} (give an even number from 32 to 128)")
    if not (math.isfinite(args.seconds) and math.isfinite(args.fps)) or args.seconds * args.fps < 1:
        problems.append(f"--seconds {args.seconds} at --fps {args.fps} (a clip needs a frame)")
    if not 4000 <= args.sr <= 192_000:
        problems.append(f"--sr {args.sr} (give 4000 to 192000 Hz)")
    if args.workers < 1:
        problems.append(f"--workers {args.workers} (give 1 or more)")
    if problems:
        raise UserError("bad arguments: " + "; ".join(problems), "fix them (see --help)")


@entry_point
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Generate the SynthSing benchmark (mp4 clips + per-frame truth)."
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--clips", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--kind", choices=("singing", "talking", "mixed"), default="mixed")
    parser.add_argument("--size", type=int, default=64, help="frame size in px (even, 32-128)")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--fps", type=float, default=25)
    parser.add_argument("--sr", type=int, default=16000, help="audio sample rate")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--accompaniment",
        action="store_true",
        help="put a synthetic music bed (chords, bass, drums) under the voice; the clean voice "
        "goes to vocals/<clip_id>.wav",
    )
    parser.add_argument(
        "--vmr-db",
        type=float,
        default=0.0,
        help="voice-to-music power ratio in dB (with --accompaniment; lower = louder music)",
    )
    parser.add_argument(
        "--music-style",
        choices=(*MUSIC_STYLES, "mixed"),
        default="mixed",
        help="style of the music bed (mixed: drawn per clip)",
    )
    args = parser.parse_args(argv)
    check_arguments(args)
    fps = int(args.fps) if float(args.fps).is_integer() else args.fps
    records = generate_dataset(
        args.out,
        clips=args.clips,
        seed=args.seed,
        kind=args.kind,
        size=args.size,
        seconds=args.seconds,
        fps=fps,
        sample_rate=args.sr,
        workers=args.workers,
        accompaniment=args.accompaniment,
        vmr_db=args.vmr_db,
        music_style=args.music_style,
    )
    print(f"wrote {len(records)} clips to {args.out}")


if __name__ == "__main__":
    raise SystemExit(main())
