"""Media readers: probe, read_video (timestamp resampling, VFR), read_audio, read_image."""

import wave
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from singer.data.media import (
    MediaError,
    _read_audio_decord,
    probe,
    read_audio,
    read_image,
    read_video,
    resample_indices,
    write_mp4,
)

# ---------------------------------------------------------------------------------------
# Test media: frames carry their own index in their colour, so a decoded frame tells which
# source frame it came from (flat colours survive H.264 to within a few levels).
# ---------------------------------------------------------------------------------------


def indexed_frames(count: int, height: int = 48, width: int = 64) -> np.ndarray:
    """``count×H×W×3`` uint8 frames; frame i is a flat colour that encodes i (up to 255)."""
    frames = np.empty((count, height, width, 3), dtype=np.uint8)
    for i in range(count):
        frames[i] = ((i % 16) * 16 + 8, (i // 16) * 16 + 8, 128)
    return frames


def frame_ids(frames: np.ndarray) -> np.ndarray:
    """Inverse of :func:`indexed_frames` for decoded ``F×H×W×3`` frames."""
    red = frames[..., 0].reshape(len(frames), -1).mean(axis=1)
    green = frames[..., 1].reshape(len(frames), -1).mean(axis=1)
    return (np.round((red - 8) / 16) + 16 * np.round((green - 8) / 16)).astype(int)


def tone(freq: float, seconds: float, sample_rate: int, amplitude: float = 0.4) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_av(path, frames, times_s, audio=None, sample_rate=16000) -> Path:
    """Write frames at arbitrary presentation times (VFR possible) and C×S audio (mono or stereo).

    ``frames=None`` writes an audio-only file. The container follows the extension
    (.mp4, .mkv, ...). Times are stored in a 1/90000 time base.
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    time_base = Fraction(1, 90000)
    with av.open(str(path), mode="w") as container:
        # Every stream must exist before the first packet is muxed.
        if frames is not None:
            steps = np.diff(times_s)
            video = container.add_stream(
                "libx264", rate=int(round(1 / np.median(steps))) if len(steps) else 25
            )
            video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            video.time_base = time_base
            video.codec_context.time_base = time_base
        if audio is not None:
            audio = np.atleast_2d(np.asarray(audio, dtype=np.float32))
            layout = "mono" if audio.shape[0] == 1 else "stereo"
            sound = container.add_stream("aac", rate=sample_rate)
            sound.layout = layout

        if frames is not None:
            for frame, time in zip(frames, times_s):
                picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
                picture.pts, picture.time_base = int(round(time * 90000)), time_base
                for packet in video.encode(picture):
                    container.mux(packet)
            for packet in video.encode():
                container.mux(packet)
        if audio is not None:
            for start in range(0, audio.shape[1], 1024):
                chunk = audio[:, start : start + 1024]
                chunk = np.ascontiguousarray(np.pad(chunk, ((0, 0), (0, 1024 - chunk.shape[1]))))
                block = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
                block.sample_rate, block.pts = sample_rate, start
                for packet in sound.encode(block):
                    container.mux(packet)
            for packet in sound.encode():
                container.mux(packet)
    return path


def write_wav(path, audio: np.ndarray, sample_rate: int) -> Path:
    """16-bit PCM wav from C×S float audio."""
    audio = np.atleast_2d(audio)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(audio.shape[0])
        handle.setsampwidth(2)
        handle.setframerate(sample_rate)
        handle.writeframes((np.clip(audio.T, -1, 1) * 32767).astype("<i2").tobytes())
    return Path(path)


def peak_hz(wave_: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave_ * np.hanning(len(wave_))))
    return float(np.fft.rfftfreq(len(wave_), 1 / sample_rate)[spectrum.argmax()])


def vfr_times(count: int) -> np.ndarray:
    """Alternating 20 ms / 60 ms frame gaps (average 25 fps)."""
    return np.concatenate([[0.0], np.cumsum(np.where(np.arange(count - 1) % 2 == 0, 0.02, 0.06))])


# ---------------------------------------------------------------------------------------


def test_probe_constant_rate_file(tmp_path):
    path = write_mp4(tmp_path / "a.mp4", indexed_frames(50), 25, tone(440, 2, 16000), 16000)
    info = probe(path)
    assert info.has_video and info.has_audio
    assert info.fps == pytest.approx(25)
    assert info.num_frames == 50
    assert info.duration_s == pytest.approx(2.0, abs=0.05)
    assert (info.width, info.height) == (64, 48)
    assert (info.sample_rate, info.channels) == (16000, 1)
    assert not info.variable_frame_rate


@pytest.mark.parametrize("source_fps", [24, 30, 60])
def test_read_video_resamples_by_nearest_timestamp(tmp_path, source_fps):
    count = 2 * source_fps
    path = write_av(
        tmp_path / f"v{source_fps}.mp4", indexed_frames(count), np.arange(count) / source_fps
    )
    info = probe(path)
    assert info.fps == pytest.approx(source_fps) and info.num_frames == count
    assert not info.variable_frame_rate

    native, native_times = read_video(path)
    assert native.shape == (count, 48, 64, 3)
    np.testing.assert_array_equal(frame_ids(native), np.arange(count))
    np.testing.assert_allclose(native_times, np.arange(count) / source_fps, atol=1e-3)

    frames, times = read_video(path, fps=25)
    assert frames.dtype == np.uint8 and len(frames) == 50  # 2 s at 25 fps
    np.testing.assert_allclose(times, np.arange(50) / 25)
    # Output frame k shows the source frame whose timestamp is nearest to k/25.
    expected = np.round(np.arange(50) / 25 * source_fps).astype(int)
    np.testing.assert_array_equal(frame_ids(frames), expected)


@pytest.mark.parametrize("width, height", [(48, 96), (72, 64)])
def test_widths_decord_cannot_copy_fall_back_to_pyav(tmp_path, width, height):
    import decord

    path = write_mp4(tmp_path / "narrow.mp4", indexed_frames(30, height, width), 30)
    with pytest.raises(
        (RuntimeError, decord.DECORDError)
    ):  # the decord 0.6 bug this fallback exists for
        decord.VideoReader(str(path)).get_batch([0])
    frames, times = read_video(path, fps=25)
    assert frames.shape == (25, height, width, 3)
    np.testing.assert_array_equal(frame_ids(frames), np.round(np.arange(25) * 30 / 25))
    np.testing.assert_allclose(times, np.arange(25) / 25)
    native, native_times = read_video(path)
    np.testing.assert_allclose(native_times, np.arange(30) / 30, atol=1e-3)


def test_variable_frame_rate_is_detected_and_resampled_by_timestamp(tmp_path):
    times = vfr_times(40)
    path = write_av(tmp_path / "vfr.mp4", indexed_frames(40, 48, 96), times)
    info = probe(path)
    assert info.variable_frame_rate
    assert info.num_frames == 40

    frames, grid = read_video(path, fps=25)
    ids = frame_ids(frames)
    # Every output frame is the source frame nearest in time, which a frame-count-based
    # resampler (index k → k · 40 / len) would get wrong for this uneven spacing.
    nearest = np.abs(times[None, :] - grid[:, None]).argmin(axis=1)
    np.testing.assert_array_equal(ids, nearest)
    assert not np.array_equal(ids, np.round(np.arange(len(grid)) * 40 / len(grid)).astype(int))


def test_resample_indices_on_plain_timestamps():
    starts = np.array([0.0, 0.1, 0.2, 0.3])
    timestamps = np.stack([starts, starts + 0.1], axis=1)
    indices, times = resample_indices(timestamps, fps=20)  # 0.4 s span → 8 frames
    np.testing.assert_array_equal(indices, [0, 0, 1, 1, 2, 2, 3, 3])
    np.testing.assert_allclose(times, np.arange(8) / 20)
    # Out-of-order timestamps (decode order) still map to the right frames.
    indices, _ = resample_indices(timestamps[[2, 0, 3, 1]], fps=10)
    np.testing.assert_array_equal(indices, [1, 3, 0, 2])


def test_read_audio_stereo_44k_to_16k_mono(tmp_path):
    left, right = tone(440, 2, 44100), tone(440, 2, 44100, amplitude=0.2)
    path = write_av(
        tmp_path / "st.mp4", indexed_frames(50), np.arange(50) / 25, np.stack([left, right]), 44100
    )
    info = probe(path)
    assert (info.sample_rate, info.channels) == (44100, 2)
    audio = read_audio(path, sample_rate=16000)
    assert audio.dtype == np.float32 and audio.ndim == 1
    # AAC adds encoder padding, never more than a couple of frames.
    assert 32000 <= len(audio) <= 32000 + 2048
    assert peak_hz(audio[:32000], 16000) == pytest.approx(440, abs=2)
    exact = read_audio(path, sample_rate=16000, num_samples=32000)
    assert exact.shape == (32000,)
    np.testing.assert_array_equal(exact, audio[:32000])
    padded = read_audio(path, sample_rate=16000, num_samples=40000)
    assert padded.shape == (40000,) and not padded[-1000:].any()


def tone_residual(wave_: np.ndarray, freq: float, sample_rate: int) -> float:
    """Largest deviation of ``wave_`` from its best-fitting sinusoid at ``freq`` (edges excluded).

    A clean resampled tone stays within a few hundredths (AAC itself adds up to ~0.05); dropped or repeated blocks of
    samples show up as jumps as large as the amplitude.
    """
    t = np.arange(len(wave_)) / sample_rate
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], axis=1)
    inner = slice(400, len(wave_) - 400)
    coef = np.linalg.lstsq(basis[inner], wave_[inner], rcond=None)[0]
    return float(np.abs(wave_[inner] - basis[inner] @ coef).max())


def test_read_audio_resamples_without_glitches(tmp_path):
    # 8 kHz and 22.05 kHz mono AAC, 48 kHz mono and 44.1 kHz stereo wav: all must come out
    # as a clean 16 kHz tone (decord 0.6's resampler breaks most of these).
    sources = {
        "aac8k": write_mp4(tmp_path / "low.mp4", indexed_frames(50), 25, tone(500, 2, 8000), 8000),
        "aac22k": write_av(
            tmp_path / "mid.mp4", indexed_frames(50), np.arange(50) / 25, tone(500, 2, 22050), 22050
        ),
        "wav48k": write_wav(tmp_path / "mono.wav", tone(500, 2, 48000), 48000),
        "wav44k": write_wav(tmp_path / "st.wav", np.stack([tone(500, 2, 44100)] * 2), 44100),
    }
    assert probe(sources["aac8k"]).sample_rate == 8000
    info = probe(sources["wav44k"])
    assert not info.has_video and info.has_audio and (info.sample_rate, info.channels) == (44100, 2)
    for name, path in sources.items():
        audio = read_audio(path, sample_rate=16000, num_samples=32000)
        assert audio.shape == (32000,)
        assert peak_hz(audio, 16000) == pytest.approx(500, abs=2), name
        assert tone_residual(audio[:31000], 500, 16000) < 0.1, name
    assert len(read_audio(sources["wav48k"], sample_rate=16000)) == 32000


def test_decord_audio_fallback_agrees_where_no_resampling_is_needed(tmp_path):
    path = write_wav(tmp_path / "x.wav", tone(300, 1, 16000), 16000)
    np.testing.assert_allclose(
        _read_audio_decord(path, 16000), read_audio(path, sample_rate=16000), atol=1e-4
    )


def test_read_audio_without_track_raises(tmp_path):
    path = write_mp4(tmp_path / "silent.mp4", indexed_frames(10), 25)
    with pytest.raises(MediaError, match="no audio track"):
        read_audio(path)


def test_probe_reasons_for_bad_files(tmp_path):
    good = write_mp4(tmp_path / "good.mp4", indexed_frames(25), 25, tone(440, 1, 16000))
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "text.mp4"
    text.write_text("definitely not a video\n" * 20)
    empty = tmp_path / "empty.mp4"
    empty.touch()

    cases = {
        truncated: "corrupt",
        text: "not a media file",
        empty: "zero-length",
        tmp_path / "missing.mp4": "not found",
    }
    for path, reason in cases.items():
        with pytest.raises(MediaError) as caught:
            probe(path)
        assert reason in caught.value.reason, (path.name, caught.value.reason)
        assert caught.value.path == str(path)


def test_read_image_modes_and_size(tmp_path):
    from PIL import Image

    rgba = np.zeros((30, 40, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    Image.fromarray(np.full((20, 10), 90, dtype=np.uint8), mode="L").save(tmp_path / "g.png")
    Image.fromarray(np.full((16, 16, 3), (10, 200, 30), dtype=np.uint8)).save(
        tmp_path / "c.jpg", quality=95
    )
    Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(tmp_path / "deep.png")

    image = read_image(tmp_path / "a.png")
    assert image.shape == (30, 40, 3) and image.dtype == np.uint8 and (image[..., 0] == 200).all()
    gray = read_image(tmp_path / "g.png")
    assert gray.shape == (20, 10, 3) and (gray == 90).all()
    jpg = read_image(tmp_path / "c.jpg")
    np.testing.assert_allclose(jpg.reshape(-1, 3).mean(axis=0), (10, 200, 30), atol=4)
    assert (read_image(tmp_path / "deep.png") == 255).all()
    assert read_image(tmp_path / "a.png", size=16).shape == (16, 16, 3)

    (tmp_path / "bad.png").write_text("nope")
    with pytest.raises(MediaError, match="not a readable image"):
        read_image(tmp_path / "bad.png")
