"""Ground-truth estimator: reads SynthSing face parameters back from decoded mp4 frames."""

import json

import numpy as np
import pytest

from singer.data import estimator as E
from singer.data import synth as S


def _pooled(folder, records, *, use_identity=True):
    """Truth and estimate per cue, pooled over clips (sway over singing clips only)."""
    truth = {name: [] for name in E.RETURNED_CUES}
    estimate = {name: [] for name in E.RETURNED_CUES}
    talking_sway = []
    for record in records:
        frames = E.read_frames(folder / record["file"])
        assert len(frames) == record["num_frames"]
        found = E.estimate_face_params(
            frames, identity=record["identity"] if use_identity else None
        )
        assert set(found) == set(E.RETURNED_CUES)
        for name in E.RETURNED_CUES:
            assert found[name].shape == (record["num_frames"],)
            if name == "sway" and record["kind"] == "talking":
                talking_sway.append(found[name])
                continue
            truth[name].append(record["truth"][name])
            estimate[name].append(found[name])
    pooled = {
        name: (np.concatenate(truth[name]), np.concatenate(estimate[name]))
        for name in E.RETURNED_CUES
    }
    return pooled, np.concatenate(talking_sway)


@pytest.fixture(scope="module")
def clips64(tmp_path_factory):
    out = tmp_path_factory.mktemp("est64")
    records = S.generate_dataset(out, clips=4, seed=11, size=64, seconds=3.0, progress=False)
    assert [r["kind"] for r in records] == ["singing", "talking", "singing", "talking"]
    return out, records


def test_recovers_every_cue_from_decoded_mp4_at_64px(clips64):
    pooled, talking_sway = _pooled(*clips64)
    for name in S.ESTIMATED_CUES:
        truth, estimate = pooled[name]
        assert np.all(np.isfinite(estimate)), name
        assert np.std(truth) > 0.05, f"{name}: truth barely varies, the check would be empty"
        r = E.pearson_r(truth, estimate)
        assert r >= 0.95, f"{name}: r={r:.3f}"
        assert np.mean(np.abs(truth - estimate)) < 0.08, name
    assert E.pearson_r(*pooled["nod"]) >= 0.9
    assert np.mean(np.abs(talking_sway)) < 0.05  # the head stays centred when nobody sings


def test_works_without_identity(clips64):
    pooled, _ = _pooled(*clips64, use_identity=False)
    for name in E.RETURNED_CUES:
        assert E.pearson_r(*pooled[name]) >= 0.95, name


@pytest.mark.parametrize(("size", "threshold"), [(32, 0.85), (128, 0.97)])
def test_other_sizes(tmp_path, size, threshold):
    records = S.generate_dataset(tmp_path, clips=2, seed=12, size=size, seconds=2.0, progress=False)
    pooled, _ = _pooled(tmp_path, records)
    for name in S.ESTIMATED_CUES:
        assert E.pearson_r(*pooled[name]) >= threshold, f"{name} at {size}px"


def test_exact_on_rendered_frames():
    """Without video coding in between, the measurement matches the drawn parameters closely."""
    rng = np.random.default_rng(0)
    speaker = S.sample_speaker(rng)
    params = {name: rng.uniform(0, 1, 60) for name in S.FACE_CUES}
    params["sway"] = rng.uniform(-1, 1, 60)
    found = E.estimate_face_params(
        S.render_face(params, speaker.identity, 64), identity=speaker.identity
    )
    for name in E.RETURNED_CUES:
        assert E.pearson_r(params[name], found[name]) > 0.99, name
        assert np.mean(np.abs(params[name] - found[name])) < 0.03, name


def test_frames_without_a_face_give_nan():
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, size=(3, 64, 64, 3), dtype=np.uint8)
    blank = np.full((3, 64, 64, 3), 90, dtype=np.uint8)
    for frames in (noise, blank):
        found = E.estimate_face_params(frames)
        assert all(
            found[name].shape == (3,) and np.all(np.isnan(found[name])) for name in E.RETURNED_CUES
        )
    # A face clip with one blank frame: only that frame is NaN.
    speaker = S.sample_speaker(rng)
    faces = S.render_face({name: np.full(4, 0.5) for name in S.FACE_CUES}, speaker.identity, 64)
    faces[2] = np.asarray(speaker.identity["background"], dtype=np.uint8)
    found = E.estimate_face_params(faces, identity=speaker.identity)
    assert np.isnan(found["mouth_open"][2]) and np.all(np.isfinite(found["mouth_open"][[0, 1, 3]]))
    assert E.estimate_face_params(np.zeros((0, 64, 64, 3), np.uint8))["brow"].shape == (0,)
    with pytest.raises(ValueError):
        E.estimate_face_params(np.zeros((2, 64, 48, 3), np.uint8))
    with pytest.raises(ValueError):
        E.estimate_face_params(np.zeros((64, 64, 3), np.uint8))


def test_cli_reports_and_writes_json(clips64, capsys):
    folder, _ = clips64
    E.main(["--data", str(folder)])
    printed = capsys.readouterr().out
    report = json.loads((folder / "estimator_check.json").read_text())
    assert report["clips"] == 4
    for name in S.ESTIMATED_CUES:
        assert report["cues"][name]["r"] >= 0.95 and name in printed
    assert report["cues"]["sway"]["frames"] == 2 * 75  # singing clips only
    assert report["sway_talking_mean_abs"] < 0.05
