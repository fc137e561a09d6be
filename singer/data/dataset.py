"""Training windows over a prepared clip cache (see :mod:`singer.data.prepare`).

Every clip is cut into fixed windows of ``num_frames``; item ``i`` is always the same window
with the same reference frame, so runs are reproducible without hidden random state.

Split: by speaker. Every clip belongs to a group, its ``speaker_id`` (SynthSing's speakers; for
your own videos the id ``prepare`` took from a sidecar file or a filename pattern), or its source
video when no speaker is known. Groups are assigned to train, val or test by a stable hash of
the group id, so every clip of one speaker lands on the same side: val and test speakers never
appear in training. The assignment is made over every group in the cache before ``kinds``
filters, so a speaker never switches sides between configurations. With tiny data the hash may
leave a held-out side empty: each held-out split with a fraction > 0 takes at least one group
(the lowest-ranked train group), and at least one group always stays in train.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from singer.data.identity import identity_vector
from singer.data.media import fit_length

# The default collate already does what we need: tensors are stacked, bools become a bool
# tensor, ints an int64 tensor, and strings (clip_id, kind) lists of strings.
collate = default_collate

SPLITS = ("train", "val", "test", "all")

# The audio causes of SynthSing's truth (``singer.data.synth.AUDIO_CAUSES``), in this order.
CAUSES = ("loudness", "pitch", "vibrato_phase", "f2", "held", "onset")


def face_cue_names() -> tuple[str, ...]:
    """The per-frame cue names, in the order of the ``cues`` tensor's last axis."""
    # lazy: start-up: SynthSing loads scipy (a second) for what is here a list of names
    from singer.data.synth import FACE_CUES

    return tuple(FACE_CUES)


def read_index(cache_dir: str | Path) -> list[dict]:
    """The clip records of a prepared cache (``CACHE/index.jsonl``), in file order."""
    index = Path(cache_dir) / "index.jsonl"
    if not index.is_file():
        raise FileNotFoundError(
            f"{cache_dir} is not a prepared clip cache (no index.jsonl); "
            f"run python -m singer.data.prepare --src VIDEOS --out {cache_dir} first"
        )
    with open(index, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _unit_hash(text: str) -> float:
    """A stable number in [0, 1) for ``text`` (unlike ``hash()``, the same in every process)."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def clip_group(record: dict) -> str:
    """The unit a clip is split and resampled by: its speaker, else its source video."""
    speaker = record.get("speaker_id")
    return f"speaker:{speaker}" if speaker not in (None, "") else f"source:{record['source']}"


def split_groups(
    groups: list[str], val_fraction: float, test_fraction: float = 0.0
) -> dict[str, str]:
    """``{group: "train" | "val" | "test"}`` for every distinct group (see the module docstring).

    A group's hash ``u`` in [0, 1) puts it in val when ``u < val_fraction``, in test when
    ``val_fraction <= u < val_fraction + test_fraction``, else in train.
    """
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val_fraction and test_fraction must be >= 0 with a sum below 1, "
            f"got {val_fraction} and {test_fraction}"
        )
    ranked = sorted(set(groups), key=_unit_hash)
    side = {}
    for group in ranked:
        u = _unit_hash(group)
        side[group] = (
            "val" if u < val_fraction else "test" if u < val_fraction + test_fraction else "train"
        )
    if ranked and "train" not in side.values():  # the highest-ranked group trains
        side[ranked[-1]] = "train"
    for split, fraction in (("val", val_fraction), ("test", test_fraction)):
        if fraction > 0 and split not in side.values():
            train = [g for g in ranked if side[g] == "train"]
            if len(train) >= 2:  # the lowest-ranked train group moves; one always stays
                side[train[0]] = split
    return side


def _npz_memmap(path: Path, name: str) -> np.ndarray | None:
    """Memory-map one array of an uncompressed ``.npz`` (None if it is compressed or odd).

    ``np.load(mmap_mode=...)`` ignores the mode for ``.npz``, but a stored (uncompressed) zip
    member is a plain ``.npy`` file at a known offset, which ``np.memmap`` can map directly.
    """
    with zipfile.ZipFile(path) as archive:
        try:
            info = archive.getinfo(f"{name}.npy")
        except KeyError:
            return None
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        local_header = handle.read(30)
        if local_header[:4] != b"PK\x03\x04":
            return None
        name_length, extra_length = struct.unpack("<HH", local_header[26:30])
        handle.seek(info.header_offset + 30 + name_length + extra_length)
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            return None
        offset = handle.tell()
    if dtype.hasobject:
        return None
    return np.memmap(
        path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran_order else "C"
    )


def load_clip(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(frames F×H×W×3 uint8, audio S float32)`` of one cached clip, memory-mapped when possible."""
    path = Path(path)
    frames, audio = _npz_memmap(path, "frames"), _npz_memmap(path, "audio")
    if frames is None or audio is None:
        with np.load(path) as data:
            frames, audio = data["frames"], data["audio"]
    return frames, audio


class ClipDataset(Dataset):
    """Fixed windows of ``num_frames`` over the clips of a prepared cache.

    Item ``i`` is a dict:

    - ``video`` ``3×F×H×W`` float32 in [-1, 1] (F = ``num_frames``)
    - ``audio`` ``S`` float32 mono, the samples under the window, ``S = F / fps · sr``
    - ``ref`` ``3×H×W``: a frame of the same clip, fixed per window by a hash of
      (``seed``, clip id, window start)
    - ``motion`` ``3×M×H×W``: the M frames just before the window; where the clip has fewer,
      its first frame is repeated in front
    - ``cues`` ``F×K`` float32 per-frame truth in :func:`face_cue_names` order (zeros without truth)
    - ``has_cues`` bool, ``clip_id`` str, ``kind`` str, ``start`` int (first frame in the clip)
    - ``ref_cues`` ``K`` and ``motion_cues`` ``M×K``: the truth cues of the ``ref`` and ``motion``
      frames (zeros without truth; the face-parameter proxy is conditioned on them)
    - ``causes`` ``F×C`` float32 SynthSing audio causes in :data:`CAUSES` order (zeros without)
    - ``identity`` ``IDENTITY_DIM`` float32 SynthSing look (zeros without), ``has_identity`` bool
    - ``speaker_id`` str: the clip's split and statistics unit (:func:`clip_group`)

    Arrays are memory-mapped on first use and kept per process (each DataLoader worker keeps
    its own), so loading a window reads only its bytes.
    """

    def __init__(
        self,
        cache_dir: str | Path,
        *,
        num_frames: int = 8,
        motion_frames: int = 2,
        split: str = "train",
        val_fraction: float = 0.1,
        test_fraction: float = 0.0,
        seed: int = 0,
        kinds: list[str] | tuple[str, ...] | None = None,
        stride: int | None = None,
    ):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if num_frames < 1 or motion_frames < 0 or (stride is not None and stride < 1):
            raise ValueError("num_frames and stride must be ≥ 1 and motion_frames ≥ 0")
        self.cache_dir = Path(cache_dir)
        self.num_frames, self.motion_frames = int(num_frames), int(motion_frames)
        self.stride = int(stride or num_frames)
        self.split, self.seed = split, int(seed)
        self.cue_names = face_cue_names()

        records = read_index(self.cache_dir)
        if not records:
            raise ValueError(
                f"{self.cache_dir} holds no clips; see {self.cache_dir / 'report.json'} for why"
            )
        rates = {(float(r["fps"]), int(r["sample_rate"])) for r in records}
        if len(rates) != 1:
            raise ValueError(
                f"{self.cache_dir} mixes frame/sample rates {sorted(rates)}; prepare it again"
            )
        ((self.fps, self.sample_rate),) = rates
        self.num_samples = round(self.num_frames * self.sample_rate / self.fps)

        self.group_split = split_groups(
            [clip_group(r) for r in records], val_fraction, test_fraction
        )
        if split != "all":
            records = [r for r in records if self.group_split[clip_group(r)] == split]
        if kinds is not None:
            wanted = {str(kind) for kind in kinds}
            records = [r for r in records if r.get("kind", "unknown") in wanted]

        self.clips = records
        self.windows: list[tuple[int, int]] = []  # (position in self.clips, first frame)
        self._cues: list[np.ndarray | None] = []
        self._causes: list[np.ndarray | None] = []
        for position, clip in enumerate(records):
            last_start = int(clip["num_frames"]) - self.num_frames
            self.windows.extend(
                (position, start) for start in range(0, last_start + 1, self.stride)
            )
            self._cues.append(self._truth_matrix(clip, self.cue_names))
            self._causes.append(self._truth_matrix(clip, CAUSES))
        if not self.windows and split == "train":
            raise ValueError(
                f"no {split} windows of {self.num_frames} frames in {self.cache_dir} "
                f"({len(records)} clips after the split and kinds filters)"
            )
        self._arrays: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @staticmethod
    def _truth_matrix(clip: dict, names) -> np.ndarray | None:
        """``F_clip×len(names)`` truth of one clip, or None when it lacks any of ``names``."""
        truth = clip.get("truth") or {}
        if not all(name in truth for name in names):
            return None
        return np.stack([np.asarray(truth[name], dtype=np.float32) for name in names], axis=1)

    def __getstate__(self):
        # Memory maps are per process; a DataLoader worker opens its own.
        state = dict(self.__dict__)
        state["_arrays"] = {}
        return state

    def __len__(self) -> int:
        return len(self.windows)

    def _open(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        if position not in self._arrays:
            self._arrays[position] = load_clip(self.cache_dir / self.clips[position]["file"])
        return self._arrays[position]

    def reference_index(self, index: int) -> int:
        """The frame of the clip used as ``ref`` for window ``index`` (deterministic)."""
        position, start = self.windows[index]
        clip = self.clips[position]
        pick = _unit_hash(f"{self.seed}:{clip['clip_id']}:{start}")
        return int(pick * int(clip["num_frames"]))

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self.windows):
            raise IndexError(f"window {index} out of range (dataset has {len(self.windows)})")
        position, start = self.windows[index]
        clip = self.clips[position]
        frames, audio = self._open(position)
        stop = start + self.num_frames

        def to_video(array: np.ndarray) -> torch.Tensor:
            """``N×H×W×3`` uint8 → ``3×N×H×W`` float in [-1, 1]."""
            tensor = torch.from_numpy(np.array(array, dtype=np.float32))
            return (tensor / 127.5 - 1.0).permute(3, 0, 1, 2).contiguous()

        motion_rows = [max(0, start - self.motion_frames + k) for k in range(self.motion_frames)]
        first_sample = round(start * self.sample_rate / self.fps)
        wave = fit_length(audio[first_sample : first_sample + self.num_samples], self.num_samples)
        cues = self._cues[position]
        ref_row = self.reference_index(index)
        if cues is not None:
            window_cues, ref_cues, motion_cues = cues[start:stop], cues[ref_row], cues[motion_rows]
        else:
            window_cues = np.zeros((self.num_frames, len(self.cue_names)), dtype=np.float32)
            ref_cues = np.zeros(len(self.cue_names), dtype=np.float32)
            motion_cues = np.zeros((len(motion_rows), len(self.cue_names)), dtype=np.float32)
        causes = self._causes[position]
        window_causes = (
            causes[start:stop]
            if causes is not None
            else np.zeros((self.num_frames, len(CAUSES)), np.float32)
        )
        return {
            "video": to_video(frames[start:stop]),
            "audio": torch.from_numpy(np.array(wave, dtype=np.float32)),
            "ref": to_video(frames[ref_row][None])[:, 0],
            "motion": to_video(frames[motion_rows])
            if motion_rows
            else torch.zeros(3, 0, *frames.shape[1:3]),
            "cues": torch.from_numpy(np.array(window_cues, dtype=np.float32)),
            "has_cues": cues is not None,
            "ref_cues": torch.from_numpy(np.array(ref_cues, dtype=np.float32)),
            "motion_cues": torch.from_numpy(np.array(motion_cues, dtype=np.float32)),
            "causes": torch.from_numpy(np.array(window_causes, dtype=np.float32)),
            "identity": torch.from_numpy(identity_vector(clip.get("identity"))),
            "has_identity": bool(clip.get("identity")),
            "clip_id": str(clip["clip_id"]),
            "speaker_id": clip_group(clip),
            "kind": str(clip.get("kind") or "unknown"),
            "start": int(start),
        }
