"""The lip-sync expert (model=syncnet), SyncNet v2 (real weights layout), and the LSE-C / LSE-D
metrics ``sync`` and ``sync_offline``."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from singer.config import compose
from singer.metrics.base import EvalBatch
from singer.metrics.sync import distance_curve, lse_scores
from singer.models import count_parameters, get_model_spec
from singer.models.syncnet import (
    SyncNetV2,
    frame_to_mel,
    log_mel,
    mel_windows,
    mfcc_psf,
    syncnet_v2_state_keys,
)
from singer.registry import METRICS, MODELS
from singer.trainer import train
from singer.weights import MissingWeightsError, WeightsChecksumError, sha256_file

TINY = [
    "trainer=cpu_tiny",
    "trainer.threads=2",
    "data.synth.clips=6",
    "data.synth.seconds=2.0",
    "model=syncnet",
    "tracking.experiment=t-syncnet",
]


def test_registered_by_name():
    assert "syncnet" in MODELS.names()
    assert {"sync", "sync_offline"} <= set(METRICS.names())
    spec = get_model_spec("syncnet")
    assert spec.sample is None and spec.config == "syncnet"


# -- LSE maths ---------------------------------------------------------------------------------------
def _unit(x):
    return F.normalize(x, dim=-1)


def test_lse_finds_the_offset_and_is_confident_only_in_sync():
    g = torch.Generator().manual_seed(0)
    n, d, shift = 40, 32, 3
    audio = _unit(torch.randn(n + shift, d, generator=g))
    # video window i shows what audio window i+shift holds (the audio lags by `shift` frames)
    video = _unit(audio[shift:] + 0.03 * torch.randn(n, d, generator=g))
    audio = audio[:n]
    conf, dist, offset = lse_scores(video, audio, vshift=8, padding="valid")
    assert offset == shift
    assert dist < 0.3 and conf > 0.8
    unrelated = _unit(torch.randn(n, d, generator=g))
    conf_u, dist_u, _ = lse_scores(video, unrelated, vshift=8, padding="valid")
    assert conf_u < 0.25 * conf and dist_u > 3 * dist
    # in sync: the dip sits at 0
    assert lse_scores(_unit(audio + 0.03 * torch.randn(n, d, generator=g)), audio, vshift=8)[2] == 0


def test_distance_curve_matches_the_protocol_by_hand():
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    a = torch.tensor([[0.0, 1.0], [1.0, 1.0], [2.0, 0.0]])
    vshift = 1
    # zero padding (reference protocol): audio outside the clip is the zero vector
    padded = [torch.zeros(2), *a, torch.zeros(2)]
    expected = [np.mean([float((v[i] - padded[i + j]).norm()) for i in range(3)]) for j in range(3)]
    torch.testing.assert_close(
        distance_curve(v, a, vshift, "zeros"), torch.tensor(expected, dtype=torch.float64)
    )
    # valid pairs only
    valid = [
        np.mean([float((v[i] - a[i + dd]).norm()) for i in range(3) if 0 <= i + dd < 3])
        for dd in (-1, 0, 1)
    ]
    torch.testing.assert_close(
        distance_curve(v, a, vshift, "valid"), torch.tensor(valid, dtype=torch.float64)
    )
    conf, dist, offset = lse_scores(v, a, vshift, "zeros")
    assert dist == pytest.approx(min(expected)) and conf == pytest.approx(
        sorted(expected)[1] - min(expected)
    )
    assert offset == int(np.argmin(expected)) - vshift


# -- audio features -----------------------------------------------------------------------------------
def test_mel_windows_follow_the_video_frames():
    fps, frames = 25, 8
    wav = torch.randn(2, frames * 640) * 0.1
    mel = log_mel(wav)
    assert mel.shape == (2, 80, 1 + frames * 640 // 200)
    assert mel.min() >= -4 and mel.max() <= 4
    starts = frame_to_mel(torch.arange(-2, 4), fps)
    assert starts.tolist() == [-7, -4, 0, 3, 6, 9]  # floor(80·i/25)
    windows = mel_windows(mel, starts)
    assert windows.shape == (2, 6, 80, 16)
    torch.testing.assert_close(windows[:, 2], mel[:, :, 0:16])
    torch.testing.assert_close(windows[:, 5], mel[:, :, 9:25])
    torch.testing.assert_close(
        windows[:, 0, :, :8], mel[:, :, :1].expand(-1, -1, 8)
    )  # edge repeated
    # other sample rates are resampled to 16 kHz first
    assert log_mel(torch.randn(1, 8000), sample_rate=8000).shape[-1] == 81


def _reference_mfcc(signal: np.ndarray, sr: int = 16000) -> np.ndarray:
    """The python_speech_features recipe, written out with loops and scipy's DCT."""
    from scipy.fft import dct

    x = np.append(signal[0], signal[1:] - 0.97 * signal[:-1])
    flen, step, nfft, nfilt = 400, 160, 512, 26
    num = 1 + int(math.ceil((len(x) - flen) / step))
    x = np.concatenate([x, np.zeros((num - 1) * step + flen - len(x))])
    frames = np.stack([x[i * step : i * step + flen] for i in range(num)])
    pspec = np.abs(np.fft.rfft(frames, nfft)) ** 2 / nfft
    energy = pspec.sum(1)
    mel = np.linspace(0, 2595 * np.log10(1 + (sr / 2) / 700), nfilt + 2)
    bins = np.floor((nfft + 1) * (700 * (10 ** (mel / 2595) - 1)) / sr)
    bank = np.zeros((nfilt, nfft // 2 + 1))
    for j in range(nfilt):
        for i in range(int(bins[j]), int(bins[j + 1])):
            bank[j, i] = (i - bins[j]) / (bins[j + 1] - bins[j])
        for i in range(int(bins[j + 1]), int(bins[j + 2])):
            bank[j, i] = (bins[j + 2] - i) / (bins[j + 2] - bins[j + 1])
    feat = np.log(pspec @ bank.T)
    cep = dct(feat, type=2, axis=1, norm="ortho")[:, :13]
    cep *= 1 + 11 * np.sin(np.pi * np.arange(13) / 22)
    cep[:, 0] = np.log(energy)
    return cep.T


def test_mfcc_follows_the_python_speech_features_recipe():
    rng = np.random.default_rng(0)
    t = np.arange(8000) / 16000
    signal = (np.sin(2 * np.pi * 220 * t) * 3000 + rng.normal(0, 300, t.size)).astype(np.float64)
    ours = mfcc_psf(torch.from_numpy(signal)[None]).double()[0].numpy()
    assert ours.shape == (13, 1 + math.ceil((8000 - 400) / 160))
    np.testing.assert_allclose(ours, _reference_mfcc(signal), rtol=1e-4, atol=1e-3)


# -- SyncNet v2 (the `sync` metric) ---------------------------------------------------------------------
def test_syncnet_v2_layout():
    keys = syncnet_v2_state_keys()
    assert keys["netcnnaud.0.weight"] == (64, 1, 3, 3)
    assert keys["netcnnaud.18.weight"] == (512, 256, 5, 4)
    assert keys["netcnnaud.19.running_var"] == (512,)
    assert keys["netfcaud.3.weight"] == (1024, 512)
    assert keys["netcnnlip.0.weight"] == (96, 3, 5, 7, 7)
    assert keys["netcnnlip.4.weight"] == (256, 96, 1, 5, 5)
    assert keys["netcnnlip.18.weight"] == (512, 256, 1, 6, 6)
    assert keys["netfclip.1.running_mean"] == (512,)
    net = SyncNetV2().eval()
    with torch.no_grad():
        assert net.netcnnaud(torch.zeros(1, 1, 13, 20)).shape == (1, 512, 1, 1)
        assert net.netcnnlip(torch.zeros(1, 3, 5, 224, 224)).shape == (1, 512, 1, 1, 1)


def _clip_batch(frames: int, clips: int = 1, size: int = 32, seed: int = 0) -> EvalBatch:
    g = torch.Generator().manual_seed(seed)
    video = torch.rand(clips, 3, frames, size, size, generator=g) * 2 - 1
    audio = torch.randn(clips, frames * 640, generator=g) * 0.1
    return EvalBatch(generated=video, reference=None, audio=audio, sample_rate=16000, fps=25.0)


def test_sync_metric_loads_a_checked_state_dict_and_scores(tmp_path):
    torch.manual_seed(0)
    net = SyncNetV2()
    for module in net.modules():  # non-trivial running stats, as a trained file has
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "syncnet_v2.pt"
    torch.save(net.state_dict(), path)
    metric = METRICS.build(
        "sync", weights=str(path), sha256=sha256_file(path), device="cpu", batch_size=4
    )
    metric.update(_clip_batch(frames=7))
    values = metric.compute()
    assert set(values) == {"sync_c", "sync_d"} and all(math.isfinite(v) for v in values.values())
    assert values["sync_c"] >= 0 and values["sync_d"] > 0
    assert {k: len(v) for k, v in metric.per_clip().items()} == {"sync_c": 1, "sync_d": 1}
    for name, value in net.state_dict().items():
        torch.testing.assert_close(metric.net.state_dict()[name], value)


def test_sync_metric_names_what_to_supply(tmp_path):
    with pytest.raises(MissingWeightsError) as info:
        METRICS.build("sync")
    text = str(info.value)
    assert (
        "SyncNet v2" in text and "metric_kwargs.sync.weights" in text and "syncnet_v2.model" in text
    )
    with pytest.raises(MissingWeightsError, match="not a file"):
        METRICS.build("sync", weights=str(tmp_path / "nope.pt"), sha256="0" * 64)
    state = SyncNetV2().state_dict()
    path = tmp_path / "w.pt"
    torch.save(state, path)
    with pytest.raises(WeightsChecksumError, match="metric_kwargs.sync.sha256"):
        METRICS.build("sync", weights=str(path), sha256="0" * 64)
    del state["netcnnlip.0.weight"]
    torch.save(state, path)
    with pytest.raises(ValueError, match="netcnnlip.0.weight"):
        METRICS.build("sync", weights=str(path), sha256=sha256_file(path))


# -- the harness's expert ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def expert_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthsing")
    out = tmp_path_factory.mktemp("syncnet-run")
    cfg = compose([*TINY, f"data.root={root}", "trainer.steps=30", "trainer.val_every=30"])
    return train(cfg, out, progress=False)


def test_expert_trains_and_loss_decreases(expert_run):
    assert expert_run.step == 30 and all(np.isfinite(expert_run.losses))
    assert expert_run.final_loss < expert_run.first_loss, (
        expert_run.first_loss,
        expert_run.final_loss,
    )
    assert {"train/acc", "train/pos_sim", "train/bce", "train/nce"} <= set(expert_run.metrics)
    model = get_model_spec("syncnet").build(compose(TINY))
    print(f"syncnet params {count_parameters(model):,}")


def test_expert_training_batch_has_in_clip_and_cross_clip_negatives():
    model = get_model_spec("syncnet").build(compose(TINY)).eval()
    batch = {"video": torch.rand(3, 3, 8, 32, 32) * 2 - 1, "audio": torch.randn(3, 8 * 640) * 0.1}
    loss, logs = model.training_loss(batch)
    assert loss.ndim == 0 and math.isfinite(loss.item())
    assert 0 <= logs["acc"] <= 1
    with pytest.raises(ValueError, match="at least 5 frames"):
        model.training_loss(
            {"video": batch["video"][:, :, :4], "audio": batch["audio"][:, : 4 * 640]}
        )
    with pytest.raises(ValueError, match="num_frames"):
        get_model_spec("syncnet").build(compose([*TINY, "trainer.num_frames=4"]))


def test_sync_offline_scores_clips_with_a_trained_expert(expert_run):
    metric = METRICS.build("sync_offline", checkpoint=str(expert_run.out_dir), device="cpu")
    metric.update(_clip_batch(frames=20, clips=2))
    values = metric.compute()
    assert set(values) == {"sync_offline_c", "sync_offline_d"}
    assert all(math.isfinite(v) for v in values.values())
    assert 0 <= values["sync_offline_d"] <= 2 and values["sync_offline_c"] >= 0
    assert [len(v) for v in metric.per_clip().values()] == [2, 2]
    # the same clip scores the same with the same expert
    again = METRICS.build("sync_offline", checkpoint=str(expert_run.checkpoint), device="cpu")
    again.update(_clip_batch(frames=20, clips=2))
    assert again.compute() == pytest.approx(values)
    # clips shorter than one window: NaN with the reason, not a crash
    metric.reset()
    with pytest.warns(UserWarning, match="shorter than one 5-frame"):
        metric.update(_clip_batch(frames=4, clips=2))
    assert all(math.isnan(v) for v in metric.compute().values())
    assert len(metric.per_clip()["sync_offline_c"]) == 2
    assert all(math.isnan(v) for values in metric.per_clip().values() for v in values)
    assert metric.reasons and "4 frames" in metric.reasons[0]


def test_sync_offline_needs_an_expert_checkpoint(tmp_path):
    with pytest.raises(MissingWeightsError) as info:
        METRICS.build("sync_offline")
    assert "metric_kwargs.sync_offline.checkpoint" in str(info.value) and "model=syncnet" in str(
        info.value
    )
    with pytest.raises(MissingWeightsError, match="no checkpoint at"):
        METRICS.build("sync_offline", checkpoint=str(tmp_path / "missing-run"))
