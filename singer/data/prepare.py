"""Turn any folder of videos into cached training clips.

    python -m singer.data.prepare --src VIDEOS --out CACHE [--size 64 --fps 25 --sr 16000
        --clip-seconds 4 --min-seconds 1 --workers N --no-detect --require-face --force
        --separate NAME --separator-arg KEY=VALUE]

Per video file: probe it (PyAV), resample its frames to ``fps`` by presentation timestamp
(variable frame rate is fine) and its audio to ``sample_rate`` mono, trimmed or padded to
exactly ``frames / fps · sample_rate`` samples (with ``--separate NAME``, replaced by the vocal
separator's estimate of the voice alone); cut it into clips of ``clip_seconds`` (a tail
shorter than ``min_seconds`` is dropped); crop each clip to a fixed square around the face
(or the centre) and resize it to ``size × size``.

Cache layout::

    CACHE/clips/<clip_id>.<tag>.npz  frames F×H×W×3 uint8, audio S float32 (uncompressed: fast
                                     to load); <tag> digests the source file and the settings
    CACHE/index.jsonl            one record per clip (source, segment, start_s, crop, kind, truth...)
    CACHE/report.json            every input file: status "ok" | "skipped", reason, clips, notes;
                                 and the source folders that could not be read
    CACHE/prepare.json           the settings
    CACHE/records/<key>.json     one record per input file, written as soon as it is done

``index.jsonl`` and ``report.json`` are rebuilt from ``records/`` at the end of every run, so a
killed run loses at most the files in progress, and a re-run skips every file whose source
(path, size, mtime) and settings are unchanged.

Crash safety: ``index.jsonl`` is what training reads, and it is replaced atomically, last.
Clip files of other settings or another version of a source get other names (the tag), and
files the current index names are never deleted or rewritten with other contents before the
new index is in place; only then are the clips no index names removed. So a run killed at any
moment (a re-run with ``--size 32`` over a ``--size 64`` cache included) leaves the old cache
or the new one, never a mix. Workers die with the process that started them.

Bounded resources: special files (named pipes, sockets, devices) are never opened; a video is
refused before decoding when its frames are too large or, for the in-memory fallback decoder,
when its length × frame size exceeds the budget; audio is decoded clip by clip.

When a folder under ``src`` holds a SynthSing ``meta.jsonl``, each listed file's ``kind``,
``speaker_id``, ``identity`` and per-frame ``truth`` travel into the index, sliced to each clip's
frames. For your own videos the speaker comes from a sidecar file or ``--speaker-pattern``
(:mod:`singer.data.speakers`); splits and confidence intervals are made of speakers.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import json
import math
import multiprocessing
import os
import re
import signal
import stat
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from singer.cli import UserError, entry_point
from singer.data.media import (
    MAX_FRAME_BYTES,
    AudioStream,
    MediaError,
    as_numpy,
    container_kind,
    fit_length,
    frame_timestamps,
    open_video,
    probe,
    resample_indices,
)
from singer.data.speakers import speaker_map

# Bumped whenever the clip contents change for the same settings, so old caches are redone.
PREPARE_VERSION = 2  # 2: SynthSing identity in the index

VIDEO_EXTENSIONS = frozenset(
    ".mp4 .mov .mkv .avi .webm .m4v .mpg .mpeg .ts .mts .m2ts .flv .wmv .3gp .ogv".split()
)
# Audio files are never videos, whatever container they come in.
AUDIO_EXTENSIONS = frozenset(".m4a .m4b .wav .mp3 .flac .aac .ogg .oga .opus .wma".split())
# Containers that are also video containers when the extension says nothing.
_VIDEO_CONTAINERS = frozenset({"mp4/mov", "mkv/webm", "avi/wav", "flv", "mpeg", "asf/wmv"})
_AUDIO_BRANDS = (b"M4A ", b"M4B ", b"M4P ")

FACE_SCALE = 1.8  # a frontal-face box covers brows to chin; 1.8× fits the whole head
FACE_SAMPLES = 5  # frames per clip that the face detector looks at
DECODE_CHUNK = 32  # source frames decoded at once, to bound memory on large videos
DECODE_CHUNK_BYTES = 64 * 1024**2  # ... and fewer when the frames are large

META_NAME = "meta.jsonl"


# --------------------------------------------------------------------------------------
# Settings and input discovery
# --------------------------------------------------------------------------------------


class PrepareError(UserError, ValueError):
    """Settings or folders that prepare cannot work with."""


@dataclass(frozen=True)
class Settings:
    size: int = 64
    fps: float = 25.0
    sample_rate: int = 16000
    clip_seconds: float = 4.0
    min_seconds: float = 1.0
    detect_faces: bool = True
    require_face: bool = False
    face_detector: str | None = None  # which detector backend ran (part of the cache key)
    separator: str = "none"  # vocal separator run on each file's audio (singer.separation)
    separator_args: tuple = ()  # its options, as sorted (key, value) pairs

    @property
    def clip_frames(self) -> int:
        return max(1, round(self.clip_seconds * self.fps))

    @property
    def min_frames(self) -> int:
        return max(1, math.ceil(self.min_seconds * self.fps - 1e-9))

    def samples_for(self, frames: int) -> int:
        """Audio samples spanning ``frames`` video frames (exact when sr/fps is whole)."""
        return round(frames * self.sample_rate / self.fps)

    def to_dict(self) -> dict:
        return {
            "size": self.size,
            "fps": self.fps,
            "sample_rate": self.sample_rate,
            "clip_seconds": self.clip_seconds,
            "min_seconds": self.min_seconds,
            "detect_faces": self.detect_faces,
            "require_face": self.require_face,
            "face_detector": self.face_detector,
            "face_scale": FACE_SCALE,
            "separator": {"name": self.separator, "args": dict(self.separator_args)},
            "version": PREPARE_VERSION,
        }


def _digest(text: str, length: int = 16) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()[:length]


def looks_like_video(path: Path) -> bool:
    """True for a video extension, or for any other file whose leading bytes are a video container."""
    if path.suffix.lower() in VIDEO_EXTENSIONS:
        return True
    if path.suffix.lower() in AUDIO_EXTENSIONS:
        return False
    try:
        kind = container_kind(path)
        if kind not in _VIDEO_CONTAINERS:
            return False
        with open(path, "rb") as handle:
            head = handle.read(12)
        if kind == "mp4/mov" and head[8:12] in _AUDIO_BRANDS:
            return False  # an .m4a-style audio file without its extension
        return not (kind == "avi/wav" and head[8:12] != b"AVI ")
    except OSError:
        return False


_SPECIAL_FILES = (
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


@dataclass
class Inputs:
    """What :func:`find_inputs` found under a source folder."""

    videos: list[Path]
    ignored: list[Path]  # regular files that are not videos
    special: list[tuple[Path, str]]  # (path, reason): never opened
    unreadable: list[tuple[Path, str]]  # (folder, reason): could not be listed

    def __iter__(self):  # ``videos, ignored = find_inputs(...)``, as before
        return iter((self.videos, self.ignored))


def _not_regular(path: Path) -> str | None:
    """Why ``path`` must not be opened (a pipe would block forever), or None for a file."""
    try:
        mode = path.stat().st_mode  # follows a symlink to what it names
    except OSError as error:
        return f"not a regular file ({error.strerror or 'cannot stat'})"
    if stat.S_ISREG(mode):
        return None
    for test, what in _SPECIAL_FILES:
        if test(mode):
            return f"not a regular file ({what})"
    return "not a regular file"


def find_inputs(src: Path, *, exclude: Path | None = None) -> Inputs:
    """Video files under ``src`` (recursive, sorted), the other files that were ignored, the
    special files that were skipped unopened, and the folders that could not be read.

    Hidden files and folders are skipped, and so is ``exclude`` (the cache, if it sits inside ``src``).
    """
    videos, ignored, special, unreadable = [], [], [], []
    exclude = exclude.resolve() if exclude is not None else None

    def on_error(error: OSError) -> None:
        unreadable.append((Path(error.filename), error.strerror or type(error).__name__))

    for root, dirs, files in os.walk(src, onerror=on_error):
        root_path = Path(root)
        dirs[:] = sorted(
            d
            for d in dirs
            if not d.startswith(".") and (exclude is None or (root_path / d).resolve() != exclude)
        )
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = root_path / name
            reason = _not_regular(path)
            if reason is not None:
                special.append((path, reason))
            else:
                (videos if looks_like_video(path) else ignored).append(path)
    return Inputs(videos, ignored, special, sorted(unreadable))


def load_synth_meta(src: Path) -> dict[str, dict]:
    """SynthSing records from every ``meta.jsonl`` under ``src``, keyed by the resolved file path."""
    meta = {}
    for meta_path in sorted(src.rglob(META_NAME)):
        if any(part.startswith(".") for part in meta_path.relative_to(src).parts):
            continue
        for line in meta_path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a damaged line loses only its own clip's truth
            if isinstance(record, dict) and isinstance(record.get("file"), str):
                meta[str((meta_path.parent / record["file"]).resolve())] = record
    return meta


# --------------------------------------------------------------------------------------
# Face crop
# --------------------------------------------------------------------------------------


class FaceDetector:
    """Frontal-face boxes on RGB frames, with whichever bundled detector is installed.

    OpenCV 4.x ships Haar cascades in its wheel (``cv2.data.haarcascades``); OpenCV 5 dropped
    them, so scikit-image's bundled LBP frontal-face cascade is the fallback. ``backend`` is
    None when neither is available.
    """

    def __init__(self):
        self.backend: str | None = None
        self._cascade = None
        xml = Path(getattr(getattr(cv2, "data", None), "haarcascades", "") or "") / (
            "haarcascade_frontalface_default.xml"
        )
        if hasattr(cv2, "CascadeClassifier") and xml.is_file():
            self._cascade = cv2.CascadeClassifier(str(xml))
            self.backend = "opencv-haar"
            return
        try:
            # lazy: optional: scikit-image is a development extra, tried when OpenCV has no cascade
            from skimage.data import lbp_frontal_face_cascade_filename
            from skimage.feature import Cascade

            self._cascade = Cascade(lbp_frontal_face_cascade_filename())
            self.backend = "skimage-lbp"
        except ImportError:
            pass

    def detect(self, frame: np.ndarray) -> tuple[float, float, float] | None:
        """The largest face in an ``H×W×3`` uint8 frame as (centre x, centre y, side) pixels, or None."""
        if self.backend is None:
            return None
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        # Detect on at most ~480 px: faster, and head-sized faces stay far above the minimum.
        scale = min(1.0, 480.0 / max(gray.shape))
        if scale < 1.0:
            gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        smallest = max(24, min(gray.shape) // 10)
        if self.backend == "opencv-haar":
            found = self._cascade.detectMultiScale(
                gray, scaleFactor=1.1, minNeighbors=5, minSize=(smallest, smallest)
            )
            boxes = [tuple(float(v) for v in box) for box in found]
        else:
            found = self._cascade.detect_multi_scale(
                img=gray,
                scale_factor=1.2,
                step_ratio=1,
                min_size=(smallest, smallest),
                max_size=gray.shape,
            )
            boxes = [(d["c"], d["r"], d["width"], d["height"]) for d in found]
        if not boxes:
            return None
        x, y, w, h = max(boxes, key=lambda box: box[2] * box[3])
        return ((x + w / 2) / scale, (y + h / 2) / scale, max(w, h) / scale)


def square_crop_box(
    width: int,
    height: int,
    face: tuple[float, float, float] | None = None,
    *,
    scale: float = FACE_SCALE,
) -> tuple[int, int, int, int]:
    """A square ``(x, y, side, side)`` inside a ``width × height`` image.

    Without ``face`` it is the largest centred square. With ``face`` = (centre x, centre y,
    side) it is the face box enlarged by ``scale`` (so the whole head fits), no larger than
    the image, and shifted as little as needed to stay inside it.
    """
    limit = min(width, height)
    if face is None:
        return ((width - limit) // 2, (height - limit) // 2, limit, limit)
    centre_x, centre_y, face_side = face
    side = int(min(limit, max(2, round(face_side * scale))))
    x = int(min(max(round(centre_x - side / 2), 0), width - side))
    y = int(min(max(round(centre_y - side / 2), 0), height - side))
    return (x, y, side, side)


def _face_for_clip(
    reader, indices: np.ndarray, detector: FaceDetector
) -> tuple[float, float, float] | None:
    """Median face over a few frames spread across the clip (None when no frame shows one)."""
    picks = np.unique(
        indices[np.linspace(0, len(indices) - 1, num=min(FACE_SAMPLES, len(indices))).astype(int)]
    )
    # One frame at a time: five source frames of a large video are a lot of memory.
    frames = (as_numpy(reader.get_batch([int(pick)]))[0] for pick in picks)
    faces = [face for face in (detector.detect(frame) for frame in frames) if face is not None]
    if not faces:
        return None
    return tuple(float(v) for v in np.median(np.asarray(faces), axis=0))


# --------------------------------------------------------------------------------------
# One file
# --------------------------------------------------------------------------------------


class _Skip(Exception):
    """The file cannot be used; the message is the reason shown in the report."""


def _clip_id(rel: str, segment: int) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(rel).stem).strip("_")[:40] or "clip"
    return f"{stem}-{_digest(rel, 8)}-{segment:03d}"


def _record_path(out: Path, rel: str) -> Path:
    return out / "records" / f"{_digest(rel)}.json"


def _clip_file(clip_id: str, fingerprint: dict) -> str:
    """The clip's file, named by the source version and settings it was made from, so that a
    re-run with other settings never overwrites a file the current index names."""
    return f"clips/{clip_id}.{_digest(json.dumps(fingerprint, sort_keys=True), 10)}.npz"


def _fingerprint(path: Path, settings: Settings, meta_record: dict | None) -> dict:
    stat = path.stat()
    return {
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "settings": _digest(json.dumps(settings.to_dict(), sort_keys=True)),
        "meta": _digest(json.dumps(meta_record, sort_keys=True)) if meta_record else None,
    }


def _write_atomic(path: Path, writer) -> None:
    """Write through ``writer(handle)`` into a temporary file, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            writer(handle)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_json(path: Path, data) -> None:
    _write_atomic(path, lambda handle: handle.write(json.dumps(data, indent=1).encode("utf-8")))


def _slice_truth(
    meta_record: dict, frame_times: np.ndarray, source_fps: float
) -> dict[str, list[float]] | None:
    """Per-frame truth of the picked source frames (nearest truth frame by time)."""
    truth = meta_record.get("truth")
    if not isinstance(truth, dict) or not truth:
        return None
    truth_fps = float(meta_record.get("fps") or source_fps)
    sliced = {}
    for cue, values in truth.items():
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if len(values) == 0:
            continue
        rows = np.clip(np.round(frame_times * truth_fps).astype(np.int64), 0, len(values) - 1)
        sliced[cue] = [round(float(v), 6) for v in values[rows]]
    return sliced or None


def prepare_file(
    path: Path,
    *,
    rel: str,
    out: Path,
    settings: Settings,
    meta_record: dict | None = None,
) -> dict:
    """Prepare one video into ``out/clips``; return (and write) its per-file record.

    Never raises for a bad input: the record then has ``status="skipped"`` and a ``reason``.
    Nothing is deleted here: clips no index names are removed at the end of the run
    (:func:`prepare_folder`), after the new index is in place.
    """
    record = {"path": rel, "status": "ok", "reason": None, "clips": [], "notes": []}
    try:
        record["fingerprint"] = _fingerprint(path, settings, meta_record)
        record["clips"], record["notes"] = _prepare_clips(
            path,
            rel=rel,
            out=out,
            settings=settings,
            meta_record=meta_record,
            fingerprint=record["fingerprint"],
        )
    except _Skip as skip:
        record.update(status="skipped", reason=str(skip), clips=[])
    except MediaError as error:
        record.update(status="skipped", reason=error.reason, clips=[])
    except Exception as error:  # an odd file must never stop the batch
        first_line = (str(error).splitlines() or [""])[0]
        reason = f"unreadable or odd streams ({type(error).__name__}: {first_line})"
        record.update(status="skipped", reason=reason, clips=[])
    _write_json(_record_path(out, rel), record)
    return record


def split_segments(total: int, *, clip_frames: int, min_frames: int) -> list[tuple[int, int]]:
    """``[first, stop)`` frame ranges of ``clip_frames``; a tail shorter than ``min_frames`` is dropped."""
    segments = [(first, min(first + clip_frames, total)) for first in range(0, total, clip_frames)]
    return [(first, stop) for first, stop in segments if stop - first >= min_frames]


def _read_square_frames(
    reader, indices: np.ndarray, *, box: tuple[int, int, int], size: int, frame_bytes: int = 0
) -> np.ndarray:
    """Decode source frames ``indices``, crop the square ``box`` = (x, y, side), resize: ``K×size×size×3``."""
    x, y, side = box
    frames = np.empty((len(indices), size, size, 3), dtype=np.uint8)
    # A chunk at a time keeps memory small for large source frames.
    step = max(1, min(DECODE_CHUNK, DECODE_CHUNK_BYTES // max(1, frame_bytes)))
    for chunk in range(0, len(indices), step):
        batch = as_numpy(reader.get_batch(indices[chunk : chunk + step].tolist()))
        for row, frame in enumerate(batch):
            crop = np.ascontiguousarray(frame[y : y + side, x : x + side])
            frames[chunk + row] = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
    return frames


def _prepare_clips(
    path: Path,
    *,
    rel: str,
    out: Path,
    settings: Settings,
    meta_record: dict | None,
    fingerprint: dict,
) -> tuple[list[dict], list[str]]:
    """Write the clips of one source; return (index entries, notes)."""
    info = probe(path)
    if info.image_format:
        raise _Skip(f"not a video (a {info.image_format} image)")
    if not info.has_video:
        raise _Skip("no video stream (audio only)" if info.has_audio else "not a video")
    if not info.has_audio:
        raise _Skip("no audio track")
    if info.num_frames == 0:
        raise _Skip("no video frames")
    frame_bytes = info.width * info.height * 3
    if frame_bytes > MAX_FRAME_BYTES:
        raise _Skip(
            f"frames too large ({info.width}×{info.height} px; at most "
            f"{MAX_FRAME_BYTES // 1024**2} MiB per decoded frame)"
        )
    notes = []
    if info.variable_frame_rate:
        notes.append(f"variable frame rate (average {info.fps:.2f} fps); resampled by timestamp")

    detector = FaceDetector() if settings.detect_faces else None
    if detector is not None and detector.backend is None:
        notes.append("no face detector installed; centre crop")
        detector = None

    clips, faceless = [], 0
    with open_video(path, num_threads=1) as reader, contextlib.ExitStack() as cleanup:
        timestamps = frame_timestamps(reader)
        indices, _ = resample_indices(timestamps, settings.fps)
        total = len(indices)
        if total < settings.min_frames:
            raise _Skip(f"too short ({total / settings.fps:.2f} s < {settings.min_seconds:g} s)")
        # Audio and video are taken to start together (both streams start at 0 in nearly all
        # files). The audio is decoded clip by clip, trimmed to the video's span.
        audio = AudioStream(path, sample_rate=settings.sample_rate)
        cleanup.callback(audio.close)
        audio_span = settings.samples_for(total)
        audio_note_at = len(notes)
        if settings.separator != "none":  # the clips keep the voice alone, not the music
            audio = _SeparatedTrack(audio, audio_span, settings)

        height, width = as_numpy(reader.get_batch([0])).shape[1:3]
        segments = split_segments(
            total, clip_frames=settings.clip_frames, min_frames=settings.min_frames
        )
        if segments[-1][1] < total:
            notes.append(f"dropped a {(total - segments[-1][1]) / settings.fps:.2f} s tail")

        for segment, (first, stop) in enumerate(segments):
            source = indices[first:stop]
            face = _face_for_clip(reader, source, detector) if detector is not None else None
            if face is None and detector is not None:
                if settings.require_face:
                    raise _Skip("no face found")
                faceless += 1
            x, y, side, _ = square_crop_box(width, height, face)
            frames = _read_square_frames(
                reader, source, box=(x, y, side), size=settings.size, frame_bytes=frame_bytes
            )

            begin = settings.samples_for(first)
            wave = audio.read(begin, settings.samples_for(stop - first))
            wave[max(0, audio_span - begin) :] = 0.0  # nothing past the video's span
            clip_id = _clip_id(rel, segment)
            clip_file = _clip_file(clip_id, fingerprint)
            _write_atomic(
                out / clip_file,
                lambda handle, frames=frames, wave=wave: np.savez(
                    handle, frames=frames, audio=wave
                ),
            )

            entry = {
                "clip_id": clip_id,
                "file": clip_file,
                "source": rel,
                "segment": segment,
                "start_s": round(first / settings.fps, 6),
                "num_frames": int(stop - first),
                "fps": settings.fps,
                "sample_rate": settings.sample_rate,
                "num_samples": int(len(wave)),
                "size": settings.size,
                "crop": [x, y, side, side],
                "face": face is not None,
                "source_size": [width, height],
                "source_fps": round(info.fps, 4),
                "kind": "unknown",
                "speaker_id": None,
                "separator": settings.separator,
            }
            if meta_record is not None:
                entry["kind"] = str(meta_record.get("kind") or "unknown")
                entry["speaker_id"] = meta_record.get("speaker_id")
                if isinstance(meta_record.get("identity"), dict):
                    entry["identity"] = meta_record["identity"]
                truth = _slice_truth(
                    meta_record, timestamps[source, 0] - timestamps[:, 0].min(), info.fps
                )
                if truth is not None:
                    entry["truth"] = truth
            clips.append(entry)
        audio.read(audio_span - 1, 1)  # decodes up to the video's end, to see if audio reaches it
        missing = audio_span - min(audio.decoded, audio_span)
        if missing > settings.sample_rate // 2:
            notes.insert(
                audio_note_at,
                f"audio ends {missing / settings.sample_rate:.2f} s before the video; "
                "padded with silence",
            )

    if faceless:
        if faceless == len(segments):
            notes.append("no face found; centre crop")
        else:
            notes.append(f"no face found in {faceless} of {len(segments)} clips; centre crop there")
    return clips, notes


def _prepare_task(task: dict) -> dict:
    """Worker entry point (module level so a process pool can pickle it)."""
    try:
        cv2.setNumThreads(1)  # parallelism comes from --workers, not from threads inside one
    except Exception:
        pass
    return prepare_file(
        Path(task["path"]),
        rel=task["rel"],
        out=Path(task["out"]),
        settings=task["settings"],
        meta_record=task["meta_record"],
    )


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent(parent_pid: int) -> None:
    """Process-pool initializer: a worker must not outlive the process that started it.

    On Linux the kernel sends SIGKILL to the worker when its parent dies (``prctl``
    ``PR_SET_PDEATHSIG``); elsewhere a thread checks the parent every second. Either way a
    killed ``prepare`` leaves no decoders running.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            _watch_parent(parent_pid)
    else:
        _watch_parent(parent_pid)
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)


def _watch_parent(parent_pid: int) -> None:
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


CRASH_REASON = "the decoder crashed on this file (corrupt or unsupported streams)"


def _failure_record(task: dict, reason: str) -> dict:
    """Record (and write) a file whose worker died or failed outside :func:`prepare_file`."""
    record = {"path": task["rel"], "status": "skipped", "reason": reason, "clips": [], "notes": []}
    try:
        record["fingerprint"] = _fingerprint(
            Path(task["path"]), task["settings"], task["meta_record"]
        )
    except OSError:
        pass
    _write_json(_record_path(Path(task["out"]), task["rel"]), record)
    return record


def run_tasks(tasks: list[dict], *, workers: int, on_done, worker=_prepare_task) -> None:
    """Run ``worker(task)`` for every task and hand each result to ``on_done(task, record)``.

    With ``workers > 1`` tasks run in a process pool. If a process dies (a decoder segfault),
    the pool breaks; the unfinished tasks are then retried one at a time, each in a fresh
    process, so only the file that really crashes is reported as such.
    """
    if workers <= 1:
        for task in tasks:
            on_done(task, worker(task))
        return
    context = multiprocessing.get_context(
        "spawn"
    )  # no fork: the parent may hold torch/OpenMP threads
    options = dict(mp_context=context, initializer=_die_with_parent, initargs=(os.getpid(),))
    unfinished = []
    with ProcessPoolExecutor(max_workers=workers, **options) as pool:
        futures = {pool.submit(worker, task): task for task in tasks}
        for future in as_completed(futures):
            task = futures[future]
            try:
                record = future.result()
            except BrokenProcessPool:
                unfinished.append(task)
                continue
            except Exception as error:  # e.g. out of memory in the worker: this file only
                record = _failure_record(task, f"worker failed ({type(error).__name__}: {error})")
            on_done(task, record)
    for task in unfinished:
        with ProcessPoolExecutor(max_workers=1, **options) as pool:
            try:
                record = pool.submit(worker, task).result()
            except BrokenProcessPool:
                record = _failure_record(task, CRASH_REASON)
            except Exception as error:
                record = _failure_record(task, f"worker failed ({type(error).__name__}: {error})")
        on_done(task, record)


# --------------------------------------------------------------------------------------
# A whole folder
# --------------------------------------------------------------------------------------


def _reusable(record: dict | None, fingerprint: dict, out: Path) -> bool:
    if not record or record.get("fingerprint") != fingerprint:
        return False
    return all((out / clip["file"]).is_file() for clip in record.get("clips", []))


def _load_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def check_folders(src: Path, out: Path) -> None:
    """Refuse a source that is not a folder, and an output that would mix with the sources
    or cannot be written; nothing is created here."""
    if not src.is_dir():
        raise PrepareError(f"--src {src} is not a folder", "give the folder that holds the videos")
    if out.exists() and not out.is_dir():
        raise PrepareError(f"--out {out} is a file", "give a folder for the cache")
    src_real, out_real = src.resolve(), out.resolve()
    if out_real == src_real or src_real.is_relative_to(out_real):
        raise PrepareError(
            f"--out {out} holds the source folder {src}",
            "give a cache folder of its own (inside --src or beside it)",
        )
    probe_dir = out_real
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise PrepareError(f"--out {out}: {probe_dir} is not a folder", "give a path of folders")
    if not os.access(probe_dir, os.W_OK | os.X_OK):
        raise PrepareError(f"--out {out}: cannot write in {probe_dir}", "give a writable folder")


def check_settings(
    *,
    size: int,
    fps: float,
    sample_rate: int,
    clip_seconds: float,
    min_seconds: float,
    workers: int,
    detect_faces: bool,
    require_face: bool,
) -> None:
    if require_face and not detect_faces:
        raise PrepareError(
            "require_face needs face detection", "do not combine it with --no-detect"
        )
    problems = []
    if not (isinstance(size, int) and 2 <= size <= 4096):
        problems.append(f"--size {size} (give 2 to 4096 px)")
    for flag, value in (("--fps", fps), ("--clip-seconds", clip_seconds)):
        if not (math.isfinite(value) and value > 0):
            problems.append(f"{flag} {value} (give a number > 0)")
    if not (math.isfinite(min_seconds) and min_seconds >= 0):
        problems.append(f"--min-seconds {min_seconds} (give a number >= 0)")
    if not (isinstance(sample_rate, int) and 1000 <= sample_rate <= 384_000):
        problems.append(f"--sr {sample_rate} (give 1000 to 384000 Hz)")
    if not (isinstance(workers, int) and workers >= 1):
        problems.append(f"--workers {workers} (give 1 or more)")
    if not problems and clip_seconds * fps < 1:
        problems.append(f"--clip-seconds {clip_seconds} at --fps {fps} (a clip needs a frame)")
    if problems:
        raise PrepareError("bad settings: " + "; ".join(problems), "fix them (see --help)")


def prepare_folder(
    src: str | Path,
    out: str | Path,
    *,
    size: int = 64,
    fps: float = 25,
    sample_rate: int = 16000,
    clip_seconds: float = 4.0,
    min_seconds: float = 1.0,
    workers: int = 1,
    detect_faces: bool = True,
    require_face: bool = False,
    force: bool = False,
    progress: bool = True,
    speakers: str | Path | None = None,
    speaker_pattern: str | None = None,
    separator: str = "none",
    separator_args: dict | None = None,
) -> dict:
    """Prepare every video under ``src`` into the clip cache ``out``; return the report.

    ``speakers`` (a sidecar file) and ``speaker_pattern`` name each video's speaker (see
    :mod:`singer.data.speakers`); they are applied when the index is written, so changing them
    re-labels a finished cache without decoding anything again.

    ``separator`` (a name in ``python -m singer.registry separator``, with ``separator_args``)
    runs on each file's audio before it is cut into clips, so the cache holds the separated
    voice; the clips' ``separator`` and the report's settings record it.

    The report (also at ``out/report.json``) is ``{"settings", "files": [{"path", "status",
    "reason", "clips", "notes", "cached"}], "ignored": [...], "unreadable": [{"path",
    "reason"}], "counts": {...}}`` and lists every input file (special files such as named
    pipes as skipped, unopened) and every folder that could not be read. Files already
    prepared with the same settings are reused unless ``force``.
    """
    src, out = Path(src), Path(out)
    check_settings(
        size=size,
        fps=fps,
        sample_rate=sample_rate,
        clip_seconds=clip_seconds,
        min_seconds=min_seconds,
        workers=workers,
        detect_faces=detect_faces,
        require_face=require_face,
    )
    check_folders(src, out)
    if separator != "none":
        # lazy: start-up: the separators load torch (seconds), which preparing without one, and
        # every spawned worker, does without
        from singer.separation import load_separator

        load_separator(separator, separator_args)  # a bad name, option or weight file fails here
    backend = FaceDetector().backend if detect_faces else None
    if require_face and backend is None:
        raise PrepareError(
            "require_face needs a face detector",
            "install scikit-image, or opencv-python-headless<5",
        )
    settings = Settings(
        size=int(size),
        fps=float(fps),
        sample_rate=int(sample_rate),
        clip_seconds=float(clip_seconds),
        min_seconds=float(min_seconds),
        detect_faces=bool(detect_faces),
        require_face=bool(require_face),
        face_detector=backend,
        separator=str(separator),
        separator_args=tuple(sorted((separator_args or {}).items())) if separator != "none" else (),
    )

    inside = out.resolve().is_relative_to(src.resolve())
    found = find_inputs(src, exclude=out if inside else None)
    speaker_ids = speaker_map(
        src,
        [path.relative_to(src).as_posix() for path in found.videos],
        sidecar=speakers,
        pattern=speaker_pattern,
    )
    meta = load_synth_meta(src)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PrepareError(f"--out {out}: {error.strerror}", "give a writable folder") from error

    records: dict[str, dict] = {}
    for path, reason in found.special:  # never opened: a pipe would block the search forever
        rel = path.relative_to(src).as_posix()
        records[rel] = {
            "path": rel,
            "status": "skipped",
            "reason": reason,
            "clips": [],
            "notes": [],
        }
    tasks = []
    for path in found.videos:
        rel = path.relative_to(src).as_posix()
        meta_record = meta.get(str(path.resolve()))
        old = _load_json(_record_path(out, rel))
        try:
            fingerprint = _fingerprint(path, settings, meta_record)
        except OSError:
            fingerprint = None
        if not force and fingerprint is not None and _reusable(old, fingerprint, out):
            records[rel] = {**old, "cached": True}
            continue
        tasks.append(
            {
                "path": str(path),
                "rel": rel,
                "out": str(out),
                "settings": settings,
                "meta_record": meta_record,
            }
        )

    bar = tqdm(
        total=len(found.videos) + len(found.special),
        initial=len(records),
        desc="prepare",
        unit="file",
        disable=not progress,
    )
    tally = {"ok": sum(r["status"] == "ok" for r in records.values())}
    tally["skipped"] = len(records) - tally["ok"]

    def on_done(task: dict, record: dict) -> None:
        records[task["rel"]] = {**record, "cached": False}
        tally[record["status"]] += 1
        bar.update(1)
        bar.set_postfix(tally)

    finished = False
    try:
        run_tasks(tasks, workers=int(workers), on_done=on_done)
        finished = True
    finally:
        bar.close()
        # An interrupted run (Ctrl-C, an error) keeps an existing index whole rather than
        # replace it with a partial one; a first run still gets the index of what it did.
        report = _write_outputs(
            out,
            settings,
            records,
            src=src,
            ignored=[p.relative_to(src).as_posix() for p in found.ignored],
            unreadable=[
                {"path": _relative(p, src), "reason": reason} for p, reason in found.unreadable
            ],
            switch_index=finished or not (out / "index.jsonl").exists(),
            speakers=speaker_ids,
        )
    return report


def _label_speakers(clips: list[dict], speaker: str | None) -> list[dict]:
    """The clips with ``speaker_id`` set from the speaker map, where SynthSing gave none."""
    if speaker is None:
        return clips
    return [clip if clip.get("speaker_id") else {**clip, "speaker_id": speaker} for clip in clips]


class _SeparatedTrack:
    """The separated voice of a file's whole track up to the video's end, served the way an
    ``AudioStream`` serves samples (``read(start, count)``, ``decoded``). A separator needs the
    context around each clip, so this one file's track is held (4 bytes a sample: 230 MB for an
    hour at 16 kHz), and separated in the separator's own bounded chunks."""

    def __init__(self, stream: AudioStream, span: int, settings: Settings):
        # lazy: start-up: the separators load torch (seconds); see prepare_folder
        from singer.separation import separate

        mixture = stream.read(0, span)
        self.decoded = stream.decoded
        self.voice = separate(
            mixture,
            settings.separator,
            dict(settings.separator_args),
            progress=True,
            sample_rate=settings.sample_rate,
        )

    def read(self, start: int, count: int) -> np.ndarray:
        return fit_length(self.voice[start : start + count], count)


def _relative(path: Path, src: Path) -> str:
    try:
        return path.relative_to(src).as_posix()
    except ValueError:
        return str(path)


def _remove_unindexed_clips(out: Path, indexed: set[str]) -> int:
    """Delete clip files (and leftover temporary files) that the index does not name.

    Called only after the new index is in place: until then, the old index's files stay.
    """
    removed = 0
    clips = out / "clips"
    if not clips.is_dir():
        return 0
    for entry in clips.iterdir():
        name = f"clips/{entry.name}"
        ours = entry.name.endswith(".npz") or (
            entry.name.startswith(".") and entry.name.endswith(".tmp")
        )
        if ours and entry.is_file() and name not in indexed:
            entry.unlink(missing_ok=True)
            removed += 1
    return removed


def _write_outputs(
    out: Path,
    settings: Settings,
    records: dict[str, dict],
    *,
    src: Path,
    ignored: list[str],
    unreadable: list[dict],
    switch_index: bool = True,
    speakers: dict[str, str | None] | None = None,
) -> dict:
    """Rebuild the report and the index from the per-file records (sorted by path).

    Order matters for crash safety: report and settings first, then ``index.jsonl`` in one
    atomic rename (what training reads switches to the new clips at once), and only then the
    clips no index names are removed. Without ``switch_index`` only the report is written.
    ``speakers`` labels the clips of each source that SynthSing gave no speaker.
    """
    files, index_lines, reasons, indexed = [], [], {}, set()
    speakers = speakers or {}
    for rel in sorted(records):
        record = records[rel]
        clips = _label_speakers(record.get("clips", []), speakers.get(rel))
        files.append(
            {
                "path": rel,
                "status": record["status"],
                "reason": record.get("reason"),
                "clips": len(record.get("clips", [])),
                "notes": record.get("notes", []),
                "cached": bool(record.get("cached")),
            }
        )
        if record["status"] == "skipped":
            # Group by the reason's headline ("too short", "no audio track"), not its details.
            headline = str(record.get("reason")).split(" (")[0].split(":")[0]
            reasons[headline] = reasons.get(headline, 0) + 1
        for clip in clips:
            index_lines.append(json.dumps(clip, sort_keys=True))
            indexed.add(clip["file"])
    labelled = {json.loads(line).get("speaker_id") for line in index_lines} - {None}
    counts = {
        "files": len(files),
        "ok": sum(f["status"] == "ok" for f in files),
        "skipped": sum(f["status"] == "skipped" for f in files),
        "clips": len(index_lines),
        "cached": sum(f["cached"] for f in files),
        "ignored": len(ignored),
        "unreadable": len(unreadable),
        "skipped_by_reason": reasons,
        "speakers": len(labelled),
    }
    report = {
        "settings": settings.to_dict(),
        "files": files,
        "ignored": ignored,
        "unreadable": unreadable,
        "counts": counts,
    }
    _write_json(out / "report.json", report)
    if not switch_index:
        return report
    _write_json(out / "prepare.json", {"src": str(src.resolve()), "settings": settings.to_dict()})
    text = "".join(line + "\n" for line in index_lines)
    _write_atomic(out / "index.jsonl", lambda handle: handle.write(text.encode("utf-8")))
    _remove_unindexed_clips(out, indexed)
    return report


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m singer.data.prepare",
        description="Turn a folder of videos (searched recursively) into cached training clips.",
    )
    parser.add_argument("--src", required=True, type=Path, help="folder of videos")
    parser.add_argument("--out", required=True, type=Path, help="cache folder to write")
    parser.add_argument("--size", type=int, default=64, help="square clip size in pixels")
    parser.add_argument("--fps", type=float, default=25.0, help="frame rate of the clips")
    parser.add_argument(
        "--sr", type=int, default=16000, help="audio sample rate of the clips (mono)"
    )
    parser.add_argument(
        "--clip-seconds", type=float, default=4.0, help="long videos are cut into clips this long"
    )
    parser.add_argument(
        "--min-seconds", type=float, default=1.0, help="shorter files and tails are dropped"
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="parallel processes (crash-isolated)"
    )
    parser.add_argument("--no-detect", action="store_true", help="centre crop; no face detection")
    parser.add_argument(
        "--require-face", action="store_true", help="skip videos where no face is found"
    )
    parser.add_argument("--force", action="store_true", help="redo files that are already prepared")
    parser.add_argument(
        "--speakers",
        type=Path,
        help="sidecar naming each video's speaker: CSV 'path,speaker' or JSON {path: speaker} "
        "(default: speakers.csv / speakers.json in --src, if present)",
    )
    parser.add_argument(
        "--speaker-pattern",
        help="regular expression on each video's relative path whose group 'speaker' (or first "
        "group) is its speaker, e.g. '^(?P<speaker>[^/]+)/' for one folder per person",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--separate",
        default="none",
        metavar="NAME",
        help="vocal separator run on the audio first (python -m singer.registry separator)",
    )
    parser.add_argument(
        "--separator-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the separator, e.g. checkpoint=/weights/hdemucs_high.pt (repeatable)",
    )
    return parser


@entry_point
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    separator_args = {}
    if args.separate != "none" or args.separator_arg:
        # lazy: start-up: the separators load torch (seconds); see prepare_folder
        from singer.separation import separator_from_command_line

        separator_args = separator_from_command_line(args.separate, args.separator_arg)
    report = prepare_folder(
        args.src,
        args.out,
        size=args.size,
        fps=args.fps,
        sample_rate=args.sr,
        clip_seconds=args.clip_seconds,
        min_seconds=args.min_seconds,
        workers=args.workers,
        detect_faces=not args.no_detect,
        require_face=args.require_face,
        force=args.force,
        progress=not args.quiet,
        speakers=args.speakers,
        speaker_pattern=args.speaker_pattern,
        separator=args.separate,
        separator_args=separator_args,
    )
    counts = report["counts"]
    print(
        f"prepared {counts['ok']} ok, {counts['skipped']} skipped ({counts['clips']} clips, "
        f"{counts['cached']} files reused, {counts['speakers']} named speakers); "
        f"report: {args.out / 'report.json'}"
    )
    for folder in report["unreadable"]:
        print(
            f"warning: could not read folder {folder['path']}: {folder['reason']}", file=sys.stderr
        )
    if counts["files"] == 0:
        print(f"no video files found under {args.src}", file=sys.stderr)
        return 1
    return 0 if counts["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
