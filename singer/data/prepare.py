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

    CACHE/clips/<clip_id>.npz    frames F×H×W×3 uint8, audio S float32 (uncompressed: fast to load)
    CACHE/index.jsonl            one record per clip (source, segment, start_s, crop, kind, truth...)
    CACHE/report.json            every input file: status "ok" | "skipped", reason, clips, notes
    CACHE/prepare.json           the settings
    CACHE/records/<key>.json     one record per input file, written as soon as it is done

``index.jsonl`` and ``report.json`` are rebuilt from ``records/`` at the end of every run, so a
killed run loses at most the files in progress, and a re-run skips every file whose source
(path, size, mtime) and settings are unchanged.

When a folder under ``src`` holds a SynthSing ``meta.jsonl``, each listed file's ``kind``,
``speaker_id`` and per-frame ``truth`` travel into the index, sliced to each clip's frames.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from singer.data.media import (
    MediaError,
    as_numpy,
    container_kind,
    fit_length,
    frame_timestamps,
    open_video,
    probe,
    read_audio,
    resample_indices,
)

# Bumped whenever the clip contents change for the same settings, so old caches are redone.
PREPARE_VERSION = 1

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

META_NAME = "meta.jsonl"


# --------------------------------------------------------------------------------------
# Settings and input discovery
# --------------------------------------------------------------------------------------


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


def find_inputs(src: Path, *, exclude: Path | None = None) -> tuple[list[Path], list[Path]]:
    """Video files under ``src`` (recursive, sorted) and the other files that were ignored.

    Hidden files and folders are skipped, and so is ``exclude`` (the cache, if it sits inside ``src``).
    """
    videos, ignored = [], []
    exclude = exclude.resolve() if exclude is not None else None
    for root, dirs, files in os.walk(src):
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
            (videos if looks_like_video(path) else ignored).append(path)
    return videos, ignored


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
        import cv2

        xml = Path(getattr(getattr(cv2, "data", None), "haarcascades", "") or "") / (
            "haarcascade_frontalface_default.xml"
        )
        if hasattr(cv2, "CascadeClassifier") and xml.is_file():
            self._cascade = cv2.CascadeClassifier(str(xml))
            self.backend = "opencv-haar"
            return
        try:
            from skimage.data import lbp_frontal_face_cascade_filename
            from skimage.feature import Cascade

            self._cascade = Cascade(lbp_frontal_face_cascade_filename())
            self.backend = "skimage-lbp"
        except ImportError:
            pass

    def detect(self, frame: np.ndarray) -> tuple[float, float, float] | None:
        """The largest face in an ``H×W×3`` uint8 frame as (centre x, centre y, side) pixels, or None."""
        import cv2

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
    frames = as_numpy(reader.get_batch(picks.tolist()))
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
    previous_files: list[str] = (),
) -> dict:
    """Prepare one video into ``out/clips``; return (and write) its per-file record.

    ``previous_files`` are the clip files of an earlier run of this source; those not
    rewritten now are removed. Never raises for a bad input: the record then has
    ``status="skipped"`` and a ``reason``, and no clips of this file stay behind.
    """
    record = {"path": rel, "status": "ok", "reason": None, "clips": [], "notes": []}
    written: list[str] = []
    try:
        record["fingerprint"] = _fingerprint(path, settings, meta_record)
        record["clips"], record["notes"] = _prepare_clips(
            path, rel=rel, out=out, settings=settings, meta_record=meta_record, written=written
        )
    except _Skip as skip:
        record.update(status="skipped", reason=str(skip), clips=[])
    except MediaError as error:
        record.update(status="skipped", reason=error.reason, clips=[])
    except Exception as error:  # an odd file must never stop the batch
        first_line = (str(error).splitlines() or [""])[0]
        reason = f"unreadable or odd streams ({type(error).__name__}: {first_line})"
        record.update(status="skipped", reason=reason, clips=[])
    keep = {clip["file"] for clip in record["clips"]}
    for name in {*previous_files, *written} - keep:
        (out / name).unlink(missing_ok=True)
    _write_json(_record_path(out, rel), record)
    return record


def split_segments(total: int, *, clip_frames: int, min_frames: int) -> list[tuple[int, int]]:
    """``[first, stop)`` frame ranges of ``clip_frames``; a tail shorter than ``min_frames`` is dropped."""
    segments = [(first, min(first + clip_frames, total)) for first in range(0, total, clip_frames)]
    return [(first, stop) for first, stop in segments if stop - first >= min_frames]


def _read_square_frames(
    reader, indices: np.ndarray, *, box: tuple[int, int, int], size: int
) -> np.ndarray:
    """Decode source frames ``indices``, crop the square ``box`` = (x, y, side), resize: ``K×size×size×3``."""
    import cv2

    x, y, side = box
    frames = np.empty((len(indices), size, size, 3), dtype=np.uint8)
    # A chunk at a time keeps memory small for large source frames.
    for chunk in range(0, len(indices), DECODE_CHUNK):
        batch = as_numpy(reader.get_batch(indices[chunk : chunk + DECODE_CHUNK].tolist()))
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
    written: list[str],
) -> tuple[list[dict], list[str]]:
    """Write the clips of one source; return (index entries, notes). ``written`` collects clip files."""
    info = probe(path)
    if not info.has_video:
        raise _Skip("no video stream (audio only)" if info.has_audio else "not a video")
    if not info.has_audio:
        raise _Skip("no audio track")
    if info.num_frames == 0:
        raise _Skip("no video frames")
    notes = []
    if info.variable_frame_rate:
        notes.append(f"variable frame rate (average {info.fps:.2f} fps); resampled by timestamp")

    detector = FaceDetector() if settings.detect_faces else None
    if detector is not None and detector.backend is None:
        notes.append("no face detector installed; centre crop")
        detector = None

    clips, faceless = [], 0
    with open_video(path, num_threads=1) as reader:
        timestamps = frame_timestamps(reader)
        indices, _ = resample_indices(timestamps, settings.fps)
        total = len(indices)
        if total < settings.min_frames:
            raise _Skip(f"too short ({total / settings.fps:.2f} s < {settings.min_seconds:g} s)")
        # Audio and video are taken to start together (both streams start at 0 in nearly all files).
        audio = read_audio(path, sample_rate=settings.sample_rate)
        missing = settings.samples_for(total) - len(audio)
        if missing > settings.sample_rate // 2:
            notes.append(
                f"audio ends {missing / settings.sample_rate:.2f} s before the video; padded with silence"
            )
        audio = fit_length(audio, settings.samples_for(total))
        if settings.separator != "none":  # the clips keep the voice alone, not the music
            from singer.separation import separate

            audio = separate(
                audio,
                settings.separator,
                dict(settings.separator_args),
                progress=True,
                sample_rate=settings.sample_rate,
            )

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
            frames = _read_square_frames(reader, source, box=(x, y, side), size=settings.size)

            begin = settings.samples_for(first)
            wave = fit_length(audio[begin:], settings.samples_for(stop - first))
            clip_id = _clip_id(rel, segment)
            written.append(f"clips/{clip_id}.npz")
            _write_atomic(
                out / "clips" / f"{clip_id}.npz",
                lambda handle, frames=frames, wave=wave: np.savez(
                    handle, frames=frames, audio=wave
                ),
            )

            entry = {
                "clip_id": clip_id,
                "file": f"clips/{clip_id}.npz",
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
                truth = _slice_truth(
                    meta_record, timestamps[source, 0] - timestamps[:, 0].min(), info.fps
                )
                if truth is not None:
                    entry["truth"] = truth
            clips.append(entry)

    if faceless:
        if faceless == len(segments):
            notes.append("no face found; centre crop")
        else:
            notes.append(f"no face found in {faceless} of {len(segments)} clips; centre crop there")
    return clips, notes


def _prepare_task(task: dict) -> dict:
    """Worker entry point (module level so a process pool can pickle it)."""
    try:
        import cv2

        cv2.setNumThreads(1)  # parallelism comes from --workers, not from threads inside one
    except Exception:
        pass
    return prepare_file(
        Path(task["path"]),
        rel=task["rel"],
        out=Path(task["out"]),
        settings=task["settings"],
        meta_record=task["meta_record"],
        previous_files=task["previous_files"],
    )


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
    for name in task["previous_files"]:
        (Path(task["out"]) / name).unlink(missing_ok=True)
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
    unfinished = []
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
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
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
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
    separator: str = "none",
    separator_args: dict | None = None,
) -> dict:
    """Prepare every video under ``src`` into the clip cache ``out``; return the report.

    ``separator`` (a name in ``python -m singer.registry separator``, with ``separator_args``)
    runs on each file's audio before it is cut into clips, so the cache holds the separated
    voice; the clips' ``separator`` and the report's settings record it.

    The report (also at ``out/report.json``) is ``{"settings", "files": [{"path", "status",
    "reason", "clips", "notes", "cached"}], "ignored": [...], "counts": {...}}`` and lists every
    input file. Files already prepared with the same settings are reused unless ``force``.
    """
    from tqdm.auto import tqdm

    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise FileNotFoundError(f"source folder {src} does not exist")
    if require_face and not detect_faces:
        raise ValueError(
            "require_face needs face detection (do not combine it with detect_faces=False)"
        )
    if size < 2 or fps <= 0 or sample_rate <= 0 or clip_seconds <= 0 or min_seconds < 0:
        raise ValueError("size ≥ 2, and fps, sample_rate and clip_seconds must be positive")
    if separator != "none":
        from singer.separation import load_separator

        load_separator(separator, separator_args)  # a bad name, option or weight file fails here
    backend = FaceDetector().backend if detect_faces else None
    if require_face and backend is None:
        raise ValueError(
            "require_face needs a face detector: install scikit-image, or opencv-python-headless<5"
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
    videos, ignored = find_inputs(src, exclude=out if inside else None)
    meta = load_synth_meta(src)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "prepare.json", {"src": str(src.resolve()), "settings": settings.to_dict()})

    records: dict[str, dict] = {}
    tasks = []
    for path in videos:
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
                "previous_files": [clip["file"] for clip in (old or {}).get("clips", [])],
            }
        )

    bar = tqdm(
        total=len(videos), initial=len(records), desc="prepare", unit="file", disable=not progress
    )
    tally = {"ok": sum(r["status"] == "ok" for r in records.values())}
    tally["skipped"] = len(records) - tally["ok"]

    def on_done(task: dict, record: dict) -> None:
        records[task["rel"]] = {**record, "cached": False}
        tally[record["status"]] += 1
        bar.update(1)
        bar.set_postfix(tally)

    try:
        run_tasks(tasks, workers=int(workers), on_done=on_done)
    finally:
        bar.close()
        report = _write_outputs(
            out, settings, records, ignored=[p.relative_to(src).as_posix() for p in ignored]
        )
    return report


def _write_outputs(
    out: Path, settings: Settings, records: dict[str, dict], *, ignored: list[str]
) -> dict:
    """Rebuild index.jsonl and report.json from the per-file records (sorted by path)."""
    files, index_lines, reasons = [], [], {}
    for rel in sorted(records):
        record = records[rel]
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
        index_lines.extend(json.dumps(clip, sort_keys=True) for clip in record.get("clips", []))
    counts = {
        "files": len(files),
        "ok": sum(f["status"] == "ok" for f in files),
        "skipped": sum(f["status"] == "skipped" for f in files),
        "clips": len(index_lines),
        "cached": sum(f["cached"] for f in files),
        "ignored": len(ignored),
        "skipped_by_reason": reasons,
    }
    report = {"settings": settings.to_dict(), "files": files, "ignored": ignored, "counts": counts}
    text = "".join(line + "\n" for line in index_lines)
    _write_atomic(out / "index.jsonl", lambda handle: handle.write(text.encode("utf-8")))
    _write_json(out / "report.json", report)
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.require_face and args.no_detect:
        build_parser().error("--require-face needs face detection; drop --no-detect")
    if not args.src.is_dir():
        build_parser().error(f"--src {args.src} is not a folder")
    separator_args = {}
    if args.separate != "none" or args.separator_arg:
        from singer.separation import check_separator

        try:  # an unknown name, a bad option or a missing weight file: say so before any work
            separator_args = check_separator(args.separate, args.separator_arg)
        except (KeyError, ValueError, OSError) as err:
            build_parser().error(str(err))
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
        separator=args.separate,
        separator_args=separator_args,
    )
    counts = report["counts"]
    print(
        f"prepared {counts['ok']} ok, {counts['skipped']} skipped ({counts['clips']} clips, "
        f"{counts['cached']} files reused); report: {args.out / 'report.json'}"
    )
    if counts["files"] == 0:
        print(f"no video files found under {args.src}", file=sys.stderr)
        return 1
    return 0 if counts["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
