"""The generation check shared by the baseline tests: a trained run generates a clip from a
face image and a tone, written as an mp4 with a video and an audio stream."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def check_generates_mp4(
    run_dir: Path,
    model_name: str,
    out_dir: Path,
    face: np.ndarray,
    *,
    tone_hz: float,
    seconds: float = 0.5,
):
    """Generate ``seconds`` of video (2 steps, seed 0) and check frames, streams and length.

    Returns ``(loaded model, audio waveform, number of frames)`` for model-specific checks.
    """
    import av
    import decord

    from singer.data.media import write_mp4
    from singer.inference import generate_video, load_model

    loaded = load_model(run_dir, device="cpu")
    assert loaded.spec.name == model_name
    audio = (0.2 * np.sin(2 * np.pi * tone_hz * np.arange(int(seconds * 16000)) / 16000)).astype(
        np.float32
    )
    frames = generate_video(loaded, face, audio, steps=2, seed=0, progress=False)
    expected = round(seconds * loaded.fps)
    assert frames.shape == (expected, loaded.size, loaded.size, 3) and frames.dtype == np.uint8
    path = write_mp4(out_dir / f"{model_name}.mp4", frames, loaded.fps, audio, loaded.sample_rate)
    with av.open(str(path)) as container:
        kinds = {s.type for s in container.streams}
    assert kinds == {"video", "audio"}
    assert len(decord.VideoReader(str(path))) == expected
    return loaded, audio, expected
