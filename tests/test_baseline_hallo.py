"""The hallo baseline: build by name, region masks, training smoke, generation to mp4."""

import numpy as np
import pytest
import torch

from baselines.hallo import REGIONS, region_masks
from generation_helpers import check_generates_mp4
from singer.config import compose
from singer.data import synth as S
from singer.models import count_parameters, get_model_spec
from singer.registry import MODELS
from singer.trainer import train

TINY = [
    "trainer=cpu_tiny",
    "trainer.sample_at_end=false",
    "trainer.threads=2",
    "data.synth.clips=6",
    "data.synth.seconds=2.0",
    "backbone.channels=[16,32,64]",
    "trainer.num_frames=4",
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("synthsing")


def overrides(data_root, *extra):
    return [*TINY, f"data.root={data_root}", "model=hallo", "tracking.experiment=t-hallo", *extra]


def test_builds_by_name_and_matches_singer_size(data_root):
    assert "hallo" in MODELS.names()
    cfg = compose(overrides(data_root))
    assert (
        cfg.frontend.name == "wav2vec2" and cfg.frontend.tokens == 32 and cfg.frontend.window == 2
    )
    model = get_model_spec("hallo").build(cfg)
    singer = get_model_spec("singer").build(compose([*TINY, f"data.root={data_root}"]))
    ours, theirs = (
        count_parameters(model, trainable_only=True),
        count_parameters(singer, trainable_only=True),
    )
    print(f"hallo trainable params {ours:,} (total {count_parameters(model):,}); singer {theirs:,}")
    assert abs(ours / theirs - 1) <= 0.2
    assert model.geometry == "synthsing" and model.backbone.audio_regions == len(REGIONS)
    weights = [m for n, m in model.named_parameters() if n.endswith("audio_region_weights")]
    assert len(weights) == 7 and all(torch.equal(w, torch.ones(3)) for w in weights)


def test_region_masks_follow_the_renderer_geometry():
    size, f = 64, 3
    cues = torch.zeros(1, f, len(S.CUES))
    cues[0, 1, S.CUES.index("sway")] = 1.0
    cues[0, 2, S.CUES.index("nod")] = 1.0
    masks = region_masks("synthsing", 1, f, size, size, cues=cues, has_cues=torch.tensor([True]))
    assert masks.shape == (1, 3, f, size, size)
    torch.testing.assert_close(masks.sum(dim=1), torch.ones(1, f, size, size))
    assert masks.min() >= 0
    lip, face, pose = masks[0]
    mouth = (int((S.REST_Y + S.MOUTH_Y) * size), int(S.REST_X * size))
    eye = (int((S.REST_Y + S.EYE_Y) * size), int((S.REST_X + S.EYE_X) * size))
    assert lip[0][mouth] == 1 and face[0][eye] == 1 and pose[0][0, 0] == 1
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")

    def centre(m):
        return float((m * xs).sum() / m.sum() / size), float((m * ys).sum() / m.sum() / size)

    rest_x, rest_y = centre(lip[0])
    sway_x, _ = centre(lip[1])
    _, nod_y = centre(lip[2])
    assert sway_x - rest_x == pytest.approx(S.SWAY_AMP, abs=0.01)
    assert nod_y - rest_y == pytest.approx(S.NOD_AMP, abs=0.01)
    # without truth the masks are static (rest pose)
    static = region_masks("synthsing", 1, f, size, size, cues=cues, has_cues=torch.tensor([False]))
    torch.testing.assert_close(static[0, :, 1], static[0, :, 0])
    # real data: face box centred in the prepared crop, lips below its centre
    box = region_masks("face_box", 2, 1, size, size)
    torch.testing.assert_close(box.sum(dim=1), torch.ones(2, 1, size, size))
    lip_x, lip_y = centre(box[0, 0, 0])
    assert lip_x == pytest.approx(0.5, abs=0.01) and 0.6 < lip_y < 0.75


def test_region_weighted_loss_reduces_to_the_plain_loss():
    model = get_model_spec("hallo").build(compose(["model=hallo", *TINY]))
    x0 = torch.rand(2, 3, 4, 32, 32) * 2 - 1

    def denoise(x_t, t):
        return x_t * 0.5

    plain, plain_logs = model.diffusion.training_loss(
        denoise, x0, generator=torch.Generator().manual_seed(0)
    )
    ones = torch.ones(2, 1, 4, 32, 32)
    same, logs = model.diffusion.training_loss(
        denoise, x0, generator=torch.Generator().manual_seed(0), weight=ones
    )
    torch.testing.assert_close(same, plain)
    assert logs["mse"] == pytest.approx(plain_logs["mse"])
    heavier, _ = model.diffusion.training_loss(
        denoise, x0, generator=torch.Generator().manual_seed(0), weight=ones * 3
    )
    torch.testing.assert_close(heavier, 3 * plain)


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("hallo-run")
    cfg = compose(
        overrides(
            data_root,
            "trainer.steps=30",
            "trainer.val_every=30",
            "model.regions.loss_weights=[1.0,0.5,0.0]",
        )
    )
    return train(cfg, out, progress=False)


def test_training_smoke_loss_decreases(trained):
    assert trained.step == 30 and all(np.isfinite(trained.losses))
    assert trained.val_loss < 0.85 * trained.initial_val_loss, (
        trained.initial_val_loss,
        trained.val_loss,
    )
    assert trained.final_loss < trained.first_loss
    state = torch.load(trained.checkpoint, weights_only=True)["model"]
    learned = [v for k, v in state.items() if k.endswith("audio_region_weights")]
    assert learned and any(not torch.equal(w, torch.ones(3)) for w in learned)


def test_generation_writes_valid_mp4(trained, tmp_path):
    face = np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    check_generates_mp4(trained.out_dir, "hallo", tmp_path, face, tone_hz=220)
