"""Ingestion of a mixed folder of videos into cached clips (singer.data.prepare)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from singer.data.media import write_mp4
from singer.data.prepare import FaceDetector, prepare_folder, run_tasks, square_crop_box
from test_media import frame_ids, indexed_frames, peak_hz, tone, vfr_times, write_av

CUES = ("mouth_open", "mouth_width", "brow", "sway", "eye_close", "nod")
SETTINGS = dict(
    size=32, fps=25, sample_rate=16000, clip_seconds=2.0, min_seconds=1.0, progress=False
)

# Long file: each 2 s stretch has its own tone, so a clip's audio shows where it was cut from.
LONG_TONES = (300, 500, 700, 900, 1100)


def make_source_folder(src: Path) -> dict[str, str]:
    """Good files of many shapes and rates, broken files, and a SynthSing-style meta.jsonl.

    Returns {relative path: expected reason} for the files that must be skipped.
    """
    write_mp4(src / "good25.mp4", indexed_frames(50), 25, tone(440, 2, 16000), 16000)
    # Landscape 96×48 at 30 fps with 44.1 kHz stereo audio.
    stereo = np.stack([tone(660, 2, 44100), tone(660, 2, 44100, 0.2)])
    write_av(
        src / "sub" / "landscape30.mp4",
        indexed_frames(60, 48, 96),
        np.arange(60) / 30,
        stereo,
        44100,
    )
    # Portrait 48×96 at 60 fps with 8 kHz mono audio, 1.5 s.
    write_av(
        src / "portrait60.mov",
        indexed_frames(90, 96, 48),
        np.arange(90) / 60,
        tone(550, 1.5, 8000)[None],
        8000,
    )
    # 24 fps in a Matroska container, 48 kHz.
    write_av(
        src / "film24.mkv",
        indexed_frames(36),
        np.arange(36) / 24,
        tone(350, 1.5, 48000)[None],
        48000,
    )
    # Variable frame rate.
    times = vfr_times(40)
    write_av(
        src / "vfr.mp4", indexed_frames(40), times, tone(400, times[-1] + 0.06, 22050)[None], 22050
    )
    # 9.52 s: four 2 s clips and a 1.52 s tail (kept, as it is ≥ min_seconds).
    long_audio = np.concatenate([tone(f, 2, 16000) for f in LONG_TONES])[: int(9.5 * 16000)]
    long_frames = np.repeat(indexed_frames(5), [50, 50, 50, 50, 38], axis=0)  # colour = segment
    write_mp4(src / "long.mp4", long_frames, 25, long_audio, 16000)
    # A SynthSing-style clip with per-frame truth in meta.jsonl (3 s: one 2 s clip + a 1 s tail).
    write_mp4(
        src / "synth" / "clips" / "s0.mp4", indexed_frames(75), 25, tone(480, 3, 16000), 16000
    )
    truth = {cue: [round(k * 0.01 + j, 4) for j in range(75)] for k, cue in enumerate(CUES)}
    truth["loudness"] = [0.5] * 75
    record = {
        "file": "clips/s0.mp4",
        "clip_id": "s0",
        "kind": "singing",
        "speaker_id": 3,
        "fps": 25,
        "num_frames": 75,
        "truth": truth,
    }
    (src / "synth" / "meta.jsonl").write_text(json.dumps(record) + "\n")

    # A video without an extension is recognised by its content; an audio file is not a video.
    (src / "recording").write_bytes((src / "good25.mp4").read_bytes())
    write_av(src / "song.m4a", None, None, tone(440, 1, 16000)[None])
    # Audio that stops halfway: kept, padded with silence, with a note.
    write_mp4(src / "shortaudio.mp4", indexed_frames(50), 25, tone(440, 1, 16000), 16000)

    # Broken inputs.
    good = (src / "good25.mp4").read_bytes()
    (src / "truncated.mp4").write_bytes(good[: len(good) // 2])
    write_mp4(src / "silent.mp4", indexed_frames(50), 25)
    (src / "notavideo.mp4").write_text("this is a text file with a video name\n" * 5)
    write_mp4(src / "oneframe.mp4", indexed_frames(1), 25, tone(440, 0.04, 16000), 16000)
    (src / "empty.mp4").touch()
    write_av(src / "bad" / "audio_only.mp4", None, None, tone(440, 1, 16000)[None])
    (src / "readme.txt").write_text("not a video, and named like it")
    return {
        "truncated.mp4": "corrupt",
        "silent.mp4": "no audio track",
        "notavideo.mp4": "not a media file",
        "oneframe.mp4": "too short",
        "empty.mp4": "zero-length file",
        "bad/audio_only.mp4": "no video stream",
    }


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The mixed folder prepared once with one worker (face detection on, as by default)."""
    root = tmp_path_factory.mktemp("prepare")
    expected_skips = make_source_folder(root / "src")
    report = prepare_folder(root / "src", root / "cache", workers=1, **SETTINGS)
    return root, report, expected_skips


def read_index_lines(cache: Path) -> list[dict]:
    return [json.loads(line) for line in (cache / "index.jsonl").read_text().splitlines()]


def test_every_file_is_accounted_for(prepared):
    root, report, expected_skips = prepared
    files = {entry["path"]: entry for entry in report["files"]}
    good = {
        "good25.mp4",
        "sub/landscape30.mp4",
        "portrait60.mov",
        "film24.mkv",
        "vfr.mp4",
        "long.mp4",
        "synth/clips/s0.mp4",
        "shortaudio.mp4",
        "recording",
    }
    assert set(files) == good | set(expected_skips)
    for path in good:
        assert files[path]["status"] == "ok", files[path]
    for path, reason in expected_skips.items():
        assert files[path]["status"] == "skipped" and reason in files[path]["reason"], files[path]
        assert files[path]["clips"] == 0
    assert sorted(report["ignored"]) == ["readme.txt", "song.m4a", "synth/meta.jsonl"]
    assert report["counts"]["ok"] == len(good) and report["counts"]["skipped"] == len(
        expected_skips
    )
    # The synthetic frames hold no face: centre crop, with a note saying so.
    if report["settings"]["face_detector"]:
        assert "no face found; centre crop" in files["good25.mp4"]["notes"]
    assert any("variable frame rate" in note for note in files["vfr.mp4"]["notes"])
    assert any("padded with silence" in note for note in files["shortaudio.mp4"]["notes"])
    on_disk = json.loads((root / "cache" / "report.json").read_text())
    assert on_disk["files"] == report["files"]
    assert (root / "cache" / "prepare.json").is_file()


def test_clips_have_exact_shapes_audio_and_crops(prepared):
    root, report, _ = prepared
    cache = root / "cache"
    index = read_index_lines(cache)
    by_source: dict[str, list[dict]] = {}
    for entry in index:
        by_source.setdefault(entry["source"], []).append(entry)
    expected_frames = {
        "good25.mp4": [50],
        "sub/landscape30.mp4": [50],
        "portrait60.mov": [37],
        "film24.mkv": [37],
        "long.mp4": [50, 50, 50, 50, 38],
        "synth/clips/s0.mp4": [50, 25],
    }
    for source, counts in expected_frames.items():
        assert [e["num_frames"] for e in by_source[source]] == counts, source
    assert len(by_source["vfr.mp4"]) == 1
    assert len(index) == report["counts"]["clips"] == len(list((cache / "clips").glob("*.npz")))

    for entry in index:
        with np.load(cache / entry["file"]) as data:
            frames, audio = data["frames"], data["audio"]
        assert frames.shape == (entry["num_frames"], 32, 32, 3) and frames.dtype == np.uint8
        assert audio.dtype == np.float32 and audio.shape == (entry["num_frames"] * 640,)
        assert entry["num_samples"] == len(audio)
        assert entry["kind"] == ("singing" if entry["source"].startswith("synth/") else "unknown")

    # Landscape and portrait sources are centre-cropped to their largest square.
    assert by_source["sub/landscape30.mp4"][0]["crop"] == [24, 0, 48, 48]
    assert by_source["portrait60.mov"][0]["crop"] == [0, 24, 48, 48]
    with np.load(cache / by_source["shortaudio.mp4"][0]["file"]) as data:
        assert (
            data["audio"].shape == (32000,)
            and not data["audio"][17000:].any()
            and data["audio"][:15000].any()
        )
    assert square_crop_box(96, 48) == (24, 0, 48, 48)


def test_long_file_is_cut_with_aligned_audio_and_video(prepared):
    root, _, _ = prepared
    cache = root / "cache"
    clips = [e for e in read_index_lines(cache) if e["source"] == "long.mp4"]
    assert [e["segment"] for e in clips] == [0, 1, 2, 3, 4]
    assert [e["start_s"] for e in clips] == [0.0, 2.0, 4.0, 6.0, 8.0]
    for entry, freq in zip(clips, LONG_TONES):
        with np.load(cache / entry["file"]) as data:
            # Each clip carries the tone of its own 2 s stretch, and every frame shows its segment.
            assert peak_hz(data["audio"][800:-800], 16000) == pytest.approx(freq, abs=10)
            assert (frame_ids(data["frames"]) == entry["segment"]).all()


def test_resampled_frames_follow_source_timestamps(prepared):
    root, _, _ = prepared
    cache = root / "cache"
    entry = next(e for e in read_index_lines(cache) if e["source"] == "sub/landscape30.mp4")
    with np.load(cache / entry["file"]) as data:
        ids, audio = frame_ids(data["frames"]), data["audio"]
    np.testing.assert_array_equal(ids, np.round(np.arange(50) * 30 / 25))
    assert peak_hz(audio, 16000) == pytest.approx(660, abs=3)


def test_synthsing_truth_is_carried_into_the_index(prepared):
    root, _, _ = prepared
    clips = [e for e in read_index_lines(root / "cache") if e["source"] == "synth/clips/s0.mp4"]
    assert [e["speaker_id"] for e in clips] == [3, 3]
    for entry, first in zip(clips, (0, 50)):
        assert set(entry["truth"]) == set(CUES) | {"loudness"}
        for k, cue in enumerate(CUES):
            expected = [round(k * 0.01 + j, 4) for j in range(first, first + entry["num_frames"])]
            assert entry["truth"][cue] == pytest.approx(expected)


def test_rerun_reuses_and_force_redoes(prepared, tmp_path):
    root, first_report, _ = prepared
    src, cache = root / "src", tmp_path / "cache"
    # Work on a copy of the cache so the other tests keep theirs.
    import shutil

    shutil.copytree(root / "cache", cache)
    files = sorted((cache / "clips").glob("*.npz")) + sorted((cache / "records").glob("*.json"))
    before = {path: path.stat().st_mtime_ns for path in files}
    # A copied cache keeps its records' source fingerprints, so everything is reused.
    again = prepare_folder(src, cache, workers=1, **SETTINGS)
    assert again["counts"]["cached"] == again["counts"]["files"] == first_report["counts"]["files"]
    assert {path: path.stat().st_mtime_ns for path in files} == before
    assert read_index_lines(cache) == read_index_lines(root / "cache")

    # Touching one source redoes only that file.
    good = src / "good25.mp4"
    stamp = good.stat()
    os.utime(good, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))
    try:
        partial = prepare_folder(src, cache, workers=1, **SETTINGS)
    finally:
        os.utime(good, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    redone = [f["path"] for f in partial["files"] if not f["cached"]]
    assert redone == ["good25.mp4"]

    forced = prepare_folder(src, cache, workers=1, force=True, **SETTINGS)
    assert forced["counts"]["cached"] == 0
    clips = sorted((cache / "clips").glob("*.npz"))
    assert all(path.stat().st_mtime_ns > before.get(path, 0) for path in clips)
    assert read_index_lines(cache) == read_index_lines(root / "cache")


def test_two_workers_give_the_same_index(prepared, tmp_path):
    root, _, _ = prepared
    report = prepare_folder(root / "src", tmp_path / "cache", workers=2, **SETTINGS)
    assert report["files"] == [
        dict(f) for f in json.loads((root / "cache" / "report.json").read_text())["files"]
    ]
    index = read_index_lines(tmp_path / "cache")
    assert index == read_index_lines(root / "cache")
    for entry in index[:3]:
        with (
            np.load(tmp_path / "cache" / entry["file"]) as ours,
            np.load(root / "cache" / entry["file"]) as theirs,
        ):
            np.testing.assert_array_equal(ours["frames"], theirs["frames"])
            np.testing.assert_array_equal(ours["audio"], theirs["audio"])


def exit_on_crash_task(task: dict) -> dict:
    """A worker that dies like a segfaulting decoder on the task marked "crash"."""
    if task["rel"] == "crash":
        os._exit(3)
    return {"path": task["rel"], "status": "ok", "clips": []}


def test_a_crashing_worker_does_not_stop_the_batch(tmp_path):
    from singer.data.prepare import Settings

    tasks = [
        {
            "path": str(tmp_path / name),
            "rel": name,
            "out": str(tmp_path),
            "settings": Settings(),
            "meta_record": None,
            "previous_files": [],
        }
        for name in ("a", "crash", "b", "c")
    ]
    for task in tasks:
        Path(task["path"]).write_text("x")
    results = {}
    run_tasks(
        tasks,
        workers=2,
        on_done=lambda task, record: results.update({task["rel"]: record}),
        worker=exit_on_crash_task,
    )
    assert set(results) == {"a", "crash", "b", "c"}
    assert results["crash"]["status"] == "skipped" and "crashed" in results["crash"]["reason"]
    assert all(results[name]["status"] == "ok" for name in ("a", "b", "c"))


def test_require_face_skips_faceless_videos(tmp_path):
    if FaceDetector().backend is None:
        pytest.skip("no face detector installed")
    write_mp4(tmp_path / "src" / "a.mp4", indexed_frames(30), 25, tone(440, 1.2, 16000), 16000)
    report = prepare_folder(tmp_path / "src", tmp_path / "cache", require_face=True, **SETTINGS)
    assert (
        report["files"][0]["status"] == "skipped"
        and report["files"][0]["reason"] == "no face found"
    )
    assert not list((tmp_path / "cache" / "clips").glob("*.npz"))
    with pytest.raises(ValueError, match="require_face"):
        prepare_folder(
            tmp_path / "src",
            tmp_path / "cache",
            require_face=True,
            detect_faces=False,
            progress=False,
        )


def test_face_detection_crops_around_the_face(tmp_path):
    skimage_data = pytest.importorskip("skimage.data")
    if FaceDetector().backend is None:
        pytest.skip("no face detector installed")
    import cv2

    # A real photograph (bundled with scikit-image), off-centre in a wide 320×192 frame.
    face = cv2.resize(skimage_data.astronaut(), (192, 192), interpolation=cv2.INTER_AREA)
    frame = np.zeros((192, 320, 3), dtype=np.uint8)
    frame[:, 120:312] = face
    write_mp4(
        tmp_path / "src" / "face.mp4",
        np.repeat(frame[None], 30, axis=0),
        25,
        tone(440, 1.2, 16000),
        16000,
    )
    report = prepare_folder(tmp_path / "src", tmp_path / "cache", **{**SETTINGS, "size": 48})
    assert report["files"][0]["status"] == "ok" and report["files"][0]["notes"] == []
    (entry,) = read_index_lines(tmp_path / "cache")
    x, y, width, height = entry["crop"]
    assert entry["face"] and width == height
    # The astronaut's face sits around x≈120+83, y≈43 in the frame (from the photograph's layout).
    assert x <= 203 <= x + width and y <= 43 <= y + height
    assert width < 192  # tighter than the centre crop
    assert (x, y, width) != square_crop_box(320, 192)[:3]


def test_command_line(tmp_path):
    src = tmp_path / "videos"
    write_mp4(src / "clip.mp4", indexed_frames(30), 25, tone(440, 1.2, 16000), 16000)
    (src / "broken.mp4").write_text("not a video")
    command = [
        sys.executable,
        "-m",
        "singer.data.prepare",
        "--src",
        str(src),
        "--out",
        str(tmp_path / "cache"),
        "--size",
        "16",
        "--no-detect",
        "--quiet",
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1]
    )
    assert done.returncode == 0, done.stderr
    assert (
        "1 ok, 1 skipped" in done.stdout and str(tmp_path / "cache" / "report.json") in done.stdout
    )
    assert len(read_index_lines(tmp_path / "cache")) == 1

    missing = subprocess.run(
        command[:4] + [str(tmp_path / "nope")] + command[5:],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[1],
    )
    assert missing.returncode == 2 and "is not a folder" in missing.stderr


def test_speakers_come_from_a_sidecar_or_a_pattern_and_splits_keep_them_apart(tmp_path):
    """Two videos per person in one folder each: the pattern (or a sidecar) names the speaker,
    the split never puts one speaker on both sides, and re-labelling needs no re-decoding."""
    from singer.data.dataset import ClipDataset, read_index
    from singer.data.prepare import main

    src = tmp_path / "src"
    people = [f"person{i}" for i in range(6)]
    for person in people:
        for take in (1, 2):
            path = src / person / f"take{take}.mp4"
            write_mp4(path, indexed_frames(30), 25, tone(440, 1.2, 16000), 16000)
    out = tmp_path / "cache"
    args = ["--src", str(src), "--out", str(out), "--size", "32", "--no-detect", "--quiet"]
    assert main([*args, "--speaker-pattern", "^(?P<speaker>[^/]+)/"]) == 0
    speakers = {r["source"]: r["speaker_id"] for r in read_index(out)}
    assert speakers == {f"{p}/take{t}.mp4": p for p in people for t in (1, 2)}
    assert json.loads((out / "report.json").read_text())["counts"]["speakers"] == 6

    train = ClipDataset(out, split="train", num_frames=8, val_fraction=0.3, test_fraction=0.2)
    held = {
        split: {
            c["speaker_id"]
            for c in ClipDataset(
                out, split=split, num_frames=8, val_fraction=0.3, test_fraction=0.2
            ).clips
        }
        for split in ("val", "test")
    }
    trained = {c["speaker_id"] for c in train.clips}
    assert held["val"] and held["test"] and trained
    assert (
        not trained & held["val"] and not trained & held["test"] and not held["val"] & held["test"]
    )

    # A sidecar (by file stem or path) re-labels the finished cache: nothing is decoded again.
    (src / "speakers.csv").write_text(
        "path,speaker\nperson0/take1.mp4,alice\nperson0/take2.mp4,alice\n"
    )
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["cached"] == 12
    labels = {r["source"]: r["speaker_id"] for r in read_index(out)}
    assert labels["person0/take1.mp4"] == "alice" and labels["person1/take1.mp4"] is None

    (tmp_path / "bad.csv").write_text("only-one-column\n")
    assert main([*args, "--speakers", str(tmp_path / "bad.csv")]) == 2
