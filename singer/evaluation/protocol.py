"""The fixed evaluation protocol: everything that must match for two results to be comparable.

An :class:`EvalProtocol` is loaded from ``singer/conf/evaluate/default.yaml`` (OmegaConf, not
part of the training config), optionally a user YAML file and ``key=value`` overrides. Fields
left ``None`` are taken from the checkpoint's training config by :meth:`EvalProtocol.resolve`;
the *resolved* protocol is written beside every result and its short hash is recorded, so
results are compared only when the hashes agree.

The dataclass is the protocol's schema (:mod:`singer.schema`): its annotations are the types
every value is checked against; :meth:`EvalProtocol.validate` holds the rules on values.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from singer.schema import rule, type_problems

DEFAULT_PROTOCOL = Path(__file__).resolve().parent.parent / "conf" / "evaluate" / "default.yaml"
CROPS = ("center",)
BAND_FILTERS = ("butter", "fft")
CONTROLS = ("deranged", "silence")


class ProtocolError(ValueError):
    """An evaluation protocol with an invalid or unknown setting."""


@dataclass
class EvalProtocol:
    """The evaluation settings (defaults and their meaning: ``singer/conf/evaluate/default.yaml``).

    ``num_frames``, ``resolution`` and ``guidance_scale`` may be ``None`` (take the model's own).
    ``band_edges`` are increasing frequencies in Hz; band ``i`` is ``[edges[i], edges[i+1])``.
    """

    num_clips: int = 8
    windows_per_clip: int | None = None
    num_frames: int | None = None
    resolution: int | None = None
    crop: str = "center"
    steps: int = 10
    guidance_scale: float | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    batch_size: int = 4
    metrics: list[str] = field(
        default_factory=lambda: ["ssim", "psnr", "motion_fidelity", "fid_offline", "audio_stats"]
    )
    metric_kwargs: dict[str, dict[str, Any] | None] = field(
        default_factory=dict, metadata=rule(what="a mapping {metric: {argument: value}}")
    )
    bootstrap: int = 1000
    alpha: float = 0.05
    band_edges: list[float] = field(
        default_factory=lambda: [0.0, 250.0, 500.0, 1000.0, 2000.0, 4000.0, 8000.0]
    )
    band_filter: str = "butter"
    band_filter_order: int = 8
    probe_split: str = "val"
    probe_clips: int = 16
    probe_folds: int = 5
    probe_alphas: list[float] = field(
        default_factory=lambda: [1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1e3, 1e4]
    )
    probe_frontends: list[str] = field(default_factory=list)
    controls: list[str] = field(default_factory=lambda: list(CONTROLS))
    derangement_seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    # -- checks ---------------------------------------------------------------------------
    def validate(self) -> None:
        problems = type_problems(self)
        if problems:  # the value checks below assume the right types
            raise ProtocolError("invalid evaluation protocol: " + "; ".join(problems))
        if self.num_clips < 1:
            problems.append(f"num_clips must be >= 1, got {self.num_clips}")
        if self.windows_per_clip is not None and self.windows_per_clip < 1:
            problems.append(f"windows_per_clip must be >= 1 or null, got {self.windows_per_clip}")
        unknown_controls = [c for c in self.controls if c not in CONTROLS]
        if unknown_controls or len(set(self.controls)) != len(self.controls):
            problems.append(
                f"controls must be distinct names from {CONTROLS}, got {list(self.controls)}"
            )
        if self.num_frames is not None and self.num_frames < 1:
            problems.append(f"num_frames must be >= 1 or null, got {self.num_frames}")
        if self.resolution is not None and self.resolution < 8:
            problems.append(f"resolution must be >= 8 px or null, got {self.resolution}")
        if self.crop not in CROPS:
            problems.append(f"crop must be one of {CROPS}, got {self.crop!r}")
        if self.steps < 1:
            problems.append(f"steps must be >= 1, got {self.steps}")
        if not self.seeds:
            problems.append("seeds must name at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            problems.append(f"seeds must be distinct, got {list(self.seeds)}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 < self.alpha < 1.0:
            problems.append(f"alpha must be in (0, 1), got {self.alpha}")
        edges = list(self.band_edges)
        if len(edges) < 2 or edges[0] < 0 or any(b <= a for a, b in zip(edges, edges[1:])):
            problems.append(f"band_edges must be >= 2 increasing frequencies >= 0 Hz, got {edges}")
        if self.band_filter not in BAND_FILTERS:
            problems.append(f"band_filter must be one of {BAND_FILTERS}, got {self.band_filter!r}")
        if self.band_filter_order < 1:
            problems.append(f"band_filter_order must be >= 1, got {self.band_filter_order}")
        if self.probe_split not in ("train", "val", "test", "all"):
            problems.append(
                f"probe_split must be train, val, test or all, got {self.probe_split!r}"
            )
        if self.probe_folds < 2:
            problems.append(f"probe_folds must be >= 2, got {self.probe_folds}")
        unknown_kwargs = set(self.metric_kwargs) - set(self.metrics)
        if unknown_kwargs:
            problems.append(
                f"metric_kwargs names metrics that are not evaluated: {sorted(unknown_kwargs)}"
            )
        if problems:
            raise ProtocolError("invalid evaluation protocol: " + "; ".join(problems))

    # -- model-dependent defaults -----------------------------------------------------------
    def resolve(self, cfg) -> EvalProtocol:
        """A copy with every ``None`` replaced by the value from a training config ``cfg``."""
        return replace(
            self,
            num_frames=int(
                self.num_frames if self.num_frames is not None else cfg.trainer.num_frames
            ),
            resolution=int(self.resolution if self.resolution is not None else cfg.trainer.size),
            guidance_scale=float(
                self.guidance_scale
                if self.guidance_scale is not None
                else cfg.model.sample.guidance_scale
            ),
        )

    @property
    def is_resolved(self) -> bool:
        return None not in (self.num_frames, self.resolution, self.guidance_scale)

    @property
    def bands(self) -> list[tuple[float, float]]:
        """``[(lo_hz, hi_hz), ...]`` from ``band_edges``."""
        edges = [float(e) for e in self.band_edges]
        return list(zip(edges[:-1], edges[1:]))

    # -- identity -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["seeds"] = [int(s) for s in self.seeds]
        data["band_edges"] = [float(e) for e in self.band_edges]
        data["probe_alphas"] = [float(a) for a in self.probe_alphas]
        return data

    def hash(self) -> str:
        """12 hex digits of the sha256 of the canonical JSON of every field."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def _plain(value):
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def load_protocol(path: str | Path | None = None, overrides: Sequence[str] = ()) -> EvalProtocol:
    """The default protocol, updated by the YAML file ``path`` and then by ``key=value`` overrides.

    Unknown keys are errors (a typo would otherwise silently evaluate something else).
    """
    known = {f.name for f in fields(EvalProtocol)}
    layers = [OmegaConf.load(DEFAULT_PROTOCOL)]
    if path is not None:
        if not Path(path).is_file():
            raise ProtocolError(f"protocol file {path} does not exist")
        layers.append(OmegaConf.load(path))
    try:
        if overrides:
            layers.append(OmegaConf.from_dotlist(list(overrides)))
        merged = OmegaConf.merge(*layers)
    except OmegaConfBaseException as err:
        raise ProtocolError(
            f"could not read the protocol overrides {list(overrides)}: {err}"
        ) from None
    unknown = sorted(set(merged.keys()) - known)
    if unknown:
        raise ProtocolError(
            f"unknown protocol keys {unknown}; known keys: {', '.join(sorted(known))}"
        )
    values = {key: _plain(merged[key]) for key in merged.keys()}
    try:
        return EvalProtocol(**values)
    except TypeError as err:
        raise ProtocolError(f"invalid evaluation protocol: {err}") from None
