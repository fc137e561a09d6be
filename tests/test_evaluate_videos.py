"""``python -m singer.evaluate videos``: any system's mp4s scored with the harness's protocol, and a
self-check of the instrument on held-out SynthSing clips.

- the true videos (a perfect system) score ``motion/mouth_open_r`` near 1, with a CI excluding 0;
- a still reference frame scores near 0, with a CI covering 0;
- the true videos swapped between clips (of other speakers) score near 0, with a CI covering 0.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from singer.data.media import read_audio, read_video, write_mp4
from singer.data.synth import generate_dataset
from singer.evaluate import main
from singer.evaluation.units import derangement

METRICS = ["--set", "metrics=[motion_fidelity,ssim]", "--set", "bootstrap=500"]


@pytest.fixture(scope="module")
def truth(tmp_path_factory) -> Path:
    """16 clips of 8 speakers, 2 s at 48 px: the SynthSing folder the videos are scored against."""
    root = tmp_path_factory.mktemp("videos-truth") / "synthsing"
    generate_dataset(root, clips=16, seed=5, kind="mixed", size=48, seconds=2.0, progress=False)
    return root


def _records(truth: Path) -> list[dict]:
    return [json.loads(line) for line in (truth / "meta.jsonl").read_text().splitlines() if line]


def _score(gen: Path, truth: Path, out: Path, *extra: str, capsys) -> tuple[int, dict, str]:
    code = main(
        [
            "videos",
            str(gen),
            "--truth",
            str(truth),
            "--out",
            str(out),
            *METRICS,
            "--no-mlflow",
            "--no-progress",
            *extra,
        ]
    )
    err = capsys.readouterr().err
    data = json.loads((out / "metrics.json").read_text()) if code == 0 else {}
    return code, data, err


def _interval(data: dict, key: str) -> tuple[float, float, float, int]:
    lo, hi = data["ci"][key]
    return data["metrics"][key], lo, hi, data["n"][key]


def test_perfect_still_and_swapped_systems(truth, tmp_path, capsys):
    perfect = tmp_path / "perfect"
    shutil.copytree(truth / "clips", perfect)
    code, data, err = _score(perfect, truth, tmp_path / "out-perfect", capsys=capsys)
    assert code == 0, err
    value, lo, hi, n = _interval(data, "motion/mouth_open_r")
    assert n == 8 and data["unit"] == "speakers" and value > 0.9 and lo > 0.5, (value, lo, hi)
    assert data["source"] == "videos" and len(data["clips"]) == 16

    still = tmp_path / "still"
    still.mkdir()
    for record in _records(truth):
        path = truth / record["file"]
        frames, _ = read_video(path, fps=25)
        audio = read_audio(path, 16000, num_samples=record["num_samples"])
        write_mp4(still / path.name, np.repeat(frames[:1], len(frames), axis=0), 25, audio, 16000)
    code, data, err = _score(still, truth, tmp_path / "out-still", capsys=capsys)
    assert code == 0, err
    value, lo, hi, n = _interval(data, "motion/mouth_open_r")
    assert n == 8 and abs(value) < 0.15 and lo <= 0.0 <= hi, (value, lo, hi)

    swapped = tmp_path / "swapped"
    swapped.mkdir()
    records = _records(truth)
    order = derangement([r["speaker_id"] for r in records], seed=1)
    for record, other in zip(records, order):
        shutil.copy(truth / records[other]["file"], swapped / Path(record["file"]).name)
    code, data, err = _score(swapped, truth, tmp_path / "out-swapped", capsys=capsys)
    assert code == 0, err
    value, lo, hi, n = _interval(data, "motion/mouth_open_r")
    assert n == 8 and abs(value) < 0.25 and lo <= 0.0 <= hi, (value, lo, hi)


def test_missing_extra_unreadable_and_wrong_length_videos_get_a_line_each(truth, tmp_path, capsys):
    gen = tmp_path / "gen"
    shutil.copytree(truth / "clips", gen)
    names = sorted(p.name for p in gen.iterdir())
    (gen / names[0]).unlink()  # missing
    (gen / names[1]).write_bytes(b"not a video at all")  # unreadable
    frames, _ = read_video(truth / "clips" / names[2], fps=25)
    write_mp4(gen / names[2], frames[:30], 25)  # wrong length (30 of 50 frames)
    shutil.copy(truth / "clips" / names[3], gen / "stranger.mp4")  # extra
    code, data, err = _score(gen, truth, tmp_path / "out", capsys=capsys)
    assert code == 0, err
    assert f"{names[0]}: missing" in err
    assert f"{names[1]}: error — unreadable video" in err
    assert f"{names[2]}: error — wrong length: 30 frames" in err
    assert "stranger.mp4: extra" in err
    assert len(data["clips"]) == 13  # the other 13 are scored
    assert any("stranger.mp4" in note for note in data["notes"])


def test_reencode_reports_how_far_each_metric_moves(truth, tmp_path, capsys):
    gen = tmp_path / "gen"
    gen.mkdir()
    for path in sorted((truth / "clips").iterdir())[:6]:
        shutil.copy(path, gen / path.name)
    code, data, err = _score(gen, truth, tmp_path / "out", "--reencode", "40", capsys=capsys)
    assert code == 0, err
    delta, lo, hi, n = _interval(data, "reencode/crf40/ssim")
    assert delta < 0 and n >= 2  # a heavy re-encode loses detail: SSIM drops
    assert "reencode/crf40/motion/mouth_open_r" in data["metrics"]


def test_request_errors_exit_2(truth, tmp_path, capsys):
    assert (
        main(
            [
                "videos",
                str(tmp_path / "nowhere"),
                "--truth",
                str(truth),
                "--out",
                str(tmp_path / "o"),
                "--no-mlflow",
            ]
        )
        == 2
    )
    assert "is not a folder of generated videos" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (
        main(
            [
                "videos",
                str(empty),
                "--truth",
                str(tmp_path),
                "--out",
                str(tmp_path / "o"),
                "--no-mlflow",
            ]
        )
        == 2
    )
    assert "neither a SynthSing folder" in capsys.readouterr().err
