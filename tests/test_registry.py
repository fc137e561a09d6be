import subprocess
import sys

import pytest

from singer.registry import (
    BACKBONES,
    CODECS,
    FRONTENDS,
    MODELS,
    Registry,
    UnknownNameError,
    format_listing,
)


def test_register_build_and_list():
    reg = Registry("widget_test", "test widgets")

    @reg.register("double")
    def double(x):
        """Doubles."""
        return 2 * x

    assert reg.build("double", 4) == 8
    assert reg.names() == ["double"]
    assert "double" in reg
    assert reg.describe() == {"double": "Doubles."}
    with pytest.raises(ValueError, match="already registered"):
        reg.register("double", lambda x: x)


def test_unknown_name_lists_known_names_and_suggests():
    with pytest.raises(UnknownNameError) as info:
        FRONTENDS.build("mell")
    text = str(info.value)
    assert "unknown frontend 'mell'" in text
    for name in ("mel", "msm", "raw", "sfm", "wav2vec2"):
        assert name in text
    assert "Did you mean 'mel'?" in text


def test_project_components_are_registered():
    assert {"raw", "mel", "msm", "sfm", "wav2vec2"} <= set(FRONTENDS.names())
    assert "unet3d" in BACKBONES.names()
    assert "identity" in CODECS.names()
    assert "singer" in MODELS.names()


def test_listing_cli_groups_everything():
    out = subprocess.run(
        [sys.executable, "-m", "singer.registry"], capture_output=True, text=True, check=True
    ).stdout
    for header in ("frontend", "backbone", "codec", "model"):
        assert any(line.startswith(header) for line in out.splitlines()), out
    assert "    msm" in out and "    unet3d" in out and "    singer" in out
    assert format_listing().count("\n") > 8


def test_listing_cli_rejects_unknown_kind():
    proc = subprocess.run(
        [sys.executable, "-m", "singer.registry", "gizmo"], capture_output=True, text=True
    )
    assert proc.returncode != 0
    assert "unknown kind 'gizmo'" in proc.stderr


@pytest.mark.parametrize(
    "backbone",
    [
        ["backbone=unet3d", "backbone.channels=[8,16]"],
        ["backbone=dit", "backbone.hidden_size=32", "backbone.depth=2"],
    ],
    ids=["unet3d", "dit"],
)
def test_components_are_initialised_from_their_own_streams(backbone):
    """Arms of a front-end ablation share the backbone's initial weights at the same seed, so
    they differ only by the change under test; another seed re-draws them; the global RNG is
    left alone."""
    import torch

    from singer.config import compose
    from singer.models.spec import get_model_spec

    def build(*overrides):
        cfg = compose(["trainer=cpu_tiny", *backbone, *overrides])
        return get_model_spec(cfg.model.name).build(cfg)

    torch.manual_seed(123)
    before = torch.get_rng_state()
    arms = [
        build("frontend=msm", "frontend.levels=1"),
        build("frontend=msm", "frontend.levels=4"),
        build("frontend=mel"),
        build("frontend=msm", "frontend.levels=1", "backbone.bottleneck_filter=none"),
    ]
    assert torch.equal(torch.get_rng_state(), before)
    reference = arms[0].backbone.state_dict()
    for arm in arms[1:3]:
        other = arm.backbone.state_dict()
        assert other.keys() == reference.keys()
        assert all(torch.equal(other[k], reference[k]) for k in reference)
    # the SFM bottleneck filter is part of the backbone: only its own parameters differ
    shared = [k for k in reference if k in arms[3].backbone.state_dict()]
    assert shared and all(
        torch.equal(arms[3].backbone.state_dict()[k], reference[k]) for k in shared
    )
    # the front-end's own layers that the ablation leaves alone are shared too
    assert torch.equal(arms[0].frontend.cond_proj.weight, arms[1].frontend.cond_proj.weight)
    reseeded = build("frontend=msm", "frontend.levels=1", "seed=1").backbone.state_dict()
    assert not all(torch.equal(reseeded[k], reference[k]) for k in reference)
