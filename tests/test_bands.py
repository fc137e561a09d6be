"""The frequency-band ablation: zero-phase band filters and the band × target sensitivity table."""

import numpy as np
import pytest
import torch
from scipy.signal import chirp, welch
from torch import nn

from singer.config import compose
from singer.evaluation.bands import band_label, bandpass, bandstop, plot_heatmap
from singer.evaluation.protocol import EvalProtocol
from singer.evaluation.runner import evaluate_loaded
from singer.inference import LoadedModel
from singer.metrics.base import Metric
from singer.models.spec import ModelSpec
from singer.registry import METRICS

SR = 16000
EDGES = [0.0, 250.0, 500.0, 1000.0, 2000.0, 4000.0, 8000.0]
BANDS = list(zip(EDGES[:-1], EDGES[1:]))


def _band_energy_db(freqs, psd, lo, hi):
    mask = (freqs >= lo) & (freqs <= hi)
    return 10 * np.log10(psd[mask].sum() + 1e-30)


@pytest.fixture(scope="module")
def sweep_tone():
    """A 4 s logarithmic chirp 40 Hz → 7.9 kHz: every band gets energy."""
    t = np.arange(4 * SR) / SR
    return chirp(t, f0=40, t1=t[-1], f1=7900, method="logarithmic").astype(np.float64)


@pytest.mark.parametrize("method", ["butter", "fft"])
@pytest.mark.parametrize("band", BANDS, ids=[band_label(lo, hi) for lo, hi in BANDS])
def test_bandstop_removes_its_band_and_keeps_the_rest(sweep_tone, method, band):
    lo, hi = band
    out = bandstop(sweep_tone, lo, hi, SR, method=method, order=8)
    assert out.shape == sweep_tone.shape and out.dtype == sweep_tone.dtype
    f, p_in = welch(sweep_tone, fs=SR, nperseg=4096)
    _, p_out = welch(out, fs=SR, nperseg=4096)
    # Interior of the band (away from the transition) and everything clearly outside it.
    inner = (max(lo * 1.25, 60.0), min(hi / 1.25, 7800.0))
    drop = _band_energy_db(f, p_in, *inner) - _band_energy_db(f, p_out, *inner)
    assert drop > 20.0, f"band {band}: only {drop:.1f} dB removed"
    outside = [(60.0, lo / 1.25), (hi * 1.25, 7800.0)]
    for a, b in outside:
        if b - a < 20:
            continue
        change = abs(_band_energy_db(f, p_in, a, b) - _band_energy_db(f, p_out, a, b))
        assert change < 1.0, f"band {band}: {change:.2f} dB change in [{a:.0f}, {b:.0f}] Hz"


def test_bandpass_keeps_only_its_band_and_filters_are_zero_phase(sweep_tone):
    out = bandpass(sweep_tone, 1000.0, 2000.0, SR)
    f, p_in = welch(sweep_tone, fs=SR, nperseg=4096)
    _, p_out = welch(out, fs=SR, nperseg=4096)
    assert abs(_band_energy_db(f, p_in, 1250, 1600) - _band_energy_db(f, p_out, 1250, 1600)) < 1.0
    assert _band_energy_db(f, p_in, 60, 800) - _band_energy_db(f, p_out, 60, 800) > 20.0
    # Zero phase: a band-passed pure tone inside the band lines up with the input (no delay).
    t = np.arange(SR) / SR
    tone = np.sin(2 * np.pi * 1400 * t)
    passed = bandpass(tone, 1000.0, 2000.0, SR)
    middle = slice(2000, -2000)
    assert np.max(np.abs(passed[middle] - tone[middle])) < 0.02
    # torch in, torch out, batch axis kept
    batch = torch.from_numpy(np.stack([tone, tone])).float()
    stopped = bandstop(batch, 1000.0, 2000.0, SR)
    assert (
        torch.is_tensor(stopped) and stopped.shape == batch.shape and stopped.dtype == torch.float32
    )
    assert stopped[:, middle].abs().max() < 0.01


# -- sensitivity with toy models whose audio dependence is known -----------------------------------
class PerClipL1(Metric):
    """Mean |generated − reference| per clip."""

    name = "test_l1"

    def reset(self):
        self.values = []

    def update(self, batch):
        diff = (batch.generated - batch.reference).abs().flatten(1).mean(1)
        self.values += diff.tolist()

    def compute(self):
        return {"test_l1": float(np.mean(self.values))}

    def per_clip(self):
        return {"test_l1": list(self.values)}


@pytest.fixture
def toy_metric():
    METRICS.register("test_l1", PerClipL1)
    yield "test_l1"
    METRICS._entries.pop("test_l1", None)  # keep the global registry as it was


class Toy(nn.Module):
    """No weights worth training: the sample functions below define the behaviour."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))


def _reference_clip(conditions, generator):
    """The reference frame held over F frames, plus a little seeded noise: B×3×F×H×W."""
    ref = conditions.ref.unsqueeze(2).expand(-1, -1, conditions.num_frames, -1, -1)
    noise = torch.randn(ref.shape, generator=generator, device=ref.device)
    return ref, noise


def sample_audio_blind(model, conditions, *, steps, guidance_scale, generator):
    ref, noise = _reference_clip(conditions, generator)
    return (ref + 0.02 * noise).clamp(-1, 1)


def sample_listens_to_1k_2k(model, conditions, *, steps, guidance_scale, generator):
    """Brightness follows the log power of the audio in 1–2 kHz (0.05 per decade)."""
    ref, noise = _reference_clip(conditions, generator)
    wav = conditions.audio.double()
    power = torch.fft.rfft(wav).abs() ** 2 / wav.shape[-1] ** 2
    freqs = torch.fft.rfftfreq(wav.shape[-1], d=1 / SR)
    band_power = power[:, (freqs >= 1000) & (freqs < 2000)].sum(1)
    offset = 0.05 * torch.log10(band_power + 1e-12) + 0.25
    return (ref + 0.02 * noise + offset.float().view(-1, 1, 1, 1, 1)).clamp(-1, 1)


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory):
    root = (
        tmp_path_factory.getbasetemp() / "eval-synthsing"
    )  # shared with the other evaluation tests
    return compose(
        ["trainer=cpu_tiny", "data.synth.clips=6", "data.synth.seconds=2.0", f"data.root={root}"]
    )


def _loaded(cfg, sample):
    spec = ModelSpec(name="toy", build=lambda cfg: Toy(), sample=sample, description="test toy")
    return LoadedModel(Toy(), spec, cfg, step=0, device=torch.device("cpu"))


PROTOCOL = dict(num_clips=3, steps=1, batch_size=2, seeds=[0, 1], bootstrap=200, band_edges=EDGES)


def _table(rows):
    return {(r["band"], r["target"]): r for r in rows}


def test_a_model_that_ignores_audio_has_zero_sensitivity(tiny_cfg, toy_metric, tmp_path):
    protocol = EvalProtocol(metrics=[toy_metric], **PROTOCOL)
    result = evaluate_loaded(
        _loaded(tiny_cfg, sample_audio_blind),
        protocol=protocol,
        split="all",
        bands=True,
        progress=False,
    )
    rows = result.bands
    targets = {r["target"] for r in rows}
    assert {"pixel_l1", "test_l1", "cue/mouth_open", "cue/brow"} <= targets
    assert len(rows) == len(BANDS) * len(targets)
    assert [r["band"] for r in rows[:: len(targets)]] == [band_label(lo, hi) for lo, hi in BANDS]
    for row in rows:
        assert set(row) == {"band", "lo_hz", "hi_hz", "target", "delta", "ci_lo", "ci_hi", "n"}
        if row["target"].startswith("cue/") and not np.isfinite(row["delta"]):
            continue  # the estimator found no face in that cue's window
        assert abs(row["delta"]) < 1e-9 and row["ci_lo"] <= row["delta"] <= row["ci_hi"], row
    # the estimator does read these faces (so the cue columns really were measured)
    assert np.isfinite(_table(rows)[(band_label(1000, 2000), "cue/mouth_open")]["delta"])
    png = plot_heatmap(rows, tmp_path / "heat.png")
    assert png.stat().st_size > 1000


def test_sensitivity_points_at_the_band_the_model_listens_to(tiny_cfg, toy_metric):
    protocol = EvalProtocol(metrics=[toy_metric], **PROTOCOL)
    result = evaluate_loaded(
        _loaded(tiny_cfg, sample_listens_to_1k_2k),
        protocol=protocol,
        split="all",
        bands=True,
        progress=False,
    )
    table = _table(result.bands)
    pixel = {lo_hi: table[(band_label(*lo_hi), "pixel_l1")] for lo_hi in BANDS}
    target = pixel[(1000.0, 2000.0)]
    assert target["delta"] > 0.005 and target["ci_lo"] > 0
    for band, row in pixel.items():
        if band != (1000.0, 2000.0):
            assert row["delta"] < 0.2 * target["delta"], (band, row, target)
    # a metric delta is signed (band-stopped minus full band) and moves with the output
    assert abs(table[(band_label(1000, 2000), "test_l1")]["delta"]) > 0
