"""Audio front-ends: shapes, gradients, registry, windowing, MSM/SFM properties, wav2vec2 weights."""

import hashlib
import os
import warnings

import numpy as np
import pytest
import pywt
import torch

import singer.audio  # noqa: F401  (registers the front-ends)
from singer.audio.base import frame_windows, sample_at_frames
from singer.audio.msm import MSMFrontend
from singer.registry import FRONTENDS, UnknownNameError
from singer.weights import MissingWeightsError, WeightsChecksumError

SR, FPS = 16000, 25
SMALL = dict(dim=16, tokens=2)
TINY_W2V = dict(random_init=True, encoder_layers=1, hidden=32)


def build(name, **kwargs):
    extra = TINY_W2V if name == "wav2vec2" else {}
    return FRONTENDS.build(name, **{**SMALL, **extra, **kwargs})


def noisy_sample(batch, frames, channels=3, size=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, frames, size, size, generator=gen)


# -- registry --------------------------------------------------------------------------------


def test_registry_lists_every_frontend_and_rejects_unknown_names():
    assert {"raw", "mel", "msm", "sfm", "wav2vec2"} <= set(FRONTENDS.names())
    with pytest.raises(UnknownNameError) as info:
        FRONTENDS.build("nope")
    for name in ("raw", "mel", "msm", "sfm", "wav2vec2"):
        assert name in str(info.value)


# -- shared windowing ------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [0.0, 0.5])
def test_frame_windows_cover_plus_minus_k_frames(offset):
    # 100 Hz features, 25 fps: a frame spans 4 features, ±2 frames = 20 features.
    feats = torch.arange(1, 41, dtype=torch.float32).view(1, 40, 1)
    windows = frame_windows(feats, rate=100, num_frames=12, fps=FPS, window=2, offset=offset)[
        0, :, :, 0
    ]
    assert windows.shape == (12, 20)
    # frame 3 covers features 12..15 (values 13..16); ±2 frames → features 4..23
    assert windows[3].tolist() == list(range(5, 25))
    # edges are zero-padded
    assert windows[0, :8].eq(0).all() and windows[0, 8:].tolist() == list(range(1, 13))
    assert windows[11, :4].tolist() == [37, 38, 39, 40] and windows[11, 4:].eq(0).all()


def test_sample_at_frames_interpolates_at_frame_centres():
    feats = torch.arange(16, dtype=torch.float32).view(
        1, 16, 1
    )  # 50 Hz, feature i at (i + 0.5) / 50 s
    per_frame = sample_at_frames(feats, rate=50, num_frames=10, fps=FPS, offset=0.5)[0, :, 0]
    # frame f is centred at (f + 0.5) / 25 s = feature index 2f + 0.5 → mean of features 2f and 2f + 1
    torch.testing.assert_close(per_frame[:8], torch.arange(8, dtype=torch.float32) * 2 + 0.5)
    assert per_frame[8:].eq(0).all()  # past the end of the audio


# -- every front-end ---------------------------------------------------------------------------

ALL = ["raw", "mel", "msm", "sfm", "wav2vec2"]


@pytest.mark.parametrize("name", ALL)
def test_shapes_for_any_frame_count_and_audio_length(name):
    torch.manual_seed(0)
    frontend = build(name)
    assert (frontend.dim, frontend.tokens) == (16, 2)
    for frames, samples in [(8, 8 * SR // FPS), (5, 3001), (3, 6000), (1, 150)]:
        wav = torch.randn(2, samples) * 0.1
        out = frontend(wav, frames)
        assert out.shape == (2, frames, 2, 16)
        assert torch.isfinite(out).all()
        cond = frontend(wav, frames, x_t=noisy_sample(2, frames), t=torch.tensor([10, 900]))
        assert cond.shape == (2, frames, 2, 16)


@pytest.mark.parametrize("name", ALL)
def test_gradients_reach_trainable_parameters(name):
    torch.manual_seed(0)
    frontend = build(name)
    frontend.train()
    wav = torch.randn(2, 4 * SR // FPS) * 0.1
    frontend(wav, 4, x_t=noisy_sample(2, 4), t=torch.tensor([3, 500])).square().mean().backward()
    trainable = {n: p for n, p in frontend.named_parameters() if p.requires_grad}
    assert trainable
    for param_name, param in trainable.items():
        assert param.grad is not None, param_name
    assert trainable["projector.mlp.0.weight"].grad.abs().sum() > 0
    if name != "wav2vec2":  # the learned feature encoder trains too
        assert frontend.encoder.net[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ALL)
def test_fixed_seed_is_deterministic(name):
    wav = torch.randn(2, 3200) * 0.1
    outputs = []
    for _ in range(2):
        torch.manual_seed(123)
        frontend = build(name).eval()
        outputs.append(frontend(wav, 5, x_t=noisy_sample(2, 5), t=torch.tensor([1, 2])))
    assert torch.equal(outputs[0], outputs[1])
    torch.manual_seed(7)
    assert not torch.equal(build(name).eval()(wav, 5), outputs[0])


def test_audio_changes_tokens():
    torch.manual_seed(0)
    frontend = build("mel").eval()
    quiet = torch.zeros(1, 3200)
    tone = torch.sin(torch.arange(3200) * 2 * torch.pi * 440 / SR).unsqueeze(0) * 0.3
    assert (frontend(quiet, 5) - frontend(tone, 5)).abs().max() > 1e-3


def test_mel_normalisation_choices():
    torch.manual_seed(0)
    wav = torch.randn(2, 4000) * 0.1
    utterance = build("mel", normalize="utterance").encoder.log_mel(wav)
    torch.testing.assert_close(utterance.mean(dim=-1), torch.zeros(2, 64), atol=1e-4, rtol=0)
    louder = build("mel", normalize="global").encoder.log_mel(wav * 10)
    quieter = build("mel", normalize="global").encoder.log_mel(wav)
    assert louder.mean() > quieter.mean()  # absolute level is kept
    with pytest.raises(ValueError, match="normalize"):
        build("mel", normalize="per-song")


# -- msm -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("wavelet", ["haar", "db2", "sym4"])
@pytest.mark.parametrize("levels", [1, 2, 3, 4])
def test_msm_bands_reconstruct_with_unit_gains(wavelet, levels):
    frontend = build("msm", levels=levels, wavelet=wavelet)
    gen = torch.Generator().manual_seed(levels)
    for steps in (5, 16, 33, 101):
        feats = torch.randn(2, steps, 32, generator=gen)
        gains = torch.ones(2, levels + 1, 1)
        torch.testing.assert_close(frontend.filter_bands(feats, gains), feats, atol=1e-5, rtol=0)


@pytest.mark.parametrize("wavelet", ["haar", "db2", "sym4"])
def test_msm_bands_match_pywt(wavelet):
    """Keeping one sub-band reproduces pywt's reconstruction from that band alone."""
    levels, steps = 3, 37
    frontend = build("msm", levels=levels, wavelet=wavelet)
    feats = torch.randn(1, steps, 32, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = pywt.wavedec(
            feats[0].T.numpy(), wavelet, mode=frontend.mode, level=levels, axis=-1
        )
    for band in range(levels + 1):
        gains = torch.zeros(1, levels + 1, 1, dtype=torch.float64)
        gains[0, band] = 1.0
        kept = [c if i == band else np.zeros_like(c) for i, c in enumerate(reference)]
        expected = pywt.waverec(kept, wavelet, mode=frontend.mode, axis=-1)[:, :steps].T
        np.testing.assert_allclose(
            frontend.filter_bands(feats, gains)[0].numpy(), expected, atol=1e-8
        )


def test_msm_gains_start_at_one_and_leave_features_unchanged():
    torch.manual_seed(0)
    frontend = build("msm", levels=2, wavelet="db2", gain_groups=4)
    x_t, t = noisy_sample(3, 6), torch.tensor([0, 400, 999])
    gains = frontend.band_gains(3, x_t, t)
    assert gains.shape == (3, 3, 4)
    assert torch.equal(gains, torch.ones_like(gains))
    feats = torch.randn(3, 30, 32)
    torch.testing.assert_close(frontend.transform(feats, x_t, t), feats, atol=1e-5, rtol=0)
    wav = torch.randn(3, 6 * SR // FPS) * 0.1
    torch.testing.assert_close(
        frontend(wav, 6, x_t=x_t, t=t), frontend(wav, 6), atol=1e-5, rtol=1e-5
    )


def test_msm_gains_depend_on_noisy_sample_and_timestep_once_trained():
    torch.manual_seed(0)
    frontend = build("msm", levels=3, gain_groups=2)
    with torch.no_grad():  # what a training step does to the zero-initialised last layer
        frontend.gain_out.weight.normal_(0, 1.0)
    x_t = noisy_sample(2, 4)
    same_x = x_t[:1].expand(2, -1, -1, -1, -1)
    by_t = frontend.band_gains(2, same_x, torch.tensor([0, 900]))
    assert (by_t[0] - by_t[1]).abs().max() > 1e-3
    by_x = frontend.band_gains(2, x_t, torch.tensor([50, 50]))
    assert (by_x[0] - by_x[1]).abs().max() > 1e-3
    assert ((0 < by_x) & (by_x < 2)).all()
    # a scalar timestep is broadcast over the batch
    torch.testing.assert_close(frontend.band_gains(2, x_t, torch.tensor(50)), by_x)
    # no condition: the bias-only path, identical for every sample
    plain = frontend.band_gains(2)
    torch.testing.assert_close(plain[0], plain[1])
    wav = torch.randn(1, 4 * SR // FPS).expand(2, -1) * 0.1
    tokens = frontend(wav, 4, x_t=same_x, t=torch.tensor([0, 900]))
    assert (tokens[0] - tokens[1]).abs().max() > 1e-4


def test_msm_has_no_frozen_tensors_and_writes_no_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    frontend = build("msm")
    assert all(p.requires_grad for p in frontend.parameters())
    # the only buffers are the mel transform's fixed window and filterbank
    assert all(name.startswith("encoder.mel.") for name, _ in frontend.named_buffers())
    frontend(
        torch.randn(2, 3200), 5, x_t=noisy_sample(2, 5), t=torch.tensor([1, 2])
    ).sum().backward()
    assert os.listdir(tmp_path) == []


def test_msm_rejects_bad_settings():
    for levels in (0, 5):
        with pytest.raises(ValueError, match=r"1\.\.4"):
            build("msm", levels=levels)
    with pytest.raises(ValueError, match="unknown wavelet 'nope'"):
        build("msm", wavelet="nope")
    with pytest.raises(ValueError, match="gain_groups"):
        build("msm", gain_groups=5)
    with pytest.raises(ValueError, match="no feature extractor"):
        build("msm", base="wav2vec2")
    with pytest.raises(ValueError, match="x_t"):
        build("msm")(
            torch.randn(1, 3200), 5, x_t=noisy_sample(1, 5, channels=4), t=torch.tensor([1])
        )


def test_msm_and_sfm_on_raw_base():
    torch.manual_seed(0)
    for name in ("msm", "sfm"):
        frontend = build(name, base="raw", base_kwargs={"channels": 8})
        assert frontend.encoder.channels == 8 and type(frontend.encoder).__name__ == "RawFeatures"
        assert frontend(torch.randn(2, 3000), 4).shape == (2, 4, 2, 16)
    assert isinstance(build("msm"), MSMFrontend)


# -- sfm -----------------------------------------------------------------------------------------


def test_sfm_is_identity_on_features_at_init_and_trains():
    torch.manual_seed(0)
    frontend = build("sfm", levels=3, wavelet="sym4")
    with torch.no_grad():
        frontend.filter.gate.weight.normal_(0, 2.0)
    feats = torch.randn(2, 41, 32)
    torch.testing.assert_close(frontend.transform(feats, None, None), feats, atol=1e-5, rtol=0)
    frontend(torch.randn(2, 4000) * 0.1, 6).square().mean().backward()
    assert frontend.filter.gains.grad.abs().sum() > 0


# -- wav2vec2 ------------------------------------------------------------------------------------


def test_wav2vec2_without_weights_says_how_to_fix_it():
    with pytest.raises(MissingWeightsError) as info:
        FRONTENDS.build("wav2vec2", encoder_layers=1)
    text = str(info.value)
    for part in (
        "frontend.pretrained_path",
        "frontend.sha256",
        "frontend.random_init=true",
        "wav2vec2",
    ):
        assert part in text


def _saved_encoder(tmp_path, layers=1):
    torch.manual_seed(0)
    source = build("wav2vec2", encoder_layers=layers)
    path = tmp_path / "wav2vec2_base.pt"
    torch.save(source.encoder.state_dict(), path)
    return source, path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_wav2vec2_loads_a_local_state_dict(tmp_path):
    source, path, digest = _saved_encoder(tmp_path, layers=2)
    torch.manual_seed(99)  # a different random encoder init, overwritten by the file
    loaded = build(
        "wav2vec2", random_init=False, pretrained_path=str(path), sha256=digest, encoder_layers=2
    )
    loaded.projector.load_state_dict(source.projector.state_dict())
    wav = torch.randn(2, 4000) * 0.1
    assert torch.equal(loaded(wav, 6), source(wav, 6))
    # the encoder is frozen and stays in eval mode
    loaded.train()
    assert not loaded.encoder.training and loaded.projector.training
    assert not any(p.requires_grad for p in loaded.encoder.parameters())
    # a 2-layer file also serves a 1-layer encoder (its first layer)
    short = build(
        "wav2vec2", random_init=False, pretrained_path=str(path), sha256=digest, encoder_layers=1
    )
    first = source.encoder.encoder.transformer.layers[0].attention.k_proj.weight
    assert torch.equal(short.encoder.encoder.transformer.layers[0].attention.k_proj.weight, first)


def test_wav2vec2_checksum_and_format_errors(tmp_path):
    _, path, digest = _saved_encoder(tmp_path)
    with pytest.raises(WeightsChecksumError, match=digest):
        build("wav2vec2", random_init=False, pretrained_path=str(path), sha256="0" * 64)
    wrong = tmp_path / "other.pt"
    torch.save({"layer.weight": torch.zeros(2)}, wrong)
    with pytest.raises(ValueError, match="not a torchaudio wav2vec2-base state dict"):
        wrong_digest = hashlib.sha256(wrong.read_bytes()).hexdigest()
        build("wav2vec2", random_init=False, pretrained_path=str(wrong), sha256=wrong_digest)
    with pytest.raises(ValueError, match="encoder_layers"):
        build("wav2vec2", encoder_layers=13)
