"""Media I/O. Writing uses PyAV (H.264 + AAC mp4). Video frames are read with decord;
files are probed and audio is decoded with PyAV (decord's audio resampling is faulty, see
:func:`read_audio`).

Conventions: frames are ``F×H×W×3`` uint8 RGB arrays; audio is a mono float32
waveform ``S`` in [-1, 1].
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import decord
import numpy as np
from PIL import Image, UnidentifiedImageError

AAC_FRAME = 1024  # samples per AAC frame; PyAV's encoder wants whole frames


class Mp4Writer:
    """Stream frames into an H.264 (+ AAC) mp4, a chunk at a time: memory does not grow with
    the video's length.

    Video is H.264 / yuv420p (previewable in browsers and the MLflow UI), audio AAC. H and W
    must be even (a yuv420p requirement). The file is written as ``<path>.part`` and renamed
    to ``path`` by :meth:`close`; if the block ends with an exception, the part file is
    closed (with what was encoded so far) and left for inspection, and ``path`` is untouched.
    Output bytes are deterministic for identical inputs.

        with Mp4Writer(path, fps, sample_rate=16000) as writer:
            for frames in chunks:       # each K×H×W×3 uint8 RGB
                writer.write(frames)
            writer.set_audio(wave)      # mono float S, written when the writer closes
    """

    def __init__(
        self,
        path: str | Path,
        fps: float,
        *,
        sample_rate: int | None = None,
        crf: int = 18,
        audio_bitrate: int = 96_000,
    ):
        self.path = Path(path)
        self.part = self.path.with_name(self.path.name + ".part")
        self.fps, self.sample_rate = fps, sample_rate
        self.crf, self.audio_bitrate = crf, audio_bitrate
        self.frames_written = 0
        self._container = self._vstream = self._astream = None
        self._audio: np.ndarray | None = None
        self._size: tuple[int, int] | None = None

    def _open(self, height: int, width: int) -> None:
        if height % 2 or width % 2:
            raise ValueError(f"H.264/yuv420p needs even frame sizes, got {width}x{height}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self.part), mode="w", format="mp4")
        vstream = self._container.add_stream(
            "libx264", rate=Fraction(self.fps).limit_denominator(1001)
        )
        vstream.width, vstream.height, vstream.pix_fmt = width, height, "yuv420p"
        # mbtree (macroblock-tree rate control) made the bytes differ between runs at small sizes.
        vstream.options = {
            "crf": str(self.crf),
            "preset": "medium",
            "tune": "fastdecode",
            "x264-params": "mbtree=0",
        }
        # A single encoder thread keeps the bitstream identical across machines.
        vstream.thread_count = 1
        if self.sample_rate is not None:
            self._astream = self._container.add_stream("aac", rate=int(self.sample_rate))
            self._astream.layout = "mono"
            self._astream.bit_rate = self.audio_bitrate
        self._vstream, self._size = vstream, (height, width)

    def write(self, frames: np.ndarray) -> None:
        """Encode ``frames`` (K×H×W×3 uint8 RGB; every chunk the same H and W)."""
        frames = np.ascontiguousarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be F×H×W×3 uint8, got {frames.shape} {frames.dtype}")
        if self._container is None:
            self._open(*frames.shape[1:3])
        elif frames.shape[1:3] != self._size:
            raise ValueError(f"frame size changed from {self._size} to {frames.shape[1:3]}")
        for frame in frames:
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts = self.frames_written
            for packet in self._vstream.encode(vf):
                self._container.mux(packet)
            self.frames_written += 1

    def set_audio(self, audio: np.ndarray) -> None:
        """The mono audio track (S float), encoded after the video when the writer closes."""
        if self.sample_rate is None:
            raise ValueError("this writer was opened without an audio track (sample_rate=None)")
        self._audio = np.asarray(audio, dtype=np.float32).reshape(-1)

    def _finish_streams(self, with_audio: bool) -> None:
        for packet in self._vstream.encode():
            self._container.mux(packet)
        if self._astream is not None and with_audio:
            wave = np.clip(self._audio if self._audio is not None else np.zeros(0), -1.0, 1.0)
            for start in range(0, len(wave), AAC_FRAME):
                chunk = wave[start : start + AAC_FRAME]
                if len(chunk) < AAC_FRAME:
                    chunk = np.pad(chunk, (0, AAC_FRAME - len(chunk)))
                af = av.AudioFrame.from_ndarray(
                    chunk[None, :].astype(np.float32), format="fltp", layout="mono"
                )
                af.sample_rate = int(self.sample_rate)
                af.pts = start
                for packet in self._astream.encode(af):
                    self._container.mux(packet)
            for packet in self._astream.encode():
                self._container.mux(packet)

    def close(self) -> Path:
        """Finish the streams, close the file and move it to ``path``."""
        if self._container is None:
            raise ValueError(f"no frames were written to {self.path}")
        try:
            self._finish_streams(with_audio=True)
        finally:
            self._container.close()
            self._container = None
        self.part.replace(self.path)
        return self.path

    def abort(self) -> None:
        """Close the part file with what it holds (playable up to there); ``path`` untouched."""
        if self._container is None:
            return
        try:
            self._finish_streams(with_audio=False)
        except Exception:  # the part file is kept for inspection either way
            pass
        finally:
            self._container.close()
            self._container = None

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_mp4(
    path: str | Path,
    frames: np.ndarray,
    fps: float,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
    *,
    crf: int = 18,
    audio_bitrate: int = 96_000,
) -> Path:
    """Write ``frames`` (F×H×W×3 uint8 RGB) and optional mono ``audio`` (S float) as mp4.

    Video is H.264 / yuv420p (previewable in browsers and the MLflow UI), audio AAC.
    H and W must be even (a yuv420p requirement). Output bytes are deterministic for
    identical inputs. For long videos produced piece by piece, use :class:`Mp4Writer`.
    """
    frames = np.ascontiguousarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be F×H×W×3 uint8, got {frames.shape} {frames.dtype}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(
            f"H.264/yuv420p needs even frame sizes, got {frames.shape[2]}x{frames.shape[1]}"
        )
    writer = Mp4Writer(
        path,
        fps,
        sample_rate=int(sample_rate) if audio is not None else None,
        crf=crf,
        audio_bitrate=audio_bitrate,
    )
    with writer:
        writer.write(frames)
        if audio is not None:
            writer.set_audio(audio)
    return writer.path


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------

# Leading bytes of the containers a video may come in, to tell "corrupt video" apart from
# "not a media file at all" when FFmpeg refuses to open something.
_CONTAINER_SIGNATURES = (
    (4, b"ftyp", "mp4/mov"),
    (4, b"moov", "mp4/mov"),
    (4, b"mdat", "mp4/mov"),
    (4, b"free", "mp4/mov"),
    (4, b"wide", "mp4/mov"),
    (0, b"\x1aE\xdf\xa3", "mkv/webm"),
    (0, b"RIFF", "avi/wav"),
    (0, b"OggS", "ogg"),
    (0, b"FLV", "flv"),
    (0, b"\x00\x00\x01\xba", "mpeg"),
    (0, b"0&\xb2u", "asf/wmv"),
    (0, b"ID3", "mp3"),
    (0, b"fLaC", "flac"),
)


class MediaError(Exception):
    """A media file cannot be used; ``reason`` says why in words a user can act on."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass
class MediaInfo:
    """What a media file holds, as found by :func:`probe` (PyAV demux, no decoding)."""

    has_video: bool
    has_audio: bool
    fps: float  # average video frame rate (0.0 without video)
    num_frames: int  # video frames (packets) in the file
    duration_s: float
    width: int
    height: int
    sample_rate: int  # native audio rate (0 without audio)
    channels: int  # native audio channels (0 without audio)
    variable_frame_rate: bool
    image_format: str | None = None  # "png", "jpeg", ... when the file is a still image


# FFmpeg demuxers that read still images (a PNG renamed .mp4 opens as one-frame "video").
_IMAGE_DEMUXERS = {
    "image2": "image",
    "apng": "animated PNG",
    "gif": "GIF",
    "webp_pipe": "WebP",
    "png_pipe": "PNG",
    "jpeg_pipe": "JPEG",
    "bmp_pipe": "BMP",
    "tiff_pipe": "TIFF",
}


def _image_format(container) -> str | None:
    names = str(getattr(container.format, "name", "") or "").split(",")
    for name in names:
        if name in _IMAGE_DEMUXERS:
            return _IMAGE_DEMUXERS[name]
        if name.endswith("_pipe"):  # FFmpeg's other image demuxers
            return name[: -len("_pipe")].upper()
    return None


def container_kind(path: str | Path) -> str | None:
    """The container family named by the file's leading bytes ("mp4/mov", ...), or None."""
    with open(path, "rb") as handle:
        head = handle.read(16)
    for offset, magic, kind in _CONTAINER_SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            if kind == "avi/wav" and head[8:12] == b"WAVE":
                return "wav"
            return kind
    return None


def _open_failure_reason(path: Path, error: Exception) -> str:
    """Turn FFmpeg's refusal to open ``path`` into a reason a user understands."""
    message = getattr(error, "strerror", None) or str(error)
    kind = container_kind(path)
    if kind is not None:
        return f"unreadable or corrupt {kind} file (truncated?): {message}"
    with open(path, "rb") as handle:
        head = handle.read(512)
    try:
        text = head.decode("utf-8")
        if text and all(ch.isprintable() or ch in "\r\n\t" for ch in text):
            return "not a media file (looks like text)"
    except UnicodeDecodeError:
        pass
    return f"not a media file (unrecognised data: {message})"


def _check_file(path: Path) -> None:
    if not path.exists():
        raise MediaError(path, "file not found")
    if not path.is_file():
        raise MediaError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise MediaError(path, "zero-length file")


def probe(path: str | Path) -> MediaInfo:
    """Describe the streams of a media file without decoding it.

    Counts video packets (one per frame) and checks their timestamps, so a variable frame
    rate (VFR) file is recognised. Raises :class:`MediaError` with a readable reason for a
    missing, empty, corrupt or non-media file.
    """
    path = Path(path)
    _check_file(path)
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError) as error:
        raise MediaError(path, _open_failure_reason(path, error)) from error

    with container:
        image = _image_format(container)
        # A cover picture in an audio file appears as a one-frame "video" stream; it is not video.
        video_streams = [
            s
            for s in container.streams.video
            if not (s.disposition & av.stream.Disposition.attached_pic)
        ]
        audio_streams = list(container.streams.audio)
        if not video_streams and not audio_streams:
            raise MediaError(path, "not a media file (no audio or video streams)")

        width = height = num_frames = 0
        fps = 0.0
        variable = False
        duration = container.duration / 1e6 if container.duration else 0.0
        if video_streams:
            video = video_streams[0]
            width, height = video.codec_context.width, video.codec_context.height
            pts, last_duration = [], 0
            try:
                for packet in container.demux(video):
                    if packet.size == 0:  # the demuxer's end-of-stream marker
                        continue
                    num_frames += 1
                    if packet.pts is not None:
                        pts.append(packet.pts)
                        last_duration = packet.duration or 0
            except av.error.FFmpegError as error:
                raise MediaError(path, f"corrupt video stream: {error}") from error
            if len(pts) >= 2 and video.time_base:
                ordered = np.sort(np.asarray(pts, dtype=np.int64))
                steps = np.diff(ordered)
                steps = steps[steps > 0]
                step = float(np.median(steps)) if len(steps) else 0.0
                if not last_duration:
                    last_duration = step
                span = float((ordered[-1] - ordered[0] + last_duration) * video.time_base)
                duration = span if span > 0 else duration
                # Timestamps are rounded to the stream's time base, so allow 10 % of jitter.
                variable = bool(len(steps) and (steps.max() - steps.min()) > 0.1 * step)
            if num_frames and duration > 0 and (variable or not video.average_rate):
                fps = num_frames / duration
            elif video.average_rate:
                fps = float(video.average_rate)
            elif video.guessed_rate:
                fps = float(video.guessed_rate)

        sample_rate = channels = 0
        if audio_streams:
            audio = audio_streams[0].codec_context
            sample_rate = int(audio.sample_rate or 0)
            channels = int(audio.layout.nb_channels) if audio.layout else int(audio.channels or 0)
            if duration <= 0 and audio_streams[0].duration and audio_streams[0].time_base:
                duration = float(audio_streams[0].duration * audio_streams[0].time_base)

    return MediaInfo(
        has_video=bool(video_streams),
        has_audio=bool(audio_streams),
        fps=fps,
        num_frames=num_frames,
        duration_s=float(duration),
        width=int(width),
        height=int(height),
        sample_rate=sample_rate,
        channels=channels,
        variable_frame_rate=variable,
        image_format=image,
    )


def as_numpy(array) -> np.ndarray:
    """decord returns its own NDArray, or a torch tensor when its torch bridge is on."""
    if hasattr(array, "asnumpy"):
        return array.asnumpy()
    if hasattr(array, "numpy"):
        return array.numpy()
    return np.asarray(array)


# The in-memory PyAV fallback below holds every frame; beyond this it refuses, before
# decoding when the headers tell the size, and while decoding whatever the container says.
FALLBACK_MAX_BYTES = 1024**3
# One decoded frame larger than this is refused by the readers below (8K × 8K RGB is 192 MiB).
MAX_FRAME_BYTES = 256 * 1024**2


def expected_frames(stream, container=None) -> int:
    """How many frames a video stream holds, from its headers (no decoding).

    ``stream.frames`` when the container records it (mp4); otherwise duration × rate
    (Matroska/WebM report 0 frames), from the stream's or the container's duration. 0 when
    the headers say nothing.
    """
    if stream.frames:
        return int(stream.frames)
    rate = float(stream.average_rate or stream.guessed_rate or 0)
    duration = 0.0
    if stream.duration and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    elif container is not None and container.duration:
        duration = container.duration / 1e6
    return int(math.ceil(duration * rate)) if rate > 0 and duration > 0 else 0


class InMemoryVideo:
    """A decord-like reader (``len``, ``get_frame_timestamp``, ``get_batch``) over frames
    decoded up front with PyAV.

    Only a fallback: decord 0.6 fails to copy out frames of some widths (48 and 72 px among
    them), and this covers such files. Every frame is held as ``F×H×W×3`` uint8.
    """

    def __init__(self, path: str | Path):
        path = Path(path)
        try:
            container = av.open(str(path), metadata_errors="ignore")
        except (av.error.FFmpegError, UnicodeDecodeError) as error:
            raise MediaError(path, _open_failure_reason(path, error)) from error
        with container:
            if not container.streams.video:
                raise MediaError(path, "no video stream")
            stream = container.streams.video[0]
            frame_bytes = stream.codec_context.width * stream.codec_context.height * 3

            def too_large(size: float) -> MediaError:
                return MediaError(
                    path,
                    f"decord cannot decode this video, and at {size / 1e9:.1f} GB or more it is "
                    f"too large to decode in memory (the limit is {FALLBACK_MAX_BYTES / 1e9:.1f} GB)",
                )

            size = expected_frames(stream, container) * frame_bytes
            if size > FALLBACK_MAX_BYTES:
                raise too_large(size)
            rate = float(stream.average_rate or stream.guessed_rate or 25)
            frames, starts, last_duration, held = [], [], 1.0 / rate, 0
            try:
                for frame in container.decode(stream):
                    # The headers may understate the length: the budget holds while decoding.
                    held += frame.width * frame.height * 3
                    if held > FALLBACK_MAX_BYTES:
                        raise too_large(held)
                    frames.append(frame.to_ndarray(format="rgb24"))
                    starts.append(frame.time if frame.time is not None else len(starts) / rate)
                    if frame.duration and frame.time_base:
                        last_duration = float(frame.duration * frame.time_base)
            except av.error.FFmpegError as error:
                raise MediaError(path, f"corrupt video stream: {error}") from error
        if not frames:
            raise MediaError(path, "no video frames")
        order = np.argsort(np.asarray(starts), kind="stable")
        self._frames = [frames[i] for i in order]
        begin = np.asarray(starts, dtype=np.float64)[order]
        end = np.append(begin[1:], begin[-1] + last_duration)
        self._timestamps = np.stack([begin, end], axis=1)

    def __len__(self) -> int:
        return len(self._frames)

    def get_frame_timestamp(self, indices) -> np.ndarray:
        return self._timestamps[np.asarray(indices, dtype=np.int64)]

    def get_batch(self, indices) -> np.ndarray:
        return np.stack([self._frames[int(i)] for i in indices])


@contextmanager
def open_video(path: str | Path, *, num_threads: int = 0):
    """A frame reader for one file, released as soon as the block ends.

    Normally a decord ``VideoReader``; when decord cannot open the file or copy out its
    first frame, an :class:`InMemoryVideo` decoded with PyAV. decord leaks when readers
    live long, so open one per file and keep the block short.
    """
    path = Path(path)
    _check_file(path)
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=num_threads)
        reader.get_batch([0])  # decord's frame-size bug shows only when a frame is copied out
    except Exception:  # decord raises RuntimeError or DECORDError; PyAV explains or succeeds
        reader = InMemoryVideo(path)
    try:
        yield reader
    finally:
        del reader


def frame_timestamps(reader) -> np.ndarray:
    """Presentation times of every frame of a reader from :func:`open_video`: ``F×2`` (start, end) seconds."""
    count = len(reader)
    if count == 0:
        return np.zeros((0, 2), dtype=np.float64)
    return np.asarray(reader.get_frame_timestamp(np.arange(count)), dtype=np.float64).reshape(
        count, 2
    )


def resample_indices(timestamps: np.ndarray, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Pick source frames for a constant ``fps`` grid by nearest presentation timestamp.

    ``timestamps`` is ``F×2`` (start, end) seconds as from :func:`frame_timestamps`. The grid
    starts at the first frame and covers the video's whole span (last frame's end), so
    the result has ``floor(span · fps)`` frames (at least one when the video has any).
    Works for variable frame rate because it looks at timestamps, not frame counts.
    Returns ``(indices K int64, grid times K float64 seconds)``.
    """
    timestamps = np.asarray(timestamps, dtype=np.float64).reshape(-1, 2)
    if len(timestamps) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    order = np.argsort(timestamps[:, 0], kind="stable")
    starts = timestamps[order, 0]
    first, end = starts[0], max(float(timestamps[:, 1].max()), float(starts[-1]))
    # The epsilon keeps an exact span (2.0 s × 25 fps) from losing its last frame to rounding.
    count = max(1, int(np.floor((end - first) * fps + 1e-6)))
    times = first + np.arange(count, dtype=np.float64) / fps
    right = np.clip(np.searchsorted(starts, times), 0, len(starts) - 1)
    left = np.clip(right - 1, 0, len(starts) - 1)
    # Ties (exactly half-way) go to the earlier frame; a small tolerance absorbs float noise.
    nearest = np.where(
        np.abs(times - starts[left]) <= np.abs(starts[right] - times) + 1e-9, left, right
    )
    return order[nearest].astype(np.int64), times


def read_video(path: str | Path, fps: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode a whole video with decord: ``(frames F×H×W×3 uint8 RGB, timestamps_s F)``.

    With ``fps`` given, frames are resampled to that rate by nearest presentation timestamp
    (VFR-safe) and the timestamps are the output grid times ``t0 + k / fps``. Without it,
    every frame is returned with its own start time. Meant for short files; long ones are
    read clip by clip in :mod:`singer.data.prepare`.
    """
    with open_video(path) as reader:
        timestamps = frame_timestamps(reader)
        if fps is None:
            indices, times = np.arange(len(timestamps)), timestamps[:, 0].copy()
        else:
            indices, times = resample_indices(timestamps, fps)
        if len(indices) == 0:
            raise MediaError(path, "no video frames")
        frames = as_numpy(reader.get_batch(indices.tolist()))
    return np.ascontiguousarray(frames, dtype=np.uint8), times


def fit_length(wave: np.ndarray, num_samples: int) -> np.ndarray:
    """Trim or zero-pad a 1-D waveform to exactly ``num_samples``."""
    wave = np.asarray(wave, dtype=np.float32).reshape(-1)
    if len(wave) >= num_samples:
        return wave[:num_samples]
    return np.pad(wave, (0, num_samples - len(wave)))


def _open_audio_container(path: Path):
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError) as error:
        raise MediaError(path, _open_failure_reason(path, error)) from error
    if not container.streams.audio:
        container.close()
        raise MediaError(path, "no audio track")
    return container


def _decoded_chunks(container, sample_rate: int):
    """The first audio stream, decoded in order and resampled to mono float32 at
    ``sample_rate``: one short chunk (one decoded frame) at a time."""
    resampler = av.AudioResampler(format="fltp", layout="mono", rate=int(sample_rate))
    for frame in container.decode(container.streams.audio[0]):
        frame.pts = None  # let the resampler keep its own running clock
        for out in resampler.resample(frame):
            yield out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
    for out in resampler.resample(None):
        yield out.to_ndarray().reshape(-1).astype(np.float32, copy=False)


def _read_audio_pyav(path: Path, sample_rate: int, max_seconds: float | None = None) -> np.ndarray:
    """Decode the first audio stream with PyAV, resampled to mono float32 at ``sample_rate``;
    :class:`MediaError` as soon as more than ``max_seconds`` are decoded."""
    limit = math.inf if max_seconds is None else max_seconds * sample_rate
    chunks, total = [], 0
    with _open_audio_container(path) as container:
        for chunk in _decoded_chunks(container, sample_rate):
            total += len(chunk)
            if total > limit:
                raise MediaError(path, f"audio longer than {max_seconds:g} s")
            chunks.append(chunk)
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32)


class AudioStream:
    """The audio track of a file, decoded front to back and handed out in consecutive ranges.

    ``read(start, count)`` returns samples ``[start, start + count)`` (mono float32 at
    ``sample_rate``, zero-padded past the end); ``start`` never goes back. Memory holds one
    decoded chunk plus what is asked for, whatever the file's length: long files are read
    clip by clip. ``decoded`` is the number of real samples seen so far.

    The samples are those of :func:`read_audio`. When PyAV cannot decode the file from the
    start, the whole track is read with :func:`read_audio` instead (its decord fallback).
    """

    def __init__(self, path: str | Path, sample_rate: int = 16000):
        self.path = Path(path)
        _check_file(self.path)
        self.sample_rate = int(sample_rate)
        self.position = 0  # index of the first sample in self._pending
        self.decoded = 0
        self._pending = np.zeros(0, dtype=np.float32)
        self._container = _open_audio_container(self.path)
        self._chunks = _decoded_chunks(self._container, self.sample_rate)
        self._whole: np.ndarray | None = None

    def _next_chunk(self) -> np.ndarray | None:
        if self._whole is not None:
            return None
        try:
            return next(self._chunks)
        except StopIteration:
            return None
        except av.error.FFmpegError as error:
            if self.decoded:  # part of the track was handed out already: no starting over
                raise MediaError(self.path, f"corrupt audio stream: {error}") from error
            self._whole = read_audio(self.path, self.sample_rate)
            self.decoded = len(self._whole)
            return None

    def read(self, start: int, count: int) -> np.ndarray:
        if start < self.position:
            raise ValueError(f"AudioStream reads forward only: {start} < {self.position}")
        while self._whole is None and self.position + len(self._pending) < start + count:
            self._drop_before(start)  # nothing behind the reader is kept, even while skipping
            if not self._pull():
                break
        if self._whole is not None:
            self.position = start
            return fit_length(self._whole[start:], count)
        self._drop_before(start)
        if self.position < start:  # the track ended before `start`
            return np.zeros(count, dtype=np.float32)
        return fit_length(self._pending[:count], count)

    def _drop_before(self, start: int) -> None:
        drop = min(max(0, start - self.position), len(self._pending))
        self._pending, self.position = self._pending[drop:], self.position + drop

    def _pull(self) -> bool:
        """Decode one more chunk into the pending samples; False at the end of the track."""
        chunk = self._next_chunk()
        if chunk is None:
            return False
        self.decoded += len(chunk)
        self._pending = np.concatenate([self._pending, chunk]) if len(self._pending) else chunk
        return True

    def drain(self) -> int:
        """Decode the rest (nothing is kept) and return the track's length in samples."""
        self.position += len(self._pending)
        self._pending = self._pending[:0]
        while self._whole is None and self._pull():
            self.position += len(self._pending)
            self._pending = self._pending[:0]
        return self.decoded

    def close(self) -> None:
        if self._container is not None:
            self._chunks.close()
            self._container.close()
            self._container = None

    def __enter__(self) -> AudioStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read_audio_decord(path: Path, sample_rate: int) -> np.ndarray:
    reader = decord.AudioReader(
        str(path), ctx=decord.cpu(0), sample_rate=int(sample_rate), mono=True
    )
    wave = as_numpy(reader[:]).reshape(-1).astype(np.float32)
    del reader  # decord's AudioReader leaks if kept around
    return wave


def read_audio(
    path: str | Path,
    sample_rate: int = 16000,
    num_samples: int | None = None,
    *,
    max_seconds: float | None = None,
) -> np.ndarray:
    """Decode the audio track as mono float32 ``S`` at ``sample_rate``.

    Any container FFmpeg reads (wav, flac, mp3, m4a, mp4, ...) at any native rate or channel
    count; stereo is downmixed the FFmpeg way (each channel at -3 dB). AAC encoder padding
    makes decoded audio a little longer than the video, so pass ``num_samples`` to trim (or
    zero-pad) to an exact length. Raises ``MediaError(path, "no audio track")`` when there
    is none.

    ``max_seconds`` bounds the memory the whole track may take: decoding stops with a
    :class:`MediaError` as soon as it passes that length. For long files read clip by clip,
    use :class:`AudioStream`.

    PyAV decodes first: decord 0.6's ``AudioReader`` resampling drops and repeats blocks of
    samples whenever the native rate differs from ``sample_rate`` for mono sources (and for
    some stereo ones), which tests/test_media.py checks for. decord is the fallback for files
    PyAV cannot decode.
    """
    path = Path(path)
    _check_file(path)
    try:
        wave = _read_audio_pyav(path, sample_rate, max_seconds)
    except av.error.FFmpegError as pyav_error:
        try:
            wave = _read_audio_decord(path, sample_rate)
        except Exception as error:  # decord raises RuntimeError or DECORDError
            raise MediaError(path, f"corrupt audio stream: {pyav_error}") from error
        if max_seconds is not None and len(wave) > max_seconds * sample_rate:
            raise MediaError(path, f"audio longer than {max_seconds:g} s")
    if num_samples is not None:
        wave = fit_length(wave, num_samples)
    return wave


MAX_IMAGE_PIXELS = 40_000_000  # a face image larger than this is refused before decoding


def read_image(path: str | Path, size: int | None = None) -> np.ndarray:
    """Read a png/jpg/... as ``H×W×3`` uint8 RGB (RGBA, grayscale, palette and 16-bit too).

    With ``size``, the image is centre-cropped to a square and resized to ``size×size``
    (the same framing as prepared training clips).
    """
    path = Path(path)
    _check_file(path)
    try:
        with Image.open(path) as image:
            # The header gives the size: refuse before decoding (a few kB of PNG can hold
            # gigapixels).
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise MediaError(
                    path,
                    f"image too large: {width}×{height} px is over "
                    f"{MAX_IMAGE_PIXELS / 1e6:.0f} Mpx (downscale it; faces are used at a few "
                    "hundred px)",
                )
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16-bit grayscale: PIL's RGB conversion would clip, so scale to 8 bits first.
                gray = np.asarray(image, dtype=np.float64)
                peak = 65535.0 if gray.max() > 255 else 255.0
                image = Image.fromarray(np.clip(gray / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
            rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except Image.DecompressionBombError as error:
        raise MediaError(path, f"image too large: {error}") from error
    except (UnidentifiedImageError, OSError) as error:
        raise MediaError(path, f"not a readable image: {error}") from error
    if size is not None:
        height, width = rgb.shape[:2]
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        square = rgb[top : top + side, left : left + side]
        rgb = cv2.resize(square, (int(size), int(size)), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(rgb)
