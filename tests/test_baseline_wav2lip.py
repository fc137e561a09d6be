"""The wav2lip baseline: build by name, training with a sync expert (loss decreases), without one
(warning), with the discriminator switched on, generation to mp4."""

from pathlib import Path

import numpy as np
import pytest
import torch

from baselines.wav2lip import BufferedAdam, mask_lower_half
from generation_helpers import check_generates_mp4
from singer.config import compose
from singer.models import Conditions, count_parameters, get_model_spec
from singer.registry import MODELS
from singer.trainer import train
from singer.weights import MissingWeightsError

TINY = [
    "trainer=cpu_tiny",
    "trainer.sample_at_end=false",
    "trainer.threads=2",
    "data.synth.clips=6",
    "data.synth.seconds=2.0",
    "backbone.channels=[16,32,64]",
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("synthsing")


def overrides(data_root, *extra):
    return [
        *TINY,
        f"data.root={data_root}",
        "model=wav2lip",
        "tracking.experiment=t-wav2lip",
        *extra,
    ]


def test_builds_by_name_and_matches_singer_size(data_root):
    assert "wav2lip" in MODELS.names()
    cfg = compose(overrides(data_root))
    assert cfg.model.sync.expert == "train" and not cfg.model.disc.enabled
    model = get_model_spec("wav2lip").build(cfg)
    singer = get_model_spec("singer").build(compose([*TINY, f"data.root={data_root}"]))
    ours, theirs = (
        count_parameters(model, trainable_only=True),
        count_parameters(singer, trainable_only=True),
    )
    print(
        f"wav2lip trainable params {ours:,} (total {count_parameters(model):,}); singer {theirs:,}"
    )
    assert abs(ours / theirs - 1) <= 0.2
    assert model.discriminator is None and model.sync_weight == 0.03
    assert model.expert_config["model"]["name"] == "syncnet"  # nothing is trained by building
    with_disc = get_model_spec("wav2lip").build(
        compose(overrides(data_root, "model.disc.enabled=true"))
    )
    disc = count_parameters(with_disc.discriminator)
    print(f"wav2lip discriminator params {disc:,} (not trainer-optimised)")
    assert (
        count_parameters(with_disc, trainable_only=True) == ours
    )  # the trainer never sees the discriminator
    assert count_parameters(with_disc) >= ours + disc


def test_generator_output_and_masking():
    frames = torch.rand(2, 3, 4, 32, 32) * 2 - 1
    masked = mask_lower_half(frames)
    assert torch.equal(masked[..., :16, :], frames[..., :16, :]) and bool(
        (masked[..., 16:, :] == -1).all()
    )
    model = get_model_spec("wav2lip").build(compose(["model=wav2lip", *TINY])).eval()
    conditions = Conditions(audio=torch.randn(2, 4 * 640) * 0.1, ref=frames[:, :, 0], num_frames=4)
    spec = get_model_spec("wav2lip")
    video = spec.sample(
        model, conditions, steps=7, guidance_scale=3.5, generator=torch.Generator().manual_seed(1)
    )
    assert video.shape == (2, 3, 4, 32, 32) and video.min() >= -1 and video.max() <= 1
    # one deterministic forward pass: the diffusion options change nothing
    torch.testing.assert_close(
        spec.sample(model, conditions, steps=1, guidance_scale=1.0, generator=None), video
    )
    # another frame size is resized in and out
    small = Conditions(audio=conditions.audio, ref=frames[:, :, 0, :24, :24], num_frames=4)
    assert spec.sample(model, small, steps=1, guidance_scale=1.0, generator=None).shape == (
        2,
        3,
        4,
        24,
        24,
    )


def test_buffered_adam_matches_torch_adam():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    ours = BufferedAdam(list(a.parameters()), lr=1e-2, betas=(0.5, 0.999))
    reference = torch.optim.Adam(b.parameters(), lr=1e-2, betas=(0.5, 0.999))
    for _ in range(5):
        x = torch.randn(8, 4)
        grads = torch.autograd.grad(a(x).pow(2).mean(), list(a.parameters()))
        ours.step(list(a.parameters()), grads)
        reference.zero_grad()
        b(x).pow(2).mean().backward()
        reference.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    assert float(ours.steps) == 5 and "exp_avg_0" in ours.state_dict()


def test_without_expert_it_warns_and_trains_on_l1_only():
    model = (
        get_model_spec("wav2lip")
        .build(compose(["model=wav2lip", *TINY, "model.sync.expert=null"]))
        .train()
    )
    batch = {
        "video": torch.rand(2, 3, 8, 32, 32) * 2 - 1,
        "ref": torch.rand(2, 3, 32, 32) * 2 - 1,
        "audio": torch.randn(2, 8 * 640) * 0.1,
    }
    with pytest.warns(UserWarning, match="no lip-sync expert given"):
        loss, logs = model.training_loss(batch)
    assert "sync" not in logs and loss.item() == pytest.approx(logs["l1"])


def test_missing_expert_file_is_a_clear_error(tmp_path):
    cfg = compose(["model=wav2lip", *TINY, f"model.sync.expert={tmp_path / 'no-such-run'}"])
    model = (
        get_model_spec("wav2lip").build(cfg).train()
    )  # building (e.g. to generate) does not need it
    batch = {
        "video": torch.rand(1, 3, 8, 32, 32) * 2 - 1,
        "ref": torch.rand(1, 3, 32, 32) * 2 - 1,
        "audio": torch.randn(1, 8 * 640) * 0.1,
    }
    with pytest.raises(MissingWeightsError, match="model.sync.expert") as info:
        model.training_loss(batch)
    assert "model=syncnet" in str(info.value)


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    """wav2lip as configured (model.sync.expert=train): a (barely trained) expert on the same data first."""
    out = tmp_path_factory.mktemp("wav2lip-run")
    cfg = compose(
        overrides(data_root, "trainer.steps=30", "trainer.val_every=30", "model.sync.train_steps=4")
    )
    return train(cfg, out, progress=False)


def _expert_dir(data_root) -> Path:
    (found,) = list((Path(data_root) / "sync_experts").glob("*/.complete"))
    return found.parent


def test_training_smoke_loss_decreases(trained, data_root):
    assert trained.step == 30 and all(np.isfinite(trained.losses))
    assert trained.val_loss < 0.85 * trained.initial_val_loss, (
        trained.initial_val_loss,
        trained.val_loss,
    )
    assert trained.final_loss < trained.first_loss
    assert np.isfinite(trained.metrics["train/sync"]) and "train/mse" in trained.metrics
    # the in-job expert: trained first, into the data root, as an ordinary model=syncnet run
    expert = _expert_dir(data_root)
    state = torch.load(expert / "checkpoints" / "last.pt", weights_only=True)
    assert state["config"]["model"]["name"] == "syncnet" and state["step"] == 4


def test_discriminator_switch_trains(data_root, trained, tmp_path):
    steps = 3
    expert = _expert_dir(data_root)  # an expert given by path
    cfg = compose(
        overrides(
            data_root,
            f"trainer.steps={steps}",
            "trainer.val_every=3",
            "model.disc.enabled=true",
            f"model.sync.expert={expert}",
        )
    )
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.step == steps and all(np.isfinite(result.losses))
    for key in ("train/d_loss", "train/d_real", "train/d_fake", "train/adv", "train/sync"):
        assert np.isfinite(result.metrics[key]), key
    state = torch.load(result.checkpoint, weights_only=True)["model"]
    assert float(state["disc_optimizer.steps"]) == steps  # one discriminator step per training step
    torch.manual_seed(cfg.seed)  # the trainer's initial weights
    initial = get_model_spec("wav2lip").build(cfg).state_dict()
    changed = [
        k
        for k in initial
        if k.startswith("discriminator.") and not torch.equal(initial[k], state[k])
    ]
    assert changed, "the discriminator was not updated"


def test_generation_writes_valid_mp4(trained, tmp_path):
    face = np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    check_generates_mp4(trained.out_dir, "wav2lip", tmp_path, face, tone_hz=220)
