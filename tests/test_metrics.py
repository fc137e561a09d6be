"""The metric registry: Fréchet distance, FID/FVD (offline and real-architecture), SSIM/PSNR,
SynthSing motion fidelity and audio statistics. Tiny CPU inputs only."""

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import linalg

from singer.data import synth as S
from singer.metrics import EvalBatch
from singer.metrics import features as FT
from singer.metrics.frechet import (
    RunningStats,
    frechet_distance,
    frechet_distance_from_samples,
    frechet_from_stats,
)
from singer.registry import METRICS
from singer.weights import MissingWeightsError, WeightsChecksumError, sha256_file

OWN_METRICS = (
    "ssim",
    "psnr",
    "motion_fidelity",
    "audio_stats",
    "fid_offline",
    "fvd_offline",
    "frechet",
    "fid",
    "fvd",
)
SR, FPS = 16000, 25.0


def _batch(generated, reference=None, *, cues=None, has_cues=None, audio=None) -> EvalBatch:
    b, _, f = generated.shape[:3]
    if audio is None:
        t = torch.arange(int(f / FPS * SR)) / SR
        audio = 0.3 * torch.sin(2 * math.pi * 220.0 * t).repeat(b, 1)
    return EvalBatch(
        generated=generated,
        reference=reference,
        audio=audio,
        sample_rate=SR,
        fps=FPS,
        cues=cues,
        has_cues=has_cues,
        clip_ids=[f"c{i}" for i in range(b)],
    )


def _video(seed: int, b: int = 2, f: int = 4, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(b, 3, 1, size, size, generator=g) * 1.6 - 0.8
    return (base + 0.1 * torch.randn(b, 3, f, size, size, generator=g)).clamp(-1, 1)


def _direct_frechet(mu1, s1, mu2, s2) -> float:
    root = linalg.sqrtm(s1 @ s2)
    return float(
        np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(np.real(root))
    )


# -- Fréchet distance ---------------------------------------------------------------------------
def test_frechet_matches_direct_scipy_and_methods_agree():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 12)) @ rng.standard_normal((12, 12))
    y = 0.7 * rng.standard_normal((250, 12)) @ rng.standard_normal((12, 12)) + 0.5
    mu1, s1, mu2, s2 = x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)
    expected = _direct_frechet(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, s1, mu2, s2, method="eigh") == pytest.approx(expected, rel=1e-8)
    assert frechet_distance_from_samples(x, y) == pytest.approx(expected, rel=1e-8)


def test_frechet_shifted_gaussians_is_squared_mean_distance():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((8, 8))
    sigma = a @ a.T + 0.1 * np.eye(8)
    mu1, mu2 = rng.standard_normal(8), rng.standard_normal(8)
    for method in ("sqrtm", "eigh"):
        assert frechet_distance(mu1, sigma, mu2, sigma, method=method) == pytest.approx(
            np.sum((mu1 - mu2) ** 2), rel=1e-8
        )
    assert frechet_distance(mu1, sigma, mu1, sigma) == pytest.approx(0.0, abs=1e-8)


def test_frechet_with_fewer_samples_than_dims_is_finite_and_consistent():
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((8, 96)), rng.standard_normal((6, 96)) + 0.2
    mu1, s1, mu2, s2 = x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = [frechet_distance(mu1, s1, mu2, s2, method=m) for m in ("sqrtm", "eigh")]
    values.append(frechet_distance_from_samples(x, y))
    assert all(np.isfinite(v) and v > 0 for v in values)
    assert values[0] == pytest.approx(values[2], rel=1e-4)
    assert values[1] == pytest.approx(values[2], rel=1e-6)  # sqrt of round-off-sized eigenvalues


def test_running_stats_match_numpy_and_keep_samples_only_while_small():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 5)) * 3 + 100  # a large offset: the merge must stay centred
    stats = RunningStats()
    for chunk in np.array_split(x, [1, 4, 17, 30]):
        stats.update(chunk)
    assert stats.count == 40
    np.testing.assert_allclose(stats.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.cov, np.cov(x, rowvar=False), rtol=1e-10)
    assert stats.samples is None  # 40 rows >= 5 dims: dropped
    small = RunningStats(16)
    small.update(torch.from_numpy(rng.standard_normal((3, 16))))
    small.update(rng.standard_normal((2, 16)))
    assert small.samples.shape == (5, 16)
    other = RunningStats(16)
    other.update(rng.standard_normal((4, 16)) + 1.0)
    exact = frechet_distance_from_samples(small.samples, other.samples)
    assert frechet_from_stats(small, other) == pytest.approx(
        exact, rel=1e-12
    )  # auto → low-rank route
    assert frechet_from_stats(small, other, method="eigh") == pytest.approx(exact, rel=1e-8)
    assert math.isnan(frechet_from_stats(RunningStats(16), other))  # an empty set


# -- offline FID/FVD through the metric API ------------------------------------------------------
@pytest.mark.parametrize("name", ["fid_offline", "fvd_offline"])
def test_offline_frechet_identical_sets_zero_and_distortion_positive(name):
    ref = _video(0, b=4, f=4)
    metric = METRICS.build(name)
    metric.reset()
    metric.update(_batch(ref.clone(), ref))
    same = metric.compute()[name]
    assert same == pytest.approx(0.0, abs=1e-6)
    metric.reset()
    blurred = torch.nn.functional.avg_pool3d(ref, (1, 3, 3), 1, (0, 1, 1))
    metric.update(_batch(blurred, ref))
    worse = metric.compute()[name]
    again = METRICS.build(name)
    again.update(_batch(blurred, ref))
    assert worse > 0.1
    assert again.compute()[name] == worse  # deterministic
    assert metric.per_clip() == {}


def test_offline_feature_dims_and_sensitivity():
    frame = FT.build_feature_net("offline_frame")
    clip = FT.build_feature_net("offline_clip")
    video = _video(1, b=2, f=3)
    assert frame.extract(video).shape == (6, FT.FRAME_DIM) and 64 <= FT.FRAME_DIM <= 256
    assert clip.extract(video).shape == (2, FT.CLIP_DIM) and 64 <= FT.CLIP_DIM <= 256
    still = video[:, :, :1].repeat(1, 1, 3, 1, 1)
    temporal = clip.extract(still)[:, FT.FRAME_DIM :]
    assert np.allclose(temporal, 0.0)  # a frozen clip has no temporal change
    assert not np.allclose(clip.extract(video)[:, FT.FRAME_DIM :], 0.0)
    with pytest.raises(Exception, match="offline_frame"):
        FT.build_feature_net("offline_fram")


# -- SSIM / PSNR --------------------------------------------------------------------------------
def test_ssim_self_is_one_and_psnr_closed_form():
    ref = _video(2, b=2, f=3).clamp(-0.8, 0.8)
    ssim = METRICS.build("ssim")
    ssim.update(_batch(ref.clone(), ref))
    assert ssim.compute()["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert ssim.per_clip()["ssim"] == pytest.approx([1.0, 1.0], abs=1e-6)
    psnr = METRICS.build("psnr")
    psnr.update(_batch(ref + 0.1, ref))  # +0.1 in [-1, 1] is +0.05 in [0, 1]: MSE 0.0025
    assert psnr.compute()["psnr"] == pytest.approx(
        10 * math.log10(1 / 0.0025), abs=1e-4
    )  # float32 input
    psnr.reset()
    psnr.update(_batch(ref.clone(), ref))
    assert psnr.compute()["psnr"] == 100.0  # identical frames: capped, not inf


def test_ssim_psnr_match_scikit_image():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    ref = _video(3, b=2, f=2, size=24)
    gen = (ref + 0.15 * torch.randn(ref.shape, generator=torch.Generator().manual_seed(9))).clamp(
        -1, 1
    )
    ssim, psnr = METRICS.build("ssim"), METRICS.build("psnr")
    batch = _batch(gen, ref)
    ssim.update(batch)
    psnr.update(batch)
    to01 = lambda v: ((v.double() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 4, 1).numpy()  # noqa: E731
    g, r = to01(gen), to01(ref)
    want_ssim = [
        np.mean(
            [
                structural_similarity(
                    g[i, t],
                    r[i, t],
                    data_range=1.0,
                    channel_axis=-1,
                    gaussian_weights=True,
                    sigma=1.5,
                    use_sample_covariance=False,
                )
                for t in range(2)
            ]
        )
        for i in range(2)
    ]
    want_psnr = [
        np.mean([peak_signal_noise_ratio(r[i, t], g[i, t], data_range=1.0) for t in range(2)])
        for i in range(2)
    ]
    assert ssim.per_clip()["ssim"] == pytest.approx(want_ssim, abs=1e-6)
    assert psnr.per_clip()["psnr"] == pytest.approx(want_psnr, abs=1e-5)  # float32 input
    assert ssim.compute()["ssim"] == pytest.approx(np.mean(want_ssim), abs=1e-6)


def test_image_metrics_without_reference_give_nan_per_clip():
    ssim = METRICS.build("ssim")
    ssim.update(_batch(_video(4), None))
    assert math.isnan(ssim.compute()["ssim"])
    assert len(ssim.per_clip()["ssim"]) == 2


# -- motion fidelity ----------------------------------------------------------------------------
def _rendered_clip(seed: int, frames: int = 24, size: int = 48):
    rng = np.random.default_rng(seed)
    speaker = S.sample_speaker(rng)
    t = np.arange(frames, dtype=np.float64)
    phase = rng.uniform(0, 2 * np.pi, 5)
    params = {
        "mouth_open": 0.5 + 0.4 * np.sin(t / 3.0 + phase[0]),
        "mouth_width": 0.5 + 0.3 * np.cos(t / 4.0 + phase[1]),
        "brow": 0.5 + 0.4 * np.sin(t / 5.0 + phase[2]),
        "sway": 0.6 * np.sin(t / 2.5 + phase[3]),
        "eye_close": 0.8 * np.clip(np.sin(t / 6.0 + phase[4]), 0, 1),
        "nod": np.zeros(frames),
    }
    image = S.render_face(params, speaker.identity, size)
    video = torch.from_numpy(image).permute(3, 0, 1, 2).float() / 127.5 - 1.0  # 3×F×H×W
    cues = torch.from_numpy(np.stack([params[c] for c in S.CUES], axis=1)).float()  # F×K
    return video, cues


def test_motion_fidelity_high_on_truth_lower_on_shuffled_frames():
    clips = [_rendered_clip(s) for s in (0, 1)]
    video = torch.stack([c[0] for c in clips])
    cues = torch.stack([c[1] for c in clips])
    metric = METRICS.build("motion_fidelity")
    metric.update(_batch(video, video, cues=cues, has_cues=torch.tensor([True, True])))
    good = metric.compute()
    assert good["motion/r_mean"] > 0.95
    assert good["motion/mae_mean"] < 0.05
    assert good["motion/face_rate"] == 1.0
    for cue in S.ESTIMATED_CUES:
        assert good[f"motion/{cue}_r"] > 0.9
    assert all(len(v) == 2 for v in metric.per_clip().values())
    assert not any("pooled" in k for k in good)  # pooled r rewards levels, not motion

    shuffled = video[:, :, torch.from_numpy(np.random.default_rng(0).permutation(video.shape[2]))]
    metric.reset()
    metric.update(_batch(shuffled, video, cues=cues, has_cues=torch.tensor([True, True])))
    bad = metric.compute()
    assert bad["motion/r_mean"] < good["motion/r_mean"] - 0.5
    assert bad["motion/mae_mean"] > good["motion/mae_mean"]


def test_motion_fidelity_skips_clips_without_cues():
    video, cues = _rendered_clip(2, frames=12, size=32)
    video, cues = video[None].repeat(2, 1, 1, 1, 1), cues[None].repeat(2, 1, 1)
    metric = METRICS.build("motion_fidelity")
    metric.update(_batch(video, None, cues=cues, has_cues=torch.tensor([True, False])))
    per_clip = metric.per_clip()
    assert all(math.isnan(v[1]) for v in per_clip.values()) and not math.isnan(
        per_clip["motion/face_rate"][0]
    )
    only_first = METRICS.build("motion_fidelity")
    only_first.update(_batch(video[:1], None, cues=cues[:1], has_cues=torch.tensor([True])))
    for key, value in only_first.compute().items():
        assert metric.compute()[key] == pytest.approx(value, nan_ok=True)

    none = METRICS.build("motion_fidelity")
    none.update(_batch(video, None, cues=cues, has_cues=torch.tensor([False, False])))
    none.update(_batch(video, None, cues=None))
    values = none.compute()
    assert values and all(math.isnan(v) for v in values.values())
    assert all(len(v) == 4 for v in none.per_clip().values())


def test_motion_fidelity_is_computed_per_clip_over_its_windows():
    """Two windows of one clip score as one clip over all their frames; a still face scores 0."""
    video, cues = _rendered_clip(3, frames=24, size=48)
    halves = [(video[:, :12], cues[:12], 0), (video[:, 12:], cues[12:], 12)]
    metric = METRICS.build("motion_fidelity")
    for part, truth, start in reversed(halves):  # order of arrival does not matter
        batch = _batch(part[None], None, cues=truth[None], has_cues=torch.tensor([True]))
        batch.clip_ids, batch.starts = ["clipA"], [start]
        metric.update(batch)
    whole = METRICS.build("motion_fidelity")
    whole.update(_batch(video[None], None, cues=cues[None], has_cues=torch.tensor([True])))
    by_clip = metric.clip_values()
    assert list(by_clip["motion/mouth_open_r"]) == ["clipA"]
    for key, value in whole.compute().items():
        # (the estimator reads colours per call, so windows differ from the whole by a hair)
        assert by_clip[key]["clipA"] == pytest.approx(value, nan_ok=True, abs=2e-3)
    assert len(metric.per_clip()["motion/mouth_open_r"]) == 2  # items stay per window

    still = video[:, :1].expand_as(video)
    frozen = METRICS.build("motion_fidelity")
    frozen.update(_batch(still[None], None, cues=cues[None], has_cues=torch.tensor([True])))
    assert frozen.compute()["motion/mouth_open_r"] == 0.0  # no motion follows no truth


def test_motion_fidelity_breaks_down_by_segment_type():
    video, cues = _rendered_clip(4, frames=24, size=48)
    causes = torch.zeros(1, 24, 6)
    causes[0, :, 0] = -10.0  # loud
    causes[0, 18:, 0] = -60.0  # rest: the last 6 frames
    causes[0, 5, 5] = 1.0  # an onset at frame 5
    causes[0, :, 4] = torch.linspace(0, 1.0, 24)  # held seconds
    metric = METRICS.build("motion_fidelity")
    batch = _batch(video[None], None, cues=cues[None], has_cues=torch.tensor([True]))
    batch.causes = causes
    metric.update(batch)
    values = metric.compute()
    assert values["motion/seg/rest/share"] == pytest.approx(6 / 24)
    assert values["motion/seg/onset/share"] == pytest.approx(4 / 24)
    assert values["motion/seg/vibrato/share"] == 0.0  # no vibrato phase: not sung
    assert values["motion/seg/rest/mouth_open_mae"] < 0.05  # the true video is right in rests
    assert math.isnan(values["motion/seg/vibrato/sway_mae"])


# -- audio statistics ---------------------------------------------------------------------------
def test_audio_stats_on_sine_and_chirp():
    t = np.arange(SR) / SR
    sine = 0.5 * np.sin(2 * np.pi * 220.0 * t)
    f0 = 200.0 * 2 ** (t)  # one octave up over the second
    chirp = 0.5 * np.sin(2 * np.pi * np.cumsum(f0) / SR)
    audio = torch.from_numpy(np.stack([sine, chirp])).float()
    metric = METRICS.build("audio_stats")
    metric.update(_batch(torch.zeros(2, 3, 25, 16, 16), None, audio=audio))
    per_clip = metric.per_clip()
    assert per_clip["audio/median_pitch_hz"][0] == pytest.approx(220.0, rel=0.02)
    assert per_clip["audio/median_pitch_hz"][1] == pytest.approx(200.0 * 2**0.5, rel=0.05)
    assert per_clip["audio/f0_range_st"][0] < 0.5 < 8.0 < per_clip["audio/f0_range_st"][1] < 12.5
    assert per_clip["audio/voiced_fraction"][0] > 0.9
    assert per_clip["audio/rms_db"][0] == pytest.approx(
        20 * math.log10(0.5 / math.sqrt(2)), abs=0.1
    )
    values = metric.compute()
    assert values["audio/median_pitch_hz"] == pytest.approx(
        np.mean(per_clip["audio/median_pitch_hz"])
    )
    assert all(isinstance(v, float) for v in values.values())


# -- real feature networks (random weights saved to a temporary file) ----------------------------
@pytest.mark.parametrize(
    "name, key", [("fid", "metric_kwargs.fid.weights"), ("fvd", "metric_kwargs.fvd.weights")]
)
def test_missing_real_weights_name_the_file_to_supply(name, key, tmp_path):
    with pytest.raises(MissingWeightsError) as info:
        METRICS.build(name)
    assert key in str(info.value) and "sha256" in str(info.value)
    with pytest.raises(MissingWeightsError, match=str(tmp_path / "absent.pt").replace(".", r"\.")):
        METRICS.build(name, weights=str(tmp_path / "absent.pt"))


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    from torchvision.models.inception import Inception3

    torch.manual_seed(0)
    net = Inception3(aux_logits=True, init_weights=False)  # AuxLogits.* and fc.* must be ignored
    path = tmp_path_factory.mktemp("weights") / "inception_v3.pt"
    torch.save(net.state_dict(), path)
    return path, sha256_file(path)


@pytest.fixture(scope="module")
def i3d_file(tmp_path_factory):
    torch.manual_seed(0)
    state = FT.InceptionI3d(num_classes=400).state_dict()
    state = {
        k: v for k, v in state.items() if not k.endswith("num_batches_tracked")
    }  # as in older files
    path = tmp_path_factory.mktemp("weights") / "rgb_i3d.pt"
    torch.save(state, path)
    return path, sha256_file(path)


@pytest.fixture(scope="module")
def fid_metric(inception_file):
    path, digest = inception_file
    return METRICS.build("fid", weights=str(path), sha256=digest, size=75, device="cpu")


@pytest.fixture(scope="module")
def fvd_metric(i3d_file):
    path, digest = i3d_file
    return METRICS.build("fvd", weights=str(path), sha256=digest, size=32, device="cpu")


def test_fid_real_mode_loads_checks_and_runs(inception_file, fid_metric):
    path, _ = inception_file
    with pytest.raises(WeightsChecksumError, match="metric_kwargs.fid.sha256"):
        METRICS.build("fid", weights=str(path), sha256="0" * 64, device="cpu")
    metric = fid_metric
    metric.reset()
    ref = _video(5, b=1, f=3)
    metric.update(_batch(_video(6, b=1, f=3), ref))
    value = metric.compute()["fid"]
    assert np.isfinite(value) and value > 0
    assert metric.net.extract(ref).shape == (3, 2048)
    metric.reset()
    metric.update(_batch(ref.clone(), ref))
    assert metric.compute()["fid"] == pytest.approx(0.0, abs=1e-6)


def test_fvd_real_mode_loads_checks_and_runs(i3d_file, fvd_metric, tmp_path):
    path, digest = i3d_file
    metric = fvd_metric
    metric.reset()
    assert metric.net.dim == 400
    for seed in (7, 8):  # two batches of one clip each: FVD needs >= 2 clips per set
        metric.update(_batch(_video(seed, b=1, f=4), _video(seed + 10, b=1, f=4)))
    value = metric.compute()["fvd"]
    assert np.isfinite(value) and value >= 0
    with torch.no_grad():
        assert metric.net.net(torch.zeros(1, 3, 4, 32, 32), pool=True).shape == (1, 1024)
    broken = tmp_path / "broken.pt"  # a file of another layout
    torch.save(
        {
            "features.0.weight": torch.zeros(4, 3, 3, 3),
            "logits.conv3d.weight": torch.zeros(400, 1024, 1, 1, 1),
        },
        broken,
    )
    with pytest.raises(ValueError, match="I3D layout.*Conv3d_1a_7x7"):
        METRICS.build("fvd", weights=str(broken), sha256=sha256_file(broken), device="cpu")


# -- the registry contract ----------------------------------------------------------------------
def test_default_protocol_metrics_are_registered():
    from singer.evaluation.protocol import EvalProtocol

    for name in EvalProtocol().metrics:
        METRICS.check(name)
    assert set(OWN_METRICS) <= set(METRICS.names())


@pytest.mark.parametrize("name", OWN_METRICS)
def test_every_metric_builds_and_survives_reset_update_compute(name, request):
    if name in ("fid", "fvd"):  # built once per module (their weights come from a fixture)
        metric = request.getfixturevalue(f"{name}_metric")
    else:
        metric = METRICS.build(name)
    # Real nets are slow on the CPU: one clip, shaped as in their own tests above.
    b, f = {"fid": (1, 3), "fvd": (1, 4)}.get(name, (2, 3))
    cues = torch.rand(b, f, len(S.CUES))
    has_cues = torch.tensor([True, False][:b])
    batch = _batch(_video(10, b=b, f=f), _video(11, b=b, f=f), cues=cues, has_cues=has_cues)
    for _ in range(2):
        metric.reset()
        metric.update(batch)
        metric.update(batch)
        values = metric.compute()
        assert values and all(
            isinstance(k, str) and isinstance(v, float) for k, v in values.items()
        )
        for key, clips in metric.per_clip().items():
            assert key in values and len(clips) == 2 * b


# -- LPIPS (random weights of the right format, saved to temporary files) --------------------------
@pytest.fixture(scope="module")
def lpips_files(tmp_path_factory):
    from torchvision import models

    root = tmp_path_factory.mktemp("lpips")
    torch.manual_seed(0)
    alexnet = models.alexnet(weights=None)
    backbone = root / "alexnet.pth"
    torch.save(alexnet.state_dict(), backbone)
    channels = (64, 192, 384, 256, 256)
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(channels)}
    lin_path = root / "alex.pth"
    torch.save(lin, lin_path)
    return alexnet, lin, backbone, lin_path


def test_lpips_needs_both_local_files_and_names_the_keys(tmp_path):
    with pytest.raises(MissingWeightsError, match="metric_kwargs.lpips.backbone_weights"):
        METRICS.build("lpips")
    fake = tmp_path / "backbone.pth"
    fake.write_bytes(b"x")
    with pytest.raises(MissingWeightsError, match="metric_kwargs.lpips.lin_weights"):
        METRICS.build("lpips", backbone_weights=str(fake), backbone_sha256=sha256_file(fake))
    with pytest.raises(WeightsChecksumError):
        METRICS.build("lpips", backbone_weights=str(fake), backbone_sha256="0" * 64)


def test_lpips_matches_the_published_formula(lpips_files):
    """Zero for identical frames, symmetric, and equal to an independent computation of the
    formula on torchvision's AlexNet with the same weights."""
    from torchvision.models.feature_extraction import create_feature_extractor

    alexnet, lin, backbone, lin_path = lpips_files
    metric = METRICS.build(
        "lpips",
        backbone_weights=str(backbone),
        lin_weights=str(lin_path),
        backbone_sha256=sha256_file(backbone),
        lin_sha256=sha256_file(lin_path),
        device="cpu",
    )
    a, b = _video(0, b=2, f=2, size=64), _video(1, b=2, f=2, size=64)
    metric.update(_batch(a, a))
    assert metric.compute()["lpips"] == pytest.approx(0.0, abs=1e-7)
    metric.reset()
    metric.update(_batch(a, b))
    forward = metric.per_clip()["lpips"]
    metric.reset()
    metric.update(_batch(b, a))
    assert metric.per_clip()["lpips"] == pytest.approx(forward, rel=1e-5)

    nodes = {f"features.{i}": f"t{k}" for k, i in enumerate((1, 4, 7, 9, 11))}
    extractor = create_feature_extractor(alexnet.eval(), return_nodes=nodes)
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def frames(v):
        return v.transpose(1, 2).reshape(-1, 3, 64, 64)

    with torch.no_grad():
        fa, fb = extractor((frames(a) - shift) / scale), extractor((frames(b) - shift) / scale)
        total = 0
        for k in range(5):
            x, y = fa[f"t{k}"], fb[f"t{k}"]
            x = x / (x.norm(dim=1, keepdim=True) + 1e-10)
            y = y / (y.norm(dim=1, keepdim=True) + 1e-10)
            weight = lin[f"lin{k}.model.1.weight"].view(1, -1, 1, 1)
            total = total + ((x - y) ** 2 * weight).sum(dim=1).mean(dim=(1, 2))
    expected = total.reshape(2, 2).mean(dim=1).tolist()
    assert forward == pytest.approx(expected, rel=1e-4)
    assert min(forward) > 0
