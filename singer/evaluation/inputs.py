"""What an evaluation reads: the checkpoint a target names, and the clip windows it scores.

:func:`load_batches` gives the evaluated windows of a split and :func:`load_probe_batches` the
windows the front-end probes read (``singer.evaluation.probes``); both are collated,
centre-cropped and resized to the protocol's frames, in a fixed order.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from singer import tracking
from singer.config import compose
from singer.data.batches import resize_batch
from singer.data.cache import data_cache as config_cache
from singer.data.dataset import ClipDataset, clip_group, collate
from singer.evaluation.protocol import EvalProtocol

RUN_ID_PATTERN = re.compile(r"[0-9a-f]{32}")


class EvaluationError(Exception):
    """A problem with the request (missing checkpoint, unusable model or data): exit status 2."""


# -- finding the checkpoint ---------------------------------------------------------------------
def resolve_target(target: str | Path, *, uri: str | None = None) -> Path:
    """A checkpoint file, a run directory, or an MLflow run id (via its ``out_dir`` tag) → checkpoint path."""
    # lazy: start-up: singer.inference imports every model package (seconds)
    from singer.inference import resolve_checkpoint

    path = Path(target)
    if path.exists():
        try:
            return resolve_checkpoint(path)
        except FileNotFoundError as err:
            raise EvaluationError(str(err)) from None
    if RUN_ID_PATTERN.fullmatch(str(target)):
        try:
            out_dir = tracking.run_out_dir(str(target), uri)
        except LookupError as err:
            raise EvaluationError(
                f"{target} is not a file or directory, and as an MLflow run id: {err}"
            ) from None
        try:
            return resolve_checkpoint(out_dir)
        except FileNotFoundError as err:
            raise EvaluationError(f"MLflow run {target} points to {out_dir}, but: {err}") from None
    raise EvaluationError(
        f"no checkpoint at {target} (give a .pt file, a run directory or an MLflow run id)"
    )


# -- data ---------------------------------------------------------------------------------------
def _cache_dir(cfg, data_cache: str | Path | None, progress: bool) -> Path:
    """The prepared clip cache to evaluate on: explicit, the config's, or SynthSing (made if needed)."""
    if data_cache:
        return Path(data_cache)
    return config_cache(cfg, progress=progress)


def center_square(batch: dict) -> dict:
    """Centre-crop ``video``/``motion`` (``B×3×F×H×W``) and ``ref`` (``B×3×H×W``) to squares."""
    h, w = batch["video"].shape[-2:]
    if h == w:
        return batch
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    out = dict(batch)
    for key in ("video", "motion", "ref"):
        out[key] = batch[key][..., top : top + side, left : left + side]
    return out


def select_windows(num_windows: int, count: int) -> list[int]:
    """``count`` window indices spread evenly over ``range(num_windows)`` (all when fewer)."""
    if num_windows <= count:
        return list(range(num_windows))
    return sorted({int(round(x)) for x in np.linspace(0, num_windows - 1, count)})


def _open_dataset(cfg, protocol: EvalProtocol, *, split: str, data_cache, progress: bool):
    cache = _cache_dir(cfg, data_cache, progress)
    kinds = list(cfg.data.kinds) if cfg.data.get("kinds") else None
    try:
        dataset = ClipDataset(
            cache,
            split=split,
            num_frames=protocol.num_frames,
            motion_frames=max(1, int(cfg.model.get("motion_frames", 0))),
            val_fraction=cfg.data.val_fraction,
            test_fraction=cfg.data.get("test_fraction", 0.0),
            seed=cfg.data.get("split_seed", 0),
            kinds=kinds,
        )
    except (FileNotFoundError, ValueError) as err:
        raise EvaluationError(f"cannot read evaluation data from {cache}: {err}") from None
    if len(dataset) == 0:
        raise EvaluationError(
            f"the '{split}' split of {cache} has no windows of {protocol.num_frames} frames; "
            "try --split all or a smaller num_frames"
        )
    return dataset


def pick_items(dataset, num_clips: int, windows_per_clip: int | None) -> list[int]:
    """Dataset indices of the evaluated windows: ``num_clips`` clips taken round-robin over the
    speakers (so they cover as many independent units as possible), and ``windows_per_clip``
    windows of each (evenly spread; ``None`` = all, which makes a clip's frames contiguous)."""
    by_clip: dict[int, list[int]] = {}
    for index, (position, _) in enumerate(dataset.windows):
        by_clip.setdefault(position, []).append(index)
    by_unit: dict[str, list[int]] = {}
    for position in sorted(by_clip, key=lambda pos: str(dataset.clips[pos]["clip_id"])):
        by_unit.setdefault(clip_group(dataset.clips[position]), []).append(position)
    chosen: list[int] = []
    queues = [list(positions) for _, positions in sorted(by_unit.items())]
    while len(chosen) < num_clips and any(queues):
        for queue in queues:
            if queue and len(chosen) < num_clips:
                chosen.append(queue.pop(0))
    items = []
    for position in sorted(chosen, key=lambda pos: str(dataset.clips[pos]["clip_id"])):
        windows = by_clip[position]
        keep = (
            windows
            if windows_per_clip is None
            else [windows[i] for i in select_windows(len(windows), windows_per_clip)]
        )
        items.extend(keep)
    return items


def make_batches(items: list[dict], protocol: EvalProtocol) -> list[dict]:
    """Collated, centre-cropped, resized batches of dataset items, in order."""
    batches = []
    for start in range(0, len(items), protocol.batch_size):
        chunk = items[start : start + protocol.batch_size]
        batches.append(resize_batch(center_square(collate(chunk)), protocol.resolution))
    return batches


def load_batches(
    cfg,
    protocol: EvalProtocol,
    *,
    split: str,
    count: int,
    data_cache=None,
    progress: bool = True,
    warn_fewer: bool = True,
    windows_per_clip: int | None = None,
) -> list[dict]:
    """Collated, centre-cropped, resized batches of ``count`` clips of ``split``.

    Each batch holds ``video B×3×F×H×W``, ``audio B×S``, ``ref``, ``motion``, ``cues B×F×K``,
    ``causes B×F×C``, ``has_cues``, ``clip_id``, ``speaker_id``, ``start``, ``identity``
    (``F`` = ``protocol.num_frames``, ``H = W`` = ``protocol.resolution``).
    """
    if not protocol.is_resolved:
        protocol = protocol.resolve(cfg)
    dataset = _open_dataset(cfg, protocol, split=split, data_cache=data_cache, progress=progress)
    indices = pick_items(dataset, count, windows_per_clip)
    clips = len({dataset.windows[i][0] for i in indices})
    if warn_fewer and clips < count:
        warnings.warn(
            f"the '{split}' split has only {clips} clips; evaluating those instead of {count}",
            stacklevel=2,
        )
    return make_batches([dataset[i] for i in indices], protocol)


def load_probe_batches(
    *,
    checkpoint=None,
    cfg=None,
    data_cache=None,
    protocol: EvalProtocol | None = None,
    progress: bool = True,
):
    """``(batches, cfg)`` of the probe windows (``protocol.probe_split``, at most ``probe_clips``).

    The data config comes from ``cfg``, else from ``checkpoint``'s saved config, else from the
    default training config.
    """
    if cfg is None and checkpoint is not None:
        state = torch.load(resolve_target(checkpoint), map_location="cpu", weights_only=True)
        cfg = OmegaConf.create(state["config"])
    if cfg is None:
        cfg = compose([])
    protocol = protocol or EvalProtocol()
    if not protocol.is_resolved:
        protocol = protocol.resolve(cfg)
    batches = load_batches(
        cfg,
        protocol,
        split=protocol.probe_split,
        count=protocol.probe_clips,
        data_cache=data_cache,
        progress=progress,
        warn_fewer=False,
    )
    return batches, cfg
