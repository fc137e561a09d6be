"""Media I/O. Writing uses PyAV (H.264 + AAC mp4); reading uses decord.

Conventions: frames are ``F×H×W×3`` uint8 RGB arrays; audio is a mono float32
waveform ``S`` in [-1, 1].
"""

from __future__ import annotations

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
        vstream.options = {"crf": str(crf), "preset": "medium", "tune": "fastdecode"}
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
