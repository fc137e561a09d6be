"""Media I/O. Writing uses PyAV (H.264 + AAC mp4). Video frames are read with decord;
files are probed and audio is decoded with PyAV (decord's audio resampling is faulty, see
:func:`read_audio`).

Conventions: frames are ``F×H×W×3`` uint8 RGB arrays; audio is a mono float32
waveform ``S`` in [-1, 1].
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

AAC_FRAME = 1024  # samples per AAC frame; PyAV's encoder wants whole frames


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
    identical inputs.
    """
    import av

    frames = np.ascontiguousarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be F×H×W×3 uint8, got {frames.shape} {frames.dtype}")
    num_frames, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"H.264/yuv420p needs even frame sizes, got {width}x{height}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    rate = Fraction(fps).limit_denominator(1001)

    with av.open(str(tmp), mode="w", format="mp4") as container:
        vstream = container.add_stream("libx264", rate=rate)
        vstream.width, vstream.height, vstream.pix_fmt = width, height, "yuv420p"
        # mbtree (macroblock-tree rate control) made the bytes differ between runs at small sizes.
        vstream.options = {
            "crf": str(crf),
            "preset": "medium",
            "tune": "fastdecode",
            "x264-params": "mbtree=0",
        }
        # A single encoder thread keeps the bitstream identical across machines.
        vstream.thread_count = 1
        astream = None
        if audio is not None:
            astream = container.add_stream("aac", rate=int(sample_rate))
            astream.layout = "mono"
            astream.bit_rate = audio_bitrate

        for i in range(num_frames):
            vf = av.VideoFrame.from_ndarray(frames[i], format="rgb24")
            vf.pts = i
            for packet in vstream.encode(vf):
                container.mux(packet)
        for packet in vstream.encode():
            container.mux(packet)

        if astream is not None:
            wave = np.clip(np.asarray(audio, dtype=np.float32).reshape(-1), -1.0, 1.0)
            for start in range(0, len(wave), AAC_FRAME):
                chunk = wave[start : start + AAC_FRAME]
                if len(chunk) < AAC_FRAME:
                    chunk = np.pad(chunk, (0, AAC_FRAME - len(chunk)))
                af = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
                af.sample_rate = int(sample_rate)
                af.pts = start
                for packet in astream.encode(af):
                    container.mux(packet)
            for packet in astream.encode():
                container.mux(packet)
    tmp.replace(path)
    return path


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
    import av

    path = Path(path)
    _check_file(path)
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError) as error:
        raise MediaError(path, _open_failure_reason(path, error)) from error

    with container:
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
    )


def as_numpy(array) -> np.ndarray:
    """decord returns its own NDArray, or a torch tensor when its torch bridge is on."""
    if hasattr(array, "asnumpy"):
        return array.asnumpy()
    if hasattr(array, "numpy"):
        return array.numpy()
    return np.asarray(array)


# The in-memory PyAV fallback below holds every frame; beyond this it refuses.
FALLBACK_MAX_BYTES = 2 * 1024**3


class InMemoryVideo:
    """A decord-like reader (``len``, ``get_frame_timestamp``, ``get_batch``) over frames
    decoded up front with PyAV.

    Only a fallback: decord 0.6 fails to copy out frames of some widths (48 and 72 px among
    them), and this covers such files. Every frame is held as ``F×H×W×3`` uint8.
    """

    def __init__(self, path: str | Path):
        import av

        path = Path(path)
        try:
            container = av.open(str(path), metadata_errors="ignore")
        except (av.error.FFmpegError, UnicodeDecodeError) as error:
            raise MediaError(path, _open_failure_reason(path, error)) from error
        with container:
            if not container.streams.video:
                raise MediaError(path, "no video stream")
            stream = container.streams.video[0]
            size = stream.frames * stream.codec_context.width * stream.codec_context.height * 3
            if size > FALLBACK_MAX_BYTES:
                raise MediaError(
                    path,
                    f"decord cannot decode this video, and at {size / 1e9:.1f} GB it is too large to decode in memory",
                )
            rate = float(stream.average_rate or stream.guessed_rate or 25)
            frames, starts, last_duration = [], [], 1.0 / rate
            try:
                for frame in container.decode(stream):
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
    import decord

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


def _read_audio_pyav(path: Path, sample_rate: int) -> np.ndarray:
    """Decode the first audio stream with PyAV, resampled to mono float32 at ``sample_rate``."""
    import av

    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError) as error:
        raise MediaError(path, _open_failure_reason(path, error)) from error
    with container:
        if not container.streams.audio:
            raise MediaError(path, "no audio track")
        resampler = av.AudioResampler(format="fltp", layout="mono", rate=int(sample_rate))
        chunks = []
        for frame in container.decode(container.streams.audio[0]):
            frame.pts = None  # let the resampler keep its own running clock
            chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
        chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32)


def _read_audio_decord(path: Path, sample_rate: int) -> np.ndarray:
    import decord

    reader = decord.AudioReader(
        str(path), ctx=decord.cpu(0), sample_rate=int(sample_rate), mono=True
    )
    wave = as_numpy(reader[:]).reshape(-1).astype(np.float32)
    del reader  # decord's AudioReader leaks if kept around
    return wave


def read_audio(
    path: str | Path, sample_rate: int = 16000, num_samples: int | None = None
) -> np.ndarray:
    """Decode the audio track as mono float32 ``S`` at ``sample_rate``.

    Any container FFmpeg reads (wav, flac, mp3, m4a, mp4, ...) at any native rate or channel
    count; stereo is downmixed the FFmpeg way (each channel at -3 dB). AAC encoder padding
    makes decoded audio a little longer than the video, so pass ``num_samples`` to trim (or
    zero-pad) to an exact length. Raises ``MediaError(path, "no audio track")`` when there
    is none.

    PyAV decodes first: decord 0.6's ``AudioReader`` resampling drops and repeats blocks of
    samples whenever the native rate differs from ``sample_rate`` for mono sources (and for
    some stereo ones), which tests/test_media.py checks for. decord is the fallback for files
    PyAV cannot decode.
    """
    import av

    path = Path(path)
    _check_file(path)
    try:
        wave = _read_audio_pyav(path, sample_rate)
    except av.error.FFmpegError as pyav_error:
        try:
            wave = _read_audio_decord(path, sample_rate)
        except Exception as error:  # decord raises RuntimeError or DECORDError
            raise MediaError(path, f"corrupt audio stream: {pyav_error}") from error
    if num_samples is not None:
        wave = fit_length(wave, num_samples)
    return wave


def read_image(path: str | Path, size: int | None = None) -> np.ndarray:
    """Read a png/jpg/... as ``H×W×3`` uint8 RGB (RGBA, grayscale, palette and 16-bit too).

    With ``size``, the image is centre-cropped to a square and resized to ``size×size``
    (the same framing as prepared training clips).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    _check_file(path)
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16-bit grayscale: PIL's RGB conversion would clip, so scale to 8 bits first.
                gray = np.asarray(image, dtype=np.float64)
                peak = 65535.0 if gray.max() > 255 else 255.0
                image = Image.fromarray(np.clip(gray / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
            rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as error:
        raise MediaError(path, f"not a readable image: {error}") from error
    if size is not None:
        import cv2

        height, width = rgb.shape[:2]
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        square = rgb[top : top + side, left : left + side]
        rgb = cv2.resize(square, (int(size), int(size)), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(rgb)
