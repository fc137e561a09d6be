"""ClipDataset over a prepared cache: shapes, alignment, determinism, split, cues, DataLoader."""

import json
import pickle

import numpy as np
import pytest
import torch

from singer.data.dataset import (
    ClipDataset,
    collate,
    face_cue_names,
    load_clip,
    read_index,
    clip_group,
    split_groups,
)
from singer.data.media import write_mp4
from singer.data.prepare import prepare_folder
from test_media import frame_ids, indexed_frames


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Four sources (one with SynthSing truth), cut into 2 s clips of 32 px at 25 fps."""
    root = tmp_path_factory.mktemp("dataset")
    src = root / "src"
    lengths = {"a.mp4": 50, "b.mp4": 75, "c.mp4": 40, "d.mp4": 30}
    for index, (name, count) in enumerate(lengths.items()):
        # Audio is a ramp over the whole file, so any slice shows where it was taken from.
        ramp = np.linspace(-0.5, 0.5, count * 640, dtype=np.float32) * (1 if index % 2 else -1)
        write_mp4(src / name, indexed_frames(count), 25, ramp, 16000)
    truth = {cue: [k + j / 100 for j in range(40)] for k, cue in enumerate(face_cue_names())}
    meta = {
        "file": "c.mp4",
        "clip_id": "c",
        "kind": "talking",
        "speaker_id": 1,
        "fps": 25,
        "num_frames": 40,
        "truth": truth,
    }
    (src / "meta.jsonl").write_text(json.dumps(meta) + "\n")
    prepare_folder(
        src,
        root / "cache",
        size=32,
        clip_seconds=2.0,
        min_seconds=1.0,
        detect_faces=False,
        progress=False,
    )
    return root / "cache"


def test_read_index_and_missing_cache(cache, tmp_path):
    records = read_index(cache)
    assert sorted(r["source"] for r in records) == ["a.mp4", "b.mp4", "b.mp4", "c.mp4", "d.mp4"]
    with pytest.raises(FileNotFoundError, match="python -m singer.data.prepare"):
        read_index(tmp_path)
    with pytest.raises(FileNotFoundError, match="python -m singer.data.prepare"):
        ClipDataset(tmp_path)


def test_items_have_documented_shapes_and_values(cache):
    data = ClipDataset(cache, num_frames=8, motion_frames=2, split="all", stride=4)
    # Clip lengths 50, 50, 25 (b's tail), 40, 30 → windows with stride 4.
    assert len(data) == sum((n - 8) // 4 + 1 for n in (50, 50, 25, 40, 30))
    assert data.num_samples == 8 * 640
    item = data[3]
    assert item["video"].shape == (3, 8, 32, 32) and item["video"].dtype == torch.float32
    assert item["audio"].shape == (8 * 640,) and item["audio"].dtype == torch.float32
    assert item["ref"].shape == (3, 32, 32)
    assert item["motion"].shape == (3, 2, 32, 32)
    assert item["cues"].shape == (8, len(face_cue_names()))
    assert (
        isinstance(item["clip_id"], str)
        and isinstance(item["kind"], str)
        and isinstance(item["start"], int)
    )
    assert item["video"].min() >= -1 and item["video"].max() <= 1

    # Video and audio are exactly the window's frames and samples.
    entry = next(r for r in read_index(cache) if r["clip_id"] == item["clip_id"])
    frames, audio = load_clip(cache / entry["file"])
    start = item["start"]
    expected_video = torch.from_numpy(
        frames[start : start + 8].astype(np.float32) / 127.5 - 1
    ).permute(3, 0, 1, 2)
    torch.testing.assert_close(item["video"], expected_video)
    np.testing.assert_array_equal(item["audio"].numpy(), audio[start * 640 : (start + 8) * 640])


def to_ids(video: torch.Tensor) -> np.ndarray:
    """Frame indices encoded in a ``3×N×H×W`` [-1, 1] tensor (see indexed_frames)."""
    frames = ((video.permute(1, 2, 3, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
    return frame_ids(frames)


def test_motion_frames_are_the_frames_just_before_the_window(cache):
    data = ClipDataset(cache, num_frames=8, motion_frames=3, split="all", stride=1)
    for index in range(len(data)):
        item = data[index]
        start, ids = item["start"], to_ids(item["video"])
        first_id = ids[0] - start  # frame 0 of this clip, in source-frame numbering
        assert list(to_ids(item["motion"])) == [first_id + max(0, start - 3 + k) for k in range(3)]
        ref_id = to_ids(item["ref"][:, None])[0]
        assert ref_id - first_id == data.reference_index(index)


def test_items_are_deterministic(cache):
    one = ClipDataset(cache, split="all", seed=0)
    two = ClipDataset(cache, split="all", seed=0)
    other_seed = ClipDataset(cache, split="all", seed=1)
    for index in range(len(one)):
        a, b = one[index], two[index]
        for key in ("video", "audio", "ref", "motion", "cues"):
            torch.testing.assert_close(a[key], b[key])
        assert a["clip_id"] == b["clip_id"] and a["start"] == b["start"]
    refs = [one.reference_index(i) for i in range(len(one))]
    assert refs != [other_seed.reference_index(i) for i in range(len(one))]
    assert len(set(refs)) > 1


def test_split_is_by_source_and_disjoint(cache):
    train = ClipDataset(cache, split="train", val_fraction=0.3)
    val = ClipDataset(cache, split="val", val_fraction=0.3)
    everything = ClipDataset(cache, split="all")
    train_sources = {clip["source"] for clip in train.clips}
    val_sources = {clip["source"] for clip in val.clips}
    assert train_sources and val_sources and not train_sources & val_sources
    assert train_sources | val_sources == {clip["source"] for clip in everything.clips}
    assert len(train) + len(val) == len(everything)
    # b.mp4 has two clips; they are never split apart.
    assert sum(c["source"] == "b.mp4" for c in train.clips + val.clips) == 2


def test_split_groups_rules():
    def val(groups, fraction):
        return {g for g, side in split_groups(groups, fraction).items() if side == "val"}

    names = [f"speaker_{i}" for i in range(2000)]
    assert 150 < len(val(names, 0.1)) < 250
    assert val(names, 0.1) == val(list(reversed(names)), 0.1)  # order does not matter
    assert val(names, 0.0) == set()
    # Tiny data: at least one val group, and never all of them.
    for pair in (["x", "y"], ["p", "q", "r"]):
        assert len(val(pair, 0.01)) == 1
        assert 1 <= len(val(pair, 0.99)) < len(pair)
    assert len(val(["only"], 0.01)) == 0
    # A test split is disjoint from val and train, and also never empty when asked for.
    sides = split_groups(names, 0.1, 0.2)
    test = {g for g, side in sides.items() if side == "test"}
    assert 300 < len(test) < 500 and not test & val(names, 0.1)
    assert set(split_groups(["a", "b", "c"], 0.01, 0.01).values()) == {"train", "val", "test"}
    with pytest.raises(ValueError, match="sum below 1"):
        split_groups(names, 0.6, 0.5)


def test_speakers_never_span_train_and_held_out_splits(tmp_path):
    """Two clips per speaker (as SynthSing has): a val speaker's clips are all in val."""
    records = [
        {"clip_id": f"c{i}", "source": f"clip_{i}.mp4", "speaker_id": f"spk{i // 2:03d}"}
        for i in range(40)
    ]
    sides = split_groups([clip_group(r) for r in records], 0.3, 0.2)
    by_speaker: dict[str, set[str]] = {}
    for record in records:
        by_speaker.setdefault(record["speaker_id"], set()).add(sides[clip_group(record)])
    assert all(len(s) == 1 for s in by_speaker.values())
    assert {"train", "val", "test"} == set().union(*by_speaker.values())
    # Without a speaker id, the source video is the group.
    assert clip_group({"source": "a.mp4", "speaker_id": None}) == "source:a.mp4"


def test_cues_carry_truth_and_kinds_filter(cache):
    data = ClipDataset(cache, num_frames=8, split="all", kinds=["talking"])
    assert {clip["source"] for clip in data.clips} == {"c.mp4"}
    for index in range(len(data)):
        item = data[index]
        assert item["has_cues"] and item["kind"] == "talking"
        expected = [
            [k + (item["start"] + j) / 100 for k in range(len(face_cue_names()))] for j in range(8)
        ]
        np.testing.assert_allclose(item["cues"].numpy(), expected, atol=1e-5)
    unknown = ClipDataset(cache, split="all", kinds=["unknown"])
    item = unknown[0]
    assert not item["has_cues"] and not item["cues"].any()


def test_dataloader_batches_with_collate(cache):
    data = ClipDataset(cache, num_frames=8, motion_frames=2, split="all")
    loader = torch.utils.data.DataLoader(data, batch_size=3, collate_fn=collate, num_workers=1)
    batch = next(iter(loader))
    assert batch["video"].shape == (3, 3, 8, 32, 32)
    assert batch["audio"].shape == (3, 8 * 640)
    assert batch["ref"].shape == (3, 3, 32, 32) and batch["motion"].shape == (3, 3, 2, 32, 32)
    assert batch["cues"].shape == (3, 8, 6) and batch["has_cues"].dtype == torch.bool
    assert isinstance(batch["clip_id"], list) and all(isinstance(c, str) for c in batch["clip_id"])
    assert batch["start"].dtype == torch.int64
    torch.testing.assert_close(batch["video"][1], data[1]["video"])


def test_clips_are_memory_mapped_and_pickle_without_maps(cache):
    entry = read_index(cache)[0]
    frames, audio = load_clip(cache / entry["file"])
    assert isinstance(frames, np.memmap) and isinstance(audio, np.memmap)
    with np.load(cache / entry["file"]) as stored:
        np.testing.assert_array_equal(frames, stored["frames"])
        np.testing.assert_array_equal(audio, stored["audio"])
    data = ClipDataset(cache, split="all")
    first = data[0]
    assert data._arrays  # opened once, kept for the next items
    copy = pickle.loads(pickle.dumps(data))
    assert copy._arrays == {}
    torch.testing.assert_close(copy[0]["video"], first["video"])


def test_clear_errors_for_bad_arguments(cache):
    with pytest.raises(ValueError, match="split"):
        ClipDataset(cache, split="holdout")
    with pytest.raises(ValueError, match="no train windows"):
        ClipDataset(cache, num_frames=500)
