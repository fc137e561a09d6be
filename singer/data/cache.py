"""SynthSing generated and prepared on first use, shared safely between parallel jobs."""

from __future__ import annotations

import fcntl
import json
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def _file_lock(path: Path):
    """An exclusive lock across processes (parallel sweep trials may start together)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def synthsing_dir(
    root: str | Path, *, clips: int, seconds: float, kind: str, seed: int, size: int
) -> Path:
    from singer.data.synth import SYNTH_VERSION

    # The generator version is part of the name: a cache of an older SynthSing is never reused.
    name = f"{kind}-n{clips}-seed{seed}-{size}px-{seconds:g}s-v{SYNTH_VERSION}"
    return Path(root) / "synthsing" / name


def ensure_synthsing(
    root: str | Path,
    *,
    clips: int = 24,
    seconds: float = 4.0,
    kind: str = "mixed",
    seed: int = 0,
    size: int = 64,
    fps: float = 25,
    sample_rate: int = 16000,
    clip_size: int = 64,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Generate SynthSing into ``root`` and prepare it at ``clip_size`` px; return the cache dir.

    Both steps are skipped when their output is complete, so this is cheap after the first call.
    """
    from singer.data.prepare import prepare_folder
    from singer.data.synth import generate_dataset

    base = synthsing_dir(root, clips=clips, seconds=seconds, kind=kind, seed=seed, size=size)
    raw, cache = base / "raw", base / f"cache-{clip_size}px-{fps:g}fps-{sample_rate}hz"
    with _file_lock(base.parent / f".{base.name}.lock"):
        done = raw / ".complete"
        if not done.exists():
            generate_dataset(
                raw,
                clips=clips,
                seed=seed,
                kind=kind,
                size=size,
                seconds=seconds,
                fps=fps,
                sample_rate=sample_rate,
                workers=workers,
                progress=progress,
            )
            done.write_text(json.dumps({"clips": clips}))
        prepared = cache / ".complete"
        if not prepared.exists():
            report = prepare_folder(
                raw,
                cache,
                size=clip_size,
                fps=fps,
                sample_rate=sample_rate,
                clip_seconds=seconds,
                detect_faces=False,
                progress=progress,
            )
            prepared.write_text(json.dumps(report.get("counts", {})))
    return cache
