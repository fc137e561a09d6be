"""The separator contract, chunked overlap-add, and building separators by name.

A separator turns a mixture (voice over music) into an estimate of the voice alone:

    mixture B×S (mono float32 at ``sample_rate``, 16 kHz) → vocal estimate B×S

Subclasses implement :meth:`Separator.separate_chunk` on pieces of at most ``chunk_seconds``;
:meth:`Separator.forward` cuts a long input into such chunks, overlapping by
``overlap_seconds``, and cross-fades the results back together (overlap-add with linear
ramps whose weights sum to one), so memory is one chunk's worth of model activations plus the
output, and a progress bar counts the chunks.

Separators are registered by name in ``singer.registry.SEPARATORS`` and built from a name and
plain options (``{"checkpoint": "...", "sha256": "..."}``); no option is ever an import path.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchaudio.functional as AF
import yaml
from torch import nn
from tqdm.auto import tqdm

from singer.cli import UserError
from singer.registry import SEPARATORS

SAMPLE_RATE = 16000


class Separator(nn.Module):
    """Base class: mixture ``B×S`` → vocal estimate ``B×S`` at ``sample_rate`` (mono)."""

    sample_rate: int = SAMPLE_RATE

    def __init__(self, chunk_seconds: float = 30.0, overlap_seconds: float = 1.0):
        super().__init__()
        if not chunk_seconds > 0 or not 0 <= overlap_seconds < chunk_seconds / 2:
            raise ValueError(
                "separator needs chunk_seconds > 0 and 0 <= overlap_seconds < chunk_seconds / 2, "
                f"got chunk_seconds={chunk_seconds}, overlap_seconds={overlap_seconds}"
            )
        self.chunk_seconds = float(chunk_seconds)
        self.overlap_seconds = float(overlap_seconds)

    def separate_chunk(self, mixture: torch.Tensor) -> torch.Tensor:
        """One chunk: ``B×s`` float32 on :attr:`device` → ``B×s``."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        first = next(iter(self.parameters()), None)
        return first.device if first is not None else torch.device("cpu")

    @torch.no_grad()
    def forward(self, mixture: torch.Tensor, progress: bool = False) -> torch.Tensor:
        """Separate ``mixture`` (``B×S`` or ``S``) chunk by chunk; returns the same shape on the CPU."""
        squeeze = mixture.dim() == 1
        wave = mixture.detach().float().cpu()
        wave = wave.reshape(1, -1) if squeeze else wave.reshape(wave.shape[0], -1)
        total = wave.shape[-1]
        chunk = max(1, round(self.chunk_seconds * self.sample_rate))
        spans = chunk_spans(total, chunk, round(self.overlap_seconds * self.sample_rate))
        out = torch.zeros_like(wave)
        norm = torch.zeros(total)
        bar = tqdm(
            spans,
            desc=f"separate ({type(self).__name__})",
            unit="chunk",
            leave=False,
            disable=not progress or len(spans) < 2,
        )
        for index, (start, stop) in enumerate(bar):
            piece = self.separate_chunk(wave[:, start:stop].to(self.device)).float().cpu()
            if piece.shape != (wave.shape[0], stop - start):
                raise RuntimeError(
                    f"{type(self).__name__} returned shape {tuple(piece.shape)} for a chunk of "
                    f"{(wave.shape[0], stop - start)}"
                )
            previous = spans[index - 1][1] if index > 0 else start
            following = spans[index + 1][0] if index + 1 < len(spans) else stop
            weight = crossfade_weight(stop - start, previous - start, stop - following)
            out[:, start:stop] += weight * piece
            norm[start:stop] += weight
        bar.close()
        out /= norm.clamp_min(1e-12)
        return out[0] if squeeze else out


def si_sdr(estimate: torch.Tensor, reference: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """SI-SDR in dB of ``estimate`` against ``reference`` (``B×S`` or ``S``) → ``B`` (or scalar);
    the definition is in :mod:`singer.metrics.separation`, which scores separators with it.

    Differentiable (the mask network trains on its negative). A silent reference gives NaN.
    """
    if estimate.shape != reference.shape:
        raise ValueError(
            f"si_sdr needs equal shapes, got {tuple(estimate.shape)} and {tuple(reference.shape)}"
        )
    estimate = estimate - estimate.mean(dim=-1, keepdim=True)
    reference = reference - reference.mean(dim=-1, keepdim=True)
    energy = reference.pow(2).sum(dim=-1, keepdim=True)
    target = (estimate * reference).sum(dim=-1, keepdim=True) / energy.clamp_min(eps) * reference
    noise = estimate - target
    value = 10.0 * torch.log10(
        target.pow(2).sum(-1).clamp_min(eps) / noise.pow(2).sum(-1).clamp_min(eps)
    )
    return torch.where(energy.squeeze(-1) > eps, value, torch.full_like(value, float("nan")))


def chunk_spans(total: int, chunk: int, overlap: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``[0, total)`` with chunks of ``chunk`` samples that
    overlap by at least ``overlap``; the last chunk ends at ``total`` (and may overlap more)."""
    if total <= chunk:
        return [(0, total)]
    hop = chunk - overlap
    starts = list(range(0, total - chunk, hop)) + [total - chunk]
    return [(s, s + chunk) for s in starts]


def crossfade_weight(length: int, fade_in: int, fade_out: int) -> torch.Tensor:
    """Weights ``length`` of one chunk: a linear ramp up over its first ``fade_in`` samples
    (its overlap with the chunk before), down over its last ``fade_out``, 1 between. Two
    neighbours' ramps over the same samples sum to one; no weight is zero."""
    weight = torch.ones(length)
    if fade_in > 0:
        weight[:fade_in] = (torch.arange(fade_in) + 0.5) / fade_in
    if fade_out > 0:
        weight[length - fade_out :] = torch.minimum(
            weight[length - fade_out :], (torch.arange(fade_out, 0, -1) - 0.5) / fade_out
        )
    return weight


# -- building by name -------------------------------------------------------------------------
_LOADED: dict[str, Separator] = {}


def parse_separator_args(items: Iterable[str] | None) -> dict[str, Any]:
    """``["checkpoint=/w/x.pt", "chunk_seconds=10"]`` → ``{"checkpoint": "/w/x.pt", "chunk_seconds": 10}``.

    Booleans, ``null`` and numbers that read back as written become those; anything else
    stays the string given (so a digest such as ``0123abc...`` is never turned into a number).
    """
    args: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise ValueError(f"separator option {item!r} is not KEY=VALUE")
        value = value.strip()
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        if isinstance(parsed, bool) or parsed is None:
            args[key.strip()] = parsed
        elif isinstance(parsed, (int, float)) and str(parsed) == value:
            args[key.strip()] = parsed
        else:
            args[key.strip()] = value
    return args


def _check_args(name: str, args: Mapping[str, Any]) -> None:
    builder = SEPARATORS.get(name)
    params = inspect.signature(builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n in params if n != "self"]
    unknown = sorted(set(args) - set(accepted))
    if unknown:
        raise ValueError(
            f"separator '{name}' has no option {', '.join(map(repr, unknown))}; "
            f"its options are: {', '.join(accepted) or '(none)'}"
        )


def load_separator(
    name: str, args: Mapping[str, Any] | None = None, *, device: str | torch.device = "cpu"
) -> Separator:
    """The separator registered as ``name``, built with ``args``, in eval mode on ``device``.

    Built once per process for each (name, args, device): prepare workers and a long
    generation reuse the loaded network. Unknown names raise the registry's error (listing
    the known ones); unknown options a ``ValueError`` listing the accepted ones; a missing or
    wrong weight file ``singer.weights.MissingWeightsError`` / ``WeightsChecksumError``.
    """
    args = dict(args or {})
    SEPARATORS.check(name)
    _check_args(name, args)
    key = json.dumps([name, args, str(device)], sort_keys=True, default=str)
    if key not in _LOADED:
        separator = SEPARATORS.build(name, **args)
        _LOADED[key] = separator.to(device).eval().requires_grad_(False)
    return _LOADED[key]


def check_separator(name: str, items: Iterable[str] | None = None) -> dict[str, Any]:
    """Parse command-line ``KEY=VALUE`` options of separator ``name`` and build it once, so an
    unknown name, a bad option or a missing weight file is reported before any work; returns
    the options as a dict. ``none`` takes no options."""
    args = parse_separator_args(items)
    if name == "none":
        SEPARATORS.check(name)
        _check_args(name, args)
    else:
        load_separator(name, args)
    return args


class SeparatorOptionError(UserError, ValueError):
    """``--separate`` / ``--separator-arg`` that name no usable separator."""


def separator_from_command_line(name: str, items: Iterable[str] | None) -> dict[str, Any] | None:
    """The checked options of ``--separate name --separator-arg ...``, or None when no
    separator was asked for. An unknown name, a bad option or a missing weight file is one
    :class:`SeparatorOptionError` before any work (:func:`check_separator`)."""
    if name == "none" and not items:
        return None
    try:
        return check_separator(name, items)
    except (KeyError, ValueError, OSError) as err:
        raise SeparatorOptionError(
            f"--separate {name}: {err}",
            "see python -m singer.registry separator and the README (singing over music)",
        ) from err


def separate(
    mixture: np.ndarray,
    name: str,
    args: Mapping[str, Any] | None = None,
    *,
    sample_rate: int = SAMPLE_RATE,
    progress: bool = False,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Vocal estimate of a mono waveform ``S`` (or ``B×S``) at ``sample_rate``, same shape.

    ``name="none"`` returns the input unchanged. Audio at another rate than the separator's is
    resampled to it and back.
    """
    wave = np.asarray(mixture, dtype=np.float32)
    if name == "none":
        SEPARATORS.check(name)
        _check_args(name, dict(args or {}))
        return wave
    separator = load_separator(name, args, device=device)
    tensor = torch.from_numpy(np.ascontiguousarray(wave))
    if int(sample_rate) != separator.sample_rate:
        tensor = AF.resample(tensor, int(sample_rate), separator.sample_rate)
    vocals = separator(tensor, progress=progress)
    if int(sample_rate) != separator.sample_rate:
        vocals = AF.resample(vocals, separator.sample_rate, int(sample_rate))
        vocals = _fit(vocals, wave.shape[-1])
    return vocals.numpy().astype(np.float32)


def _fit(wave: torch.Tensor, length: int) -> torch.Tensor:
    if wave.shape[-1] >= length:
        return wave[..., :length]
    return torch.nn.functional.pad(wave, (0, length - wave.shape[-1]))


def separator_spec(name: str | None, args: Mapping[str, Any] | None = None) -> dict:
    """``{"name": ..., "args": {...}}``: how a separator is recorded (cache settings, reports)."""
    return {"name": str(name or "none"), "args": dict(sorted((args or {}).items()))}


def cache_separator(cache_dir: str | Path) -> str:
    """Name of the separator a prepared cache was made with (from its ``prepare.json``)."""
    try:
        settings = json.loads((Path(cache_dir) / "prepare.json").read_text(encoding="utf-8"))
        spec = settings["settings"].get("separator") or {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "none"
    return str(spec.get("name") or "none") if isinstance(spec, dict) else str(spec)
