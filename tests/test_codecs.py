"""Codecs: identity, the harness's own autoencoder (tiny_ae) and a diffusers VAE (sd_vae);
training the autoencoder, loading it as a frozen codec, and SINGER trained in its latent space."""

import mlflow
import numpy as np
import pytest
import torch

from singer.codecs import SDVAECodec, fold_frames
from singer.config import compose
from singer.registry import CODECS
from singer.trainer import train
from singer.weights import MissingWeightsError, WeightsChecksumError, sha256_file

FAST = [
    "trainer=cpu_tiny",
    "trainer.sample_at_end=false",
    "data.synth.clips=6",
    "data.synth.seconds=2.0",
]


def video(b=2, f=3, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, f, h, w, generator=g) * 2 - 1


def assert_frozen(codec):
    assert all(not p.requires_grad for p in codec.parameters())
    codec.train()
    assert not any(m.training for m in codec.modules())


# -- identity -------------------------------------------------------------------------------
def test_identity_round_trip():
    codec = CODECS.build("identity")
    x = video()
    assert (codec.latent_channels, codec.downsample) == (3, 1)
    assert torch.equal(codec.encode(x), x)
    assert torch.equal(codec.decode(codec.encode(x)), x)
    assert compose([]).codec.name == "identity"  # pixel space stays the default


# -- tiny_ae --------------------------------------------------------------------------------
def test_tiny_ae_random_round_trip_shapes_and_frozen():
    codec = CODECS.build("tiny_ae", checkpoint="random", base_channels=8, max_channels=16)
    assert (codec.latent_channels, codec.downsample) == (4, 4)
    x = video().requires_grad_(True)
    z = codec.encode(x)
    assert z.shape == (2, 4, 3, 8, 8) and not z.requires_grad
    out = codec.decode(z)
    assert out.shape == x.shape and out.abs().max() <= 1.0
    # frames are coded independently: a clip's frame equals that frame coded alone
    assert torch.allclose(codec.encode(x[:, :, 1:2].detach())[:, :, 0], z[:, :, 1], atol=1e-5)
    assert_frozen(codec)
    with pytest.raises(ValueError, match="divisible"):
        codec.encode(video(h=30, w=30))


def test_tiny_ae_without_checkpoint_says_how_to_train_one(tmp_path):
    with pytest.raises(MissingWeightsError) as info:
        CODECS.build("tiny_ae")
    text = str(info.value)
    assert "codec.checkpoint" in text and "python -m singer.train model=autoencoder" in text
    assert "codec.checkpoint=random" in text
    with pytest.raises(MissingWeightsError, match="python -m singer.train model=autoencoder"):
        CODECS.build("tiny_ae", checkpoint=str(tmp_path / "no_run"))


# -- sd_vae ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    """A tiny, randomly initialised diffusers AutoencoderKL (4 blocks → downsample 8) on disk."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=4,
        latent_channels=4,
        sample_size=32,
    )
    path = tmp_path_factory.mktemp("weights") / "sd-vae"
    vae.save_pretrained(path)
    assert (path / "config.json").is_file() and (
        path / "diffusion_pytorch_model.safetensors"
    ).is_file()
    return path


def test_sd_vae_round_trip_shapes_frozen_and_scaled(vae_dir):
    digest = sha256_file(vae_dir / "diffusion_pytorch_model.safetensors")
    codec = CODECS.build("sd_vae", path=str(vae_dir), sha256=digest, chunk=4)
    assert isinstance(codec, SDVAECodec)
    assert (codec.latent_channels, codec.downsample, codec.scaling_factor) == (4, 8, 0.18215)
    x = video(b=2, f=3)
    z = codec.encode(x)
    assert z.shape == (2, 4, 3, 4, 4)
    assert torch.equal(z, codec.encode(x))  # posterior mean: deterministic
    with torch.no_grad():  # the same numbers as diffusers itself gives, frame by frame
        ref = codec.vae.encode(fold_frames(x)).latent_dist.mean * 0.18215
    assert torch.allclose(fold_frames(z), ref, atol=1e-5)
    assert codec.decode(z).shape == x.shape
    assert_frozen(codec)


def test_sd_vae_missing_folder_and_wrong_checksum(vae_dir, tmp_path):
    with pytest.raises(MissingWeightsError) as info:
        CODECS.build("sd_vae", path=str(tmp_path / "nowhere"))
    text = str(info.value)
    for part in (
        "codec=sd_vae",
        "nowhere",
        "config.json",
        "diffusion_pytorch_model.safetensors",
        "codec.path",
        "AutoencoderKL",
    ):
        assert part in text, part
    assert "weights/sd-vae" in str(compose(["codec=sd_vae"]).codec.path)
    with pytest.raises(WeightsChecksumError, match="codec.sha256"):
        CODECS.build("sd_vae", path=str(vae_dir), sha256="0" * 64)


def test_singer_trains_in_sd_vae_latents(vae_dir, data_root, tmp_path):
    cfg = compose(
        [
            *FAST,
            f"data.root={data_root}",
            "codec=sd_vae",
            f"codec.path={vae_dir}",
            "frontend=mel",
            "trainer.steps=2",
            "trainer.val_every=2",
        ]
    )
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.step == 2 and all(np.isfinite(result.losses))


# -- training the autoencoder and using it ---------------------------------------------------
@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("synthsing")


AE_ARGS = [
    "model=autoencoder",
    "model.base_channels=16",
    "model.max_channels=32",
    "trainer.steps=40",
    "trainer.val_every=40",
    "trainer.ckpt_every=40",
    "trainer.warmup_steps=5",
]


@pytest.fixture(scope="module")
def ae_run(data_root, tmp_path_factory):
    # 8 speakers: val/mse is measured on held-out speakers, and one held-out face among three
    # (FAST's 6 clips) can sit far from the two the autoencoder trained on
    cfg = compose(
        [
            *FAST,
            "data.synth.clips=16",
            f"data.root={data_root}",
            *AE_ARGS,
            "tracking.experiment=t-ae",
        ]
    )
    out = tmp_path_factory.mktemp("ae") / "run"
    return cfg, train(cfg, out, progress=False)


def test_autoencoder_training_reduces_reconstruction_error(ae_run):
    cfg, result = ae_run
    assert result.step == 40 and all(np.isfinite(result.losses))
    assert result.final_loss < 0.6 * result.first_loss, (result.first_loss, result.final_loss)
    history = mlflow.MlflowClient().get_metric_history(result.run_id, "val/mse")
    mse = {m.step: m.value for m in history}
    assert mse[40] < 0.5 * mse[0], mse  # held-out speakers, fixed batches
    assert not (result.out_dir / "samples").exists()  # nothing to sample


def test_trained_autoencoder_loads_as_frozen_codec(ae_run, data_root):
    cfg, result = ae_run
    state = torch.load(result.checkpoint, weights_only=True)
    for where in (result.out_dir, result.checkpoint):
        codec = CODECS.build("tiny_ae", checkpoint=str(where))
        own = codec.ae.state_dict()
        assert own.keys() == {k[3:] for k in state["ema"] if k.startswith("ae.")}
        assert all(torch.equal(own[k], state["ema"]["ae." + k]) for k in own)
        assert_frozen(codec)
    assert (codec.latent_channels, codec.downsample) == (4, 4)
    with pytest.raises(ValueError, match="latent_channels"):
        CODECS.build("tiny_ae", checkpoint=str(result.out_dir), latent_channels=8)

    # on the training data, latents are roughly standardised and decode back to the frames
    from singer.data.batches import build_datasets

    train_set, _, _ = build_datasets(cfg)
    x = torch.stack([train_set[i]["video"] for i in range(4)])
    z = codec.encode(x)
    assert z.shape == (4, 4, x.shape[2], 8, 8)
    assert 0.5 < float(z.std()) < 2.0 and abs(float(z.mean())) < 0.5, (
        float(z.mean()),
        float(z.std()),
    )
    recon = codec.decode(z)
    assert recon.shape == x.shape
    assert float((recon - x).pow(2).mean()) < 0.5 * float(x.var())


def test_singer_trains_in_tiny_ae_latents_and_generates(ae_run, data_root, tmp_path):
    from singer.inference import generate_video, load_model

    _, ae = ae_run
    cfg = compose(
        [
            *FAST,
            f"data.root={data_root}",
            "codec=tiny_ae",
            f"codec.checkpoint={ae.out_dir}",
            "trainer.steps=3",
            "trainer.val_every=3",
            "model.sample.steps=2",
        ]
    )
    result = train(cfg, tmp_path / "singer", progress=False)
    assert result.step == 3 and all(np.isfinite(result.losses))

    # the codec stayed frozen through training (AdamW's weight decay would have moved it)
    ae_weights = torch.load(ae.checkpoint, weights_only=True)["ema"]
    saved = torch.load(result.checkpoint, weights_only=True)["model"]
    codec_keys = [k for k in saved if k.startswith("codec.ae.")]
    assert codec_keys and all(
        torch.equal(saved[k], ae_weights[k[len("codec.") :]]) for k in codec_keys
    )

    loaded = load_model(result.out_dir, device="cpu")
    assert (
        loaded.model.backbone.in_channels == 4
        if hasattr(loaded.model.backbone, "in_channels")
        else True
    )
    rng = np.random.default_rng(0)
    face = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    audio = (
        rng.standard_normal(int(0.48 * 16000)).astype(np.float32) * 0.1
    )  # 12 frames → 2 chained clips
    frames = generate_video(
        loaded, face, audio, steps=2, guidance_scale=2.0, seed=0, progress=False
    )
    assert frames.shape == (12, 32, 32, 3) and frames.dtype == np.uint8


def test_generation_refuses_the_autoencoder(ae_run):
    from singer.inference import generate_video, load_model

    _, result = ae_run
    loaded = load_model(result.out_dir, device="cpu")
    assert loaded.spec.sample is None
    with pytest.raises(ValueError, match="does not generate video"):
        generate_video(
            loaded, np.zeros((32, 32, 3), np.uint8), np.zeros(8000, np.float32), progress=False
        )
