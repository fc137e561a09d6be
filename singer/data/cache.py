"""SynthSing generated and prepared on first use, shared safely between parallel jobs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from singer.safe_io import file_lock


def synthsing_dir(
    root: str | Path,
    *,
    clips: int,
    seconds: float,
    kind: str,
    seed: int,
    size: int,
    accompaniment: bool = False,
    vmr_db: float = 0.0,
    music_style: str = "mixed",
) -> Path:
    # lazy: start-up: singer.data.synth loads scipy and the renderer; the sweep driver and the
    # evaluator import this module for folder names alone
    from singer.data.synth import SYNTH_VERSION

    # The generator version is part of the name: a cache of an older SynthSing is never reused.
    name = f"{kind}-n{clips}-seed{seed}-{size}px-{seconds:g}s-v{SYNTH_VERSION}"
    if accompaniment:
        name += f"-music-{music_style}-vmr{float(vmr_db):+g}dB"
    return Path(root) / "synthsing" / name


def separation_options(data) -> dict[str, Any]:
    """The accompaniment and separator keys of a ``data`` config section, as keyword arguments
    of :func:`ensure_synthsing` (a config without them gets plain SynthSing, unseparated)."""
    synth = data.get("synth") or {}
    args = data.get("separator_args") or {}
    if not isinstance(args, Mapping):  # an OmegaConf DictConfig
        args = OmegaConf.to_container(args, resolve=True)
    return {
        "accompaniment": bool(synth.get("accompaniment", False)),
        "vmr_db": float(synth.get("vmr_db", 0.0)),
        "music_style": str(synth.get("music_style", "mixed")),
        "separator": str(data.get("separator") or "none"),
        "separator_args": dict(args),
    }


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
    accompaniment: bool = False,
    vmr_db: float = 0.0,
    music_style: str = "mixed",
    separator: str = "none",
    separator_args: Mapping[str, Any] | None = None,
) -> Path:
    """Generate SynthSing into ``root`` and prepare it at ``clip_size`` px; return the cache dir.

    Both steps are skipped when their output is complete, so this is cheap after the first call.
    ``accompaniment``/``vmr_db``/``music_style`` put a music bed under the voices (see
    :func:`singer.data.synth.generate_dataset`); ``separator`` (with ``separator_args``) runs
    on the soundtracks when they are prepared. Both are part of the folder names, so datasets
    and caches of different settings never mix.
    """
    # lazy: start-up: scipy and the video tools, needed only when the cache is missing
    from singer.data.prepare import prepare_folder
    from singer.data.synth import generate_dataset

    base = synthsing_dir(
        root,
        clips=clips,
        seconds=seconds,
        kind=kind,
        seed=seed,
        size=size,
        accompaniment=accompaniment,
        vmr_db=vmr_db,
        music_style=music_style,
    )
    raw, cache = base / "raw", base / f"cache-{clip_size}px-{fps:g}fps-{sample_rate}hz"
    separator_args = dict(separator_args or {})
    if separator != "none":
        cache = cache.with_name(f"{cache.name}-sep-{separator}")
        if separator_args:
            text = json.dumps(separator_args, sort_keys=True, default=str)
            cache = cache.with_name(f"{cache.name}-{hashlib.sha256(text.encode()).hexdigest()[:8]}")
    with file_lock(base.parent / f".{base.name}.lock"):
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
                accompaniment=accompaniment,
                vmr_db=vmr_db,
                music_style=music_style,
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
                separator=separator,
                separator_args=separator_args,
            )
            prepared.write_text(json.dumps(report.get("counts", {})))
    return cache


def data_cache(cfg, *, workers: int = 1, progress: bool = True) -> Path:
    """The prepared clip cache of a composed config: ``data.cache_dir``, or SynthSing generated
    and prepared on first use (``workers`` processes generate it)."""
    data = cfg.data
    if data.get("cache_dir"):
        return Path(data.cache_dir)
    synth = data.synth
    return ensure_synthsing(
        data.root,
        clips=synth.clips,
        seconds=synth.seconds,
        kind=synth.kind,
        seed=synth.seed,
        size=synth.size,
        fps=data.fps,
        sample_rate=data.sample_rate,
        clip_size=cfg.trainer.size,
        workers=workers,
        progress=progress,
        **separation_options(data),
    )
