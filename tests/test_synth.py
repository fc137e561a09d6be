"""SynthSing generator: determinism, file formats, metadata, and the designed singing/talking laws."""

import hashlib
import json
import math
import time

import numpy as np
import pytest
from scipy.ndimage import median_filter

from singer.data import synth as S

CLIPS, SECONDS, FPS, SR, SIZE, SEED = 4, 2.0, 25, 16000, 64, 3


def _hashes(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "a"
    records = S.generate_dataset(
        out,
        clips=CLIPS,
        seed=SEED,
        size=SIZE,
        seconds=SECONDS,
        fps=FPS,
        sample_rate=SR,
        progress=False,
    )
    return out, records


@pytest.fixture(scope="module")
def performances():
    """Three 4 s clips of each kind, in memory, for the statistics of the design."""
    rng = np.random.default_rng(2024)
    out = {"singing": [], "talking": []}
    for _ in range(3):
        speaker = S.sample_speaker(rng)
        for kind in out:
            _, _, record = S.synth_clip(
                rng, kind, size=32, seconds=4.0, fps=FPS, sample_rate=SR, speaker=speaker
            )
            out[kind].append({name: np.asarray(v) for name, v in record["truth"].items()})
    return out


def test_same_seed_gives_identical_bytes_also_with_workers(dataset, tmp_path):
    out, _ = dataset
    again = tmp_path / "b"
    S.generate_dataset(
        again,
        clips=CLIPS,
        seed=SEED,
        size=SIZE,
        seconds=SECONDS,
        fps=FPS,
        sample_rate=SR,
        workers=2,
        progress=False,
    )
    first, second = _hashes(out), _hashes(again)
    assert set(first) == {"meta.jsonl", "synth.json"} | {
        f"clips/clip{i:05d}.mp4" for i in range(CLIPS)
    }
    assert first.keys() == second.keys()
    differing = sorted(name for name in first if first[name] != second[name])
    assert not differing, f"files differ between two runs with the same seed: {differing}"


def test_different_seed_differs(dataset, tmp_path):
    out, records = dataset
    other = S.generate_dataset(
        tmp_path / "c", clips=2, seed=SEED + 1, size=SIZE, seconds=SECONDS, progress=False
    )
    assert other[0]["truth"]["pitch"] != records[0]["truth"]["pitch"]
    assert other[0]["identity"] != records[0]["identity"]
    a = (out / "clips/clip00000.mp4").read_bytes()
    b = (tmp_path / "c/clips/clip00000.mp4").read_bytes()
    assert hashlib.sha256(a).digest() != hashlib.sha256(b).digest()


def test_meta_records(dataset):
    out, records = dataset
    lines = (out / "meta.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == records
    num_frames = round(SECONDS * FPS)
    for index, record in enumerate(records):
        for key in (
            "clip_id",
            "file",
            "kind",
            "speaker_id",
            "identity",
            "fps",
            "sample_rate",
            "size",
            "num_frames",
            "seconds",
            "seed",
            "truth",
        ):
            assert key in record, key
        assert (out / record["file"]).is_file()
        assert record["kind"] == ("singing" if index % 2 == 0 else "talking")  # mixed alternates
        assert (record["fps"], record["sample_rate"], record["size"], record["seed"]) == (
            FPS,
            SR,
            SIZE,
            SEED,
        )
        assert record["num_frames"] == num_frames and math.isclose(record["seconds"], SECONDS)
        assert set(record["truth"]) == set(S.AUDIO_CAUSES + S.FACE_CUES)
        assert all(len(values) == num_frames for values in record["truth"].values())
        truth = {name: np.asarray(v) for name, v in record["truth"].items()}
        for name in ("mouth_open", "mouth_width", "brow", "eye_close", "nod"):
            assert truth[name].min() >= 0.0 and truth[name].max() <= 1.0, name
        assert np.abs(truth["sway"]).max() <= 1.0
        assert truth["loudness"].max() == 0.0 and truth["loudness"].min() >= S.SILENCE_DB
        assert set(np.unique(truth["onset"])) <= {0.0, 1.0} and truth["onset"].sum() >= 1
        assert np.all((truth["vibrato_phase"] >= -np.pi) & (truth["vibrato_phase"] < np.pi))
    # Two clips per speaker: each speaker sings once and talks once, with one identity.
    assert [r["speaker_id"] for r in records] == ["spk000", "spk000", "spk001", "spk001"]
    assert records[0]["identity"] == records[1]["identity"]
    assert records[0]["identity"] != records[2]["identity"]
    args = json.loads((out / "synth.json").read_text())
    assert args["clips"] == CLIPS and args["seed"] == SEED and args["num_speakers"] == 2


def test_mp4_streams_read_back_with_decord_and_pyav(dataset):
    import av
    import decord

    out, records = dataset
    num_frames = round(SECONDS * FPS)
    for record in records[:2]:
        path = str(out / record["file"])
        reader = decord.VideoReader(path)
        assert len(reader) == num_frames
        assert reader.get_avg_fps() == FPS
        assert reader[0].shape == (SIZE, SIZE, 3)
        audio = decord.AudioReader(path, sample_rate=SR, mono=True)
        samples = audio.shape[1]
        # AAC pads to whole 1024-sample frames: at least the clip, less than one AAC frame more.
        assert round(num_frames / FPS * SR) <= samples < round(num_frames / FPS * SR) + 1024

        with av.open(path) as container:
            video, sound = container.streams.video[0], container.streams.audio[0]
            assert video.codec_context.name == "h264" and sound.codec_context.name == "aac"
            assert video.average_rate == FPS
            assert sound.rate == SR and sound.codec_context.layout.nb_channels == 1
            assert abs(float(video.duration * video.time_base) - SECONDS) <= 1.0 / FPS
            decoded = sum(1 for _ in container.decode(video=0))
            assert decoded == num_frames
        with av.open(path) as container:
            audio_seconds = sum(frame.samples for frame in container.decode(audio=0)) / SR
            assert abs(audio_seconds - SECONDS) < 1024 / SR


def test_synth_clip_shapes_and_lengths():
    rng = np.random.default_rng(0)
    frames, audio, record = S.synth_clip(
        rng, "talking", size=32, seconds=1.3, fps=30, sample_rate=SR
    )
    num_frames = round(1.3 * 30)
    assert frames.shape == (num_frames, 32, 32, 3) and frames.dtype == np.uint8
    assert audio.shape == (round(num_frames / 30 * SR),) and audio.dtype == np.float32
    assert 0.1 < np.abs(audio).max() <= 0.5 + 1e-6  # peak-normalised with headroom, never clipping
    assert record["num_frames"] == num_frames
    for bad in (31, 16, 130):
        with pytest.raises(ValueError, match="size"):
            S.synth_clip(rng, "singing", size=bad, seconds=1.0)
    with pytest.raises(ValueError, match="kind"):
        S.synth_clip(rng, "whistling", size=32, seconds=1.0)


def test_talking_rate_and_no_vibrato(performances):
    for truth in performances["talking"]:
        onsets = np.flatnonzero(truth["onset"]) / FPS
        gaps = np.diff(onsets)
        within_phrases = gaps[gaps < 0.4]
        assert 4.0 <= 1.0 / np.median(within_phrases) <= 6.5  # 4–6 syllables per second
        assert np.all(truth["vibrato_phase"] == 0) and np.all(truth["sway"] == 0)
        assert truth["held"].max() <= 0.26 and truth["eye_close"].max() == 0  # no held notes
        assert 85 <= truth["pitch"].min() and truth["pitch"].max() <= 225


def test_singing_has_vibrato_held_notes_and_wider_dynamics(performances):
    def vibrato_share(pitch):
        cents = 1200 * np.log2(pitch)
        residual = cents - median_filter(cents, size=7, mode="nearest")  # around the melody
        power = np.abs(np.fft.rfft(residual * np.hanning(len(residual)), 256)) ** 2
        freqs = np.fft.rfftfreq(256, d=1.0 / FPS)
        return power[(freqs >= 4) & (freqs <= 8)].sum() / power[1:].sum()

    def voiced_range(truth):
        level = truth["loudness"][truth["held"] > 0]
        return np.percentile(level, 95) - np.percentile(level, 5)

    sing, talk = performances["singing"], performances["talking"]
    assert min(vibrato_share(t["pitch"]) for t in sing) > max(
        vibrato_share(t["pitch"]) for t in talk
    )
    assert np.median([voiced_range(t) for t in sing]) > np.median([voiced_range(t) for t in talk])
    for truth in sing:
        assert 170 <= truth["pitch"].min() and truth["pitch"].max() <= 640
        assert np.abs(truth["sway"]).max() > 0.5
    assert max(t["held"].max() for t in sing) > 1.0
    assert max(t["eye_close"].max() for t in sing) > 0.5  # eyes close on long notes


def test_face_follows_the_laws_smoothly(performances):
    everything = performances["singing"] + performances["talking"]
    loud = np.concatenate([t["loudness"] for t in everything])
    mouth = np.concatenate([t["mouth_open"] for t in everything])
    assert np.corrcoef(loud, mouth)[0, 1] > 0.5
    for truth in performances["talking"]:
        assert np.corrcoef(np.log(truth["pitch"]), truth["brow"])[0, 1] > 0.8
        assert np.corrcoef(truth["f2"], truth["mouth_width"])[0, 1] > 0.7
    for truth in everything:
        frames = np.flatnonzero(truth["onset"])
        frames = frames[frames + 2 < len(truth["nod"])]
        assert (
            truth["nod"][frames + 2].mean() > truth["nod"][frames].mean() + 0.1
        )  # a bump after onsets
        for name in ("mouth_open", "mouth_width", "brow", "eye_close", "nod"):
            assert np.abs(np.diff(truth[name])).max() < 0.6, name  # no jumps a face could not make
    for truth in performances["singing"]:
        gate = np.abs(truth["sway"]) > 0.05
        expected = np.sin(truth["vibrato_phase"][gate])
        assert np.all(np.sign(truth["sway"][gate]) == np.sign(expected))


def test_identities_vary_and_render_fast():
    rng = np.random.default_rng(5)
    speakers = [S.sample_speaker(rng, f"spk{i}") for i in range(6)]
    for key in ("skin", "hair", "background", "face_rx", "face_ry"):
        assert len({json.dumps(s.identity[key]) for s in speakers}) == 6, key
    assert len({s.voice["formant_scale"] for s in speakers}) == 6
    rest = {name: np.zeros(1) for name in S.FACE_CUES}
    faces = [S.render_face(rest, s.identity, 64)[0] for s in speakers]
    assert all(np.abs(faces[0].astype(int) - f.astype(int)).mean() > 5 for f in faces[1:])

    params = {name: rng.uniform(0, 1, 100) for name in S.FACE_CUES}
    params["sway"] = rng.uniform(-1, 1, 100)
    start = time.perf_counter()
    frames = S.render_face(params, speakers[0].identity, 64)
    assert time.perf_counter() - start < 2.0
    assert frames.shape == (100, 64, 64, 3) and frames.dtype == np.uint8
    # The face moves with sway: the left half of the frame changes between extreme sways.
    still = {name: np.zeros(2) for name in S.FACE_CUES}
    swayed = S.render_face({**still, "sway": np.array([-1.0, 1.0])}, speakers[0].identity, 64)
    assert np.abs(swayed[0].astype(int) - swayed[1].astype(int)).sum() > 1000


def test_cli_writes_outputs(tmp_path):
    S.main(
        [
            "--out",
            str(tmp_path / "cli"),
            "--clips",
            "1",
            "--seed",
            "0",
            "--kind",
            "talking",
            "--size",
            "32",
            "--seconds",
            "0.4",
        ]
    )
    records = [json.loads(line) for line in (tmp_path / "cli/meta.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["kind"] == "talking" and records[0]["num_frames"] == 10
    assert (tmp_path / "cli/clips/clip00000.mp4").stat().st_size > 0
    assert json.loads((tmp_path / "cli/synth.json").read_text())["kind"] == "talking"
