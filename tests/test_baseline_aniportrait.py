"""The aniportrait baseline: build by name, motion rendering and targets, both training modes
(joint and stage by stage with checkpoint hand-over), generation to mp4."""

import numpy as np
import pytest
import torch

from baselines.aniportrait import face_box_motion, render_motion
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
    return [
        *TINY,
        f"data.root={data_root}",
        "model=aniportrait",
        "tracking.experiment=t-aniportrait",
        *extra,
    ]


def test_builds_by_name_and_matches_singer_size(data_root):
    assert "aniportrait" in MODELS.names()
    cfg = compose(overrides(data_root))
    model = get_model_spec("aniportrait").build(cfg)
    singer = get_model_spec("singer").build(compose([*TINY, f"data.root={data_root}"]))
    ours, theirs = (
        count_parameters(model, trainable_only=True),
        count_parameters(singer, trainable_only=True),
    )
    print(
        f"aniportrait trainable params {ours:,} (total {count_parameters(model):,}); singer {theirs:,}"
    )
    assert abs(ours / theirs - 1) <= 0.2
    assert model.backbone.in_channels == 6 and model.backbone.out_channels == 3
    assert not model.backbone.audio_attention


def test_motion_image_moves_with_the_cues():
    size = 64
    motion = torch.zeros(1, 3, len(S.CUES))
    motion[0, :, S.CUES.index("mouth_width")] = 0.5
    motion[0, 1, S.CUES.index("sway")] = 1.0
    motion[0, 2, S.CUES.index("mouth_open")] = 1.0
    motion[0, 2, S.CUES.index("brow")] = 1.0
    image = render_motion(motion, size, size)
    assert image.shape == (1, 3, 3, size, size) and image.min() >= -1 and image.max() <= 1
    maps = (image[0] + 1) / 2  # C×F×H×W in [0, 1]
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")

    def centre(m):
        return float((m * xs).sum() / m.sum() / size), float((m * ys).sum() / m.sum() / size)

    mouth_x, mouth_y = centre(maps[0, 0])
    assert mouth_x == pytest.approx(S.REST_X, abs=0.01) and mouth_y == pytest.approx(
        S.REST_Y + S.MOUTH_Y, abs=0.01
    )
    assert centre(maps[0, 1])[0] - mouth_x == pytest.approx(
        S.SWAY_AMP, abs=0.01
    )  # head sway moves the mouth
    assert maps[0, 2].sum() > 1.5 * maps[0, 0].sum()  # an open mouth is a bigger blob
    assert centre(maps[2, 2])[1] < centre(maps[2, 0])[1] - 0.5 * S.BROW_AMP  # raised brows


def test_face_box_trajectory_targets():
    """Real clips (no truth): sway/nod from a face detector's per-frame box, other cues masked."""
    size = 64
    params = {name: np.zeros(3) for name in S.CUES}
    params["sway"] = np.array([0.0, 1.0, -1.0])
    speaker = S.sample_speaker(np.random.default_rng(0))
    frames = S.render_face(params, speaker.identity, size)
    background = np.asarray(speaker.identity["background"], dtype=np.float32)

    def silhouette_box(frame):  # a deterministic detector: the head silhouette's centre
        head = np.abs(frame.astype(np.float32) - background).sum(-1) > 40
        ys, xs = np.nonzero(head)
        return (xs.mean() + 0.5, ys.mean() + 0.5, float(np.sqrt(head.sum()))) if len(xs) else None

    video = torch.from_numpy(frames).float().div(127.5).sub(1).permute(3, 0, 1, 2)[None]
    motion, valid = face_box_motion(video, silhouette_box)
    sway, nod = S.CUES.index("sway"), S.CUES.index("nod")
    assert valid[..., sway].all() and valid[..., nod].all() and valid.sum() == 6
    assert motion[0, 1, sway] - motion[0, 0, sway] == pytest.approx(1.0, abs=0.15)
    assert motion[0, 2, sway] - motion[0, 0, sway] == pytest.approx(-1.0, abs=0.15)
    assert torch.isfinite(motion).all()


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("aniportrait-run")
    return train(
        compose(overrides(data_root, "trainer.steps=30", "trainer.val_every=30")),
        out,
        progress=False,
    )


def test_joint_training_smoke_loss_decreases(trained):
    assert trained.step == 30 and all(np.isfinite(trained.losses))
    assert trained.val_loss < 0.85 * trained.initial_val_loss, (
        trained.initial_val_loss,
        trained.val_loss,
    )
    assert trained.final_loss < trained.first_loss


def test_stages_train_separately_and_hand_over_by_checkpoint(data_root, tmp_path):
    stage1 = train(
        compose(
            overrides(
                data_root, "model.stage=audio2motion", "trainer.steps=3", "trainer.val_every=3"
            )
        ),
        tmp_path / "a2m",
        progress=False,
    )
    s1 = torch.load(stage1.checkpoint, weights_only=True)
    before = get_model_spec("aniportrait").build(compose(overrides(data_root))).state_dict()
    # stage 1 trained only the audio-to-motion part
    assert any(
        not torch.equal(s1["model"][k], before[k]) for k in before if k.startswith("audio2motion.")
    )
    cfg2 = compose(
        overrides(
            data_root,
            "model.stage=motion2video",
            f"model.checkpoints.audio2motion={stage1.out_dir}",
            "trainer.steps=3",
            "trainer.val_every=3",
        )
    )
    model2 = get_model_spec("aniportrait").build(cfg2)
    assert not any(p.requires_grad for p in model2.audio2motion.parameters())
    stage2 = train(cfg2, tmp_path / "m2v", progress=False)
    s2 = torch.load(stage2.checkpoint, weights_only=True)["model"]
    for key, value in s2.items():
        if key.startswith("audio2motion."):  # loaded from stage 1's EMA weights and left frozen
            assert torch.equal(value, s1["ema"][key]), key
    assert any(not torch.equal(s2[k], s1["model"][k]) for k in s2 if k.startswith("backbone."))
    with pytest.raises(FileNotFoundError, match="model.checkpoints.audio2motion"):
        get_model_spec("aniportrait").build(
            compose(
                overrides(
                    data_root,
                    "model.stage=motion2video",
                    f"model.checkpoints.audio2motion={tmp_path / 'missing'}",
                )
            )
        )


def test_generation_writes_valid_mp4(trained, tmp_path):
    face = np.random.default_rng(1).integers(0, 255, (50, 36, 3), dtype=np.uint8)
    loaded, audio, expected = check_generates_mp4(
        trained.out_dir, "aniportrait", tmp_path, face, tone_hz=330
    )
    # stage 1 at test time: motion follows the audio's length, in valid ranges
    motion = loaded.model.predict_motion(torch.from_numpy(audio)[None], expected)
    assert motion.shape == (1, expected, len(S.CUES)) and motion.min() >= -1 and motion.max() <= 1
