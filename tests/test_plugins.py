"""One file and one register call: a new front-end, backbone, codec, metric and baseline.

The five examples of docs/architecture.md ("Adding a component") are written, one file each,
into a throwaway package in a temporary folder; its ``__init__`` imports its own modules, as
every plugin package of the harness does. Nothing else is edited: the test imports the package
and builds every component by name, through the registries and through ``singer.config.compose``,
then puts the registries back as they were.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest
import torch

from singer.config import compose
from singer.evaluation import load_protocol
from singer.metrics import EvalBatch
from singer.models import Conditions, get_model_spec
from singer.registry import BACKBONES, CODECS, FRONTENDS, METRICS, MODELS, all_registries

PACKAGE = "throwaway_components"
DOC = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"
# "**A front-end** (`singer/audio/loudness.py`) ...", then its ```python block.
EXAMPLE = re.compile(r"\*\*An? [a-z-]+\*\* \(`(?P<path>[^`]+)`.*?```python\n(?P<code>.*?)```", re.S)
INIT = '''"""Throwaway components: importing the package registers every module in it."""

from singer.registry import import_submodules

import_submodules(__name__, __path__)
'''


def examples() -> dict[str, str]:
    """The five examples of docs/architecture.md, "Adding a component", by module file name."""
    section = DOC.read_text(encoding="utf-8").split("## Adding a component", 1)[1]
    found = {}
    for match in EXAMPLE.finditer(section):
        path = Path(match["path"])
        found[f"{path.parent.name}.py" if path.name == "__init__.py" else path.name] = match["code"]
    return found


@pytest.fixture
def components(tmp_path, monkeypatch):
    """The throwaway package, imported; afterwards the registries and modules are as before."""
    folder = tmp_path / "site" / PACKAGE
    folder.mkdir(parents=True)
    files = {"__init__.py": INIT, **examples()}
    assert sorted(files) == [
        "__init__.py",
        "brightness.py",
        "half_size.py",
        "loudness.py",
        "still_image.py",
        "tiny_conv.py",
    ]
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    monkeypatch.syspath_prepend(str(folder.parent))
    saved = {kind: (dict(reg._entries), dict(reg._docs)) for kind, reg in all_registries().items()}
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        for kind, reg in all_registries().items():
            reg._entries, reg._docs = saved[kind]
        for module in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[module]


def clips(b=2, f=4, size=16, seed=0) -> dict:
    """A synthetic batch in the dataset's layout (docs/architecture.md)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "video": torch.rand(b, 3, f, size, size, generator=g) * 2 - 1,
        "ref": torch.rand(b, 3, size, size, generator=g) * 2 - 1,
        "motion": torch.rand(b, 3, 2, size, size, generator=g) * 2 - 1,
        "audio": torch.randn(b, 16000 * f // 25, generator=g) * 0.1,
    }


def test_each_new_component_is_one_file_and_one_register_call(components):
    assert "loudness" in FRONTENDS and "tiny_conv" in BACKBONES and "half_size" in CODECS
    assert "brightness" in METRICS and "still_image" in MODELS
    # each by name, straight from its registry
    tokens = FRONTENDS.build("loudness", dim=8, tokens=2)(torch.randn(2, 6400), 10)
    assert tokens.shape == (2, 10, 2, 8)
    video = clips()["video"]
    codec = CODECS.build("half_size")
    assert (
        codec.encode(video).shape == (2, 3, 4, 8, 8)
        and codec.decode(codec.encode(video)).shape == video.shape
    )
    backbone = BACKBONES.build("tiny_conv", in_channels=3, audio_dim=8)
    assert (
        backbone(video, torch.zeros(2, dtype=torch.long), torch.randn(2, 4, 2, 8)).shape
        == video.shape
    )


def test_new_frontend_backbone_and_codec_make_a_singer_model_through_compose(components):
    cfg = compose(
        [
            "trainer=cpu_tiny",
            "~frontend",
            "+frontend={name:loudness,dim:8,tokens:2}",
            "~backbone",
            "+backbone={name:tiny_conv,width:8}",
            "~codec",
            "+codec={name:half_size}",
        ]
    )
    model = get_model_spec(cfg.model.name).build(cfg)
    assert (
        type(model.frontend).__name__,
        type(model.backbone).__name__,
        type(model.codec).__name__,
    ) == (
        "LoudnessFrontend",
        "TinyConvBackbone",
        "HalfSizeCodec",
    )
    batch = clips()
    loss, logs = model.training_loss(batch, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and model.backbone.out.weight.grad is not None
    video = model.generate(
        Conditions.from_batch(batch), steps=2, generator=torch.Generator().manual_seed(1)
    )
    assert video.shape == batch["video"].shape and video.abs().max() <= 1


def test_new_metric_is_evaluated_by_name(components):
    protocol = load_protocol(overrides=["metrics=[brightness,ssim]"])
    metric = METRICS.build(protocol.metrics[0])
    metric.reset()
    generated = torch.full((2, 3, 4, 8, 8), 0.5)
    metric.update(
        EvalBatch(
            generated=generated,
            reference=None,
            audio=torch.zeros(2, 100),
            sample_rate=16000,
            fps=25,
        )
    )
    assert metric.compute() == {"brightness": pytest.approx(0.5)}


def test_new_baseline_trains_and_samples_through_compose(components):
    cfg = compose(["trainer=cpu_tiny", "~model", "+model={name:still_image}"])
    spec = get_model_spec(cfg.model.name)
    assert spec.name == spec.config == "still_image"
    model = spec.build(cfg)
    batch = clips()
    loss, logs = spec.loss(model, batch, torch.Generator().manual_seed(0))
    loss.backward()
    assert model.gain.grad is not None and logs["mse"] > 0
    video = spec.sample(model, Conditions.from_batch(batch), steps=1, guidance_scale=1.0)
    assert video.shape == batch["video"].shape
