import pytest

from singer.config import ConfigError, compose, flatten, validate


def test_compose_defaults_name_registered_components():
    cfg = compose(["trainer=cpu_tiny"])
    assert cfg.frontend.name == "msm"
    assert cfg.backbone.name == "unet3d" and cfg.backbone.bottleneck_filter == "sfm"
    assert cfg.model.name == "singer"
    assert cfg.trainer.steps == 200 and cfg.trainer.size == 32
    assert cfg.model.diffusion.prediction_type == "v_prediction"


@pytest.mark.parametrize("frontend", ["raw", "mel", "msm", "sfm", "wav2vec2"])
def test_every_frontend_group_composes(frontend):
    cfg = compose([f"frontend={frontend}", "trainer=cpu_tiny"])
    assert cfg.frontend.name == frontend


def test_ablation_overrides():
    cfg = compose(
        [
            "frontend=msm",
            "frontend.levels=4",
            "frontend.wavelet=db2",
            "backbone.bottleneck_filter=none",
        ]
    )
    assert (cfg.frontend.levels, cfg.frontend.wavelet, cfg.backbone.bottleneck_filter) == (
        4,
        "db2",
        "none",
    )


def test_unknown_registry_name_is_rejected_with_known_names():
    with pytest.raises(ConfigError) as info:
        compose(["frontend.name=melody"])
    assert "frontend.name" in str(info.value) and "mel, msm" in str(info.value)


def test_import_targets_are_rejected():
    with pytest.raises(ConfigError, match="_target_"):
        compose(["+frontend._target_=os.system"])
    from omegaconf import OmegaConf

    cfg = compose([])
    OmegaConf.set_struct(cfg, False)
    cfg.backbone["_target_"] = "builtins.eval"
    with pytest.raises(ConfigError, match=r"backbone\._target_"):
        validate(cfg)


def test_flatten():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": "x"}) == {"a.b": 1, "a.c": [1, 2], "d": "x"}
