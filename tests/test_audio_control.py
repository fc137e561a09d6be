"""The audio control: the same model, clips and noise given its true audio, another held-out
speaker's audio (a derangement) and silence. ``audio_effect/<cue>`` is what the audio adds.

Two toy models render SynthSing faces with the clip's own identity (``Conditions.extras``):
one drives the mouth from the loudness of the audio it is given, one from a fixed wave that
ignores the audio. The first must show a resolved mouth effect, the second an interval that
covers 0. Plus the statistics underneath: derangements, unit intervals, paired differences.
"""

import numpy as np
import pytest
import torch
from torch import nn

from singer.config import compose
from singer.data import synth as S
from singer.data.identity import identity_dict
from singer.evaluation import EvalProtocol, evaluate_loaded
from singer.evaluation.units import (
    Interval,
    derangement,
    paired_difference,
    unit_interval,
)
from singer.inference import LoadedModel
from singer.models.spec import ModelSpec

SR, FPS = 16000, 25


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))


def _render(conditions, mouth: np.ndarray) -> torch.Tensor:
    """Faces of each clip's identity with ``mouth`` (B×F) opening, the rest at rest: B×3×F×H×W."""
    identity = conditions.extras["identity"]
    size = conditions.ref.shape[-1]
    clips = []
    for i in range(mouth.shape[0]):
        params = {cue: np.zeros(mouth.shape[1]) for cue in S.FACE_CUES}
        params["mouth_open"] = mouth[i]
        frames = S.render_face(params, identity_dict(identity[i].cpu().numpy()), size)
        clips.append(torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1.0)
    return torch.stack(clips)


def sample_listening(model, conditions, *, steps, guidance_scale, generator):
    """Mouth opening = the audio's loudness per frame, the law SynthSing's faces follow."""
    wav = conditions.audio.double().cpu().numpy()
    frames = conditions.num_frames
    per_frame = wav[:, : frames * (SR // FPS)].reshape(wav.shape[0], frames, -1)
    db = 10 * np.log10((per_frame**2).mean(axis=2) + 1e-10)
    level = np.clip((db - db.max(axis=1, keepdims=True) + 40.0) / 40.0, 0.0, 1.0)
    return _render(conditions, level)


def sample_blind(model, conditions, *, steps, guidance_scale, generator):
    """A moving mouth that follows a fixed wave, whatever the audio."""
    frames = conditions.num_frames
    wave = 0.5 + 0.4 * np.sin(np.arange(frames) / 2.0)
    return _render(conditions, np.repeat(wave[None], conditions.audio.shape[0], axis=0))


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    root = tmp_path_factory.mktemp("control-synthsing")
    return compose(
        [
            "trainer=cpu_tiny",
            "trainer.num_frames=25",
            "trainer.size=48",
            "data.synth.clips=12",
            "data.synth.seconds=2.0",
            "data.synth.kind=singing",
            "data.synth.size=48",
            "data.val_fraction=0.6",
            f"data.root={root}",
        ]
    )


def _evaluate(cfg, sample):
    spec = ModelSpec(name="toy", build=lambda cfg: Toy(), sample=sample)
    loaded = LoadedModel(Toy(), spec, cfg, step=0, device=torch.device("cpu"))
    protocol = EvalProtocol(
        num_clips=12, steps=1, batch_size=4, bootstrap=500, metrics=["motion_fidelity"]
    )
    return evaluate_loaded(loaded, protocol=protocol, split="val", progress=False)


def test_a_listening_model_has_a_resolved_mouth_effect(cfg):
    result = _evaluate(cfg, sample_listening)
    effect = result.interval("audio_effect/mouth_open")
    assert effect.n >= 3 and effect.unit == "speakers"
    assert effect.resolved and effect.estimate > 0.3, effect.format()
    assert result.metrics["motion/mouth_open_r"] > 0.5
    # Silence gives a closed mouth, which follows none of the true loudness.
    assert result.interval("audio_effect_vs_silence/mouth_open").resolved
    assert set(result.units["audio_effect/mouth_open"]) == set(result.unit_of_clip.values())


def test_a_model_that_ignores_its_audio_has_an_effect_whose_ci_covers_0(cfg):
    result = _evaluate(cfg, sample_blind)
    effect = result.interval("audio_effect/mouth_open")
    assert effect.n >= 3
    assert effect.lo <= 0.0 <= effect.hi and not effect.resolved, effect.format()
    assert effect.verdict == "tie"


# -- the statistics underneath ---------------------------------------------------------------
def test_derangement_moves_every_item_to_another_speaker():
    groups = ["a", "a", "b", "b", "c", "c", "d"]
    p = derangement(groups, seed=3)
    assert sorted(p) == list(range(len(groups)))
    assert all(groups[p[i]] != groups[i] for i in range(len(groups)))
    assert p == derangement(groups, seed=3)  # fixed by the seed
    one = derangement(["a", "a", "a"], seed=0)  # one speaker: another clip of it
    assert all(one[i] != i for i in range(3))
    with pytest.raises(ValueError):
        derangement(["a"])


def test_intervals_resample_units_and_report_their_count():
    units = {f"s{i}": v for i, v in enumerate([0.5, 0.6, 0.4, 0.55, 0.45])}
    interval = unit_interval(units, n_boot=500)
    assert interval.n == 5 and interval.lo < 0.5 < interval.hi and interval.resolved
    assert "(n=5 speakers)" in interval.format()
    single = unit_interval({"s0": 0.9})
    assert single.n == 1 and not single.resolved and "no interval" in single.format()


def test_paired_difference_pairs_by_seed_and_unit():
    """A constant shift is resolved even when units differ wildly (pairing removes them); noise
    around 0 is a tie. Seeds are resampled too: a sign flip between seeds widens the interval."""
    rng = np.random.default_rng(0)
    base = {s: {f"u{i}": rng.normal(0, 1) for i in range(8)} for s in range(3)}
    shifted = {s: {u: v + 0.2 for u, v in base[s].items()} for s in base}
    interval, spread = paired_difference(shifted, base, n_boot=500)
    assert interval.resolved and interval.estimate == pytest.approx(0.2) and interval.n == 8
    assert spread == pytest.approx(0.0, abs=1e-12)
    noisy = {s: {u: v + rng.normal(0, 0.2) for u, v in base[s].items()} for s in base}
    tie, _ = paired_difference(noisy, base, n_boot=500)
    assert isinstance(tie, Interval) and not tie.resolved and tie.verdict == "tie"
    flip = {s: {u: v + (0.3 if s == 0 else -0.3) for u, v in base[s].items()} for s in base}
    wide, seed_sd = paired_difference(flip, base, n_boot=500)
    assert seed_sd > 0.3 and not wide.resolved
