"""ModelSpec: everything that differs between SINGER and a baseline, bundled by name.

The trainer, generator, evaluator and sweep know only ModelSpecs (compare torchtitan's
train spec and timm's ``register_model``). A baseline is one folder plus one
``register_model_spec`` call.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from singer.registry import MODELS


@dataclass
class Conditions:
    """What a clip is generated from.

    audio:  B×S waveform (mono, ``sample_rate`` Hz), aligned with the F frames to generate.
    ref:    B×3×H×W reference frame in [-1, 1] (identity).
    motion: B×3×M×H×W frames that precede the clip (clean), or None at the start of a video.
    extras: what else the data offer. Where they carry SynthSing truth: ``identity``
            ``B×IDENTITY_DIM``, and the face parameters of the reference and motion frames,
            ``ref_cues`` ``B×K`` and ``motion_cues`` ``B×M×K``. The face-parameter proxy is
            conditioned on and renders with them; other models ignore them.
    """

    audio: torch.Tensor
    ref: torch.Tensor
    num_frames: int
    motion: torch.Tensor | None = None
    extras: dict[str, Any] | None = None

    @classmethod
    def from_batch(
        cls, batch: dict, *, audio: torch.Tensor | None = None, device=None
    ) -> Conditions:
        """The conditions of a collated dataset batch (``audio`` replaces the batch's own)."""

        def to(x):
            return x.to(device) if device is not None else x

        extras = {}
        if "identity" in batch and bool(torch.as_tensor(batch.get("has_identity", False)).all()):
            extras["identity"] = to(batch["identity"])
        if "ref_cues" in batch and bool(torch.as_tensor(batch.get("has_cues", False)).all()):
            extras["ref_cues"] = to(batch["ref_cues"])
            extras["motion_cues"] = to(batch["motion_cues"])
        return cls(
            audio=to(batch["audio"] if audio is None else audio),
            ref=to(batch["ref"]),
            num_frames=batch["video"].shape[2],
            motion=to(batch["motion"]) if batch.get("motion") is not None else None,
            extras=extras,
        )


def dropout_on(batch: dict) -> float:
    """1.0, or 0.0 when the batch asks for no condition dropout (``batch["condition_dropout"]``
    False: validation, whose loss should not depend on which conditions a coin dropped)."""
    return 1.0 if batch.get("condition_dropout", True) else 0.0


LossFn = Callable[[nn.Module, dict, torch.Generator | None], tuple[torch.Tensor, dict[str, float]]]
SampleFn = Callable[..., torch.Tensor]


def _method_loss(model: nn.Module, batch: dict, generator: torch.Generator | None):
    return model.training_loss(batch, generator=generator)


def _method_sample(model: nn.Module, conditions: Conditions, **options):
    return model.generate(conditions, **options)


@dataclass(frozen=True)
class ModelSpec:
    """A trainable, samplable model family.

    build:   composed config (DictConfig) → nn.Module.
    loss:    (model, batch, generator) → (scalar loss, float logs). Batch layout: docs/architecture.md.
    sample:  (model, Conditions, steps=, guidance_scale=, generator=) → video B×3×F×H×W in [-1, 1];
             None for models that do not generate video (e.g. a sync expert, an autoencoder).
    config:  the entry of the ``model`` config group (``model/<config>.yaml`` in ``singer/conf``
             or ``baselines/conf``) holding its defaults; ``model=<config>`` selects this model,
             and the composed config's ``model.name`` is filled from it
             (:func:`singer.config.name_model`). Default: ``name``, so the name is written once.
    """

    name: str
    build: Callable[[Any], nn.Module]
    description: str = ""
    loss: LossFn = _method_loss
    sample: SampleFn | None = _method_sample
    config: str | None = None

    def __post_init__(self) -> None:
        if self.config is None:
            object.__setattr__(self, "config", self.name)  # frozen: set once, here

    @property
    def __doc__(self) -> str:  # shown by ``python -m singer.registry``
        return self.description


def register_model_spec(spec: ModelSpec) -> ModelSpec:
    MODELS.register(spec.name, spec, doc=spec.description)
    return spec


def get_model_spec(name: str) -> ModelSpec:
    return MODELS.get(name)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@contextmanager
def component_init(seed: int, component: str) -> Iterator[None]:
    """Initialise one component (``frontend``, ``backbone``, ...) from its own random stream,
    a function of (``seed``, ``component``) only; the caller's RNG state is left as it was.

    Why: drawn from one shared stream, the parameters a front-end creates would shift the
    stream the backbone is initialised from, so an ablation of ``frontend.levels`` (or of the
    front-end itself) would also re-draw the backbone's initial weights, and its arms would
    differ by initialisation noise as well as by the change under test. With a stream per
    component, runs of the same seed share every component the ablation does not touch.
    Build modules on the CPU inside it (only the CPU generator is seeded).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed((int(seed) * 1_000_003 + zlib.crc32(component.encode())) % 2**63)
        yield
