"""DWT helpers (against PyWavelets) and the learnable spectral filters."""

import warnings

import numpy as np
import pytest
import pywt
import torch

from singer.wavelets import (
    DEFAULT_MODE,
    SpectralFilter1d,
    SpectralFilter2d,
    band_names_1d,
    band_names_2d,
    dwt1d,
    dwt2d,
    idwt1d,
    idwt2d,
)

WAVELETS = ["haar", "db2", "sym4"]


def _pywt_wavedec(x: np.ndarray, wavelet: str, levels: int) -> list[np.ndarray]:
    with warnings.catch_warnings():  # pywt warns when a level exceeds its "useful" maximum
        warnings.simplefilter("ignore")
        return pywt.wavedec(x, wavelet, mode=DEFAULT_MODE, level=levels, axis=-1)


@pytest.mark.parametrize("wavelet", WAVELETS)
@pytest.mark.parametrize("levels", [1, 2, 3, 4])
def test_dwt1d_matches_pywt_and_roundtrips(wavelet, levels):
    gen = torch.Generator().manual_seed(levels)
    for length in (7, 16, 33, 50):
        x = torch.randn(2, 3, length, generator=gen, dtype=torch.float64)
        coeffs = dwt1d(x, wavelet, levels)
        expected = _pywt_wavedec(x.numpy(), wavelet, levels)
        assert len(coeffs) == levels + 1
        for ours, ref in zip(coeffs, expected):
            assert tuple(ours.shape) == ref.shape
            np.testing.assert_allclose(ours.numpy(), ref, atol=1e-10)
        # float32 agrees with the float64 reference to float32 precision
        coeffs32 = dwt1d(x.float(), wavelet, levels)
        for ours, ref in zip(coeffs32, expected):
            np.testing.assert_allclose(ours.numpy(), ref, atol=1e-5)
        back = idwt1d(coeffs32, wavelet, length=length)
        assert back.shape == x.shape
        torch.testing.assert_close(back, x.float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("wavelet", WAVELETS)
@pytest.mark.parametrize("levels", [1, 2])
def test_dwt2d_matches_pywt_and_roundtrips_at_odd_sizes(wavelet, levels):
    gen = torch.Generator().manual_seed(0)
    for height, width in [(8, 8), (7, 5), (13, 16), (1, 3)]:
        x = torch.randn(2, 3, height, width, generator=gen, dtype=torch.float64)
        coeffs = dwt2d(x, wavelet, levels)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = pywt.wavedec2(
                x.numpy(), wavelet, mode=DEFAULT_MODE, level=levels, axes=(-2, -1)
            )
        np.testing.assert_allclose(coeffs[0].numpy(), expected[0], atol=1e-10)
        for ours, ref in zip(coeffs[1:], expected[1:]):
            for band, ref_band in zip(ours, ref):
                np.testing.assert_allclose(band.numpy(), ref_band, atol=1e-10)
        back = idwt2d(coeffs, wavelet, size=(height, width))
        torch.testing.assert_close(back, x, atol=1e-10, rtol=0)


def test_half_precision_is_computed_in_float32():
    x = torch.randn(2, 20).bfloat16()
    coeffs = dwt1d(x, "db2", 2)
    assert all(c.dtype == torch.float32 for c in coeffs)
    torch.testing.assert_close(idwt1d(coeffs, "db2", length=20), x.float(), atol=1e-5, rtol=0)


def test_bad_arguments_raise_clear_errors():
    x = torch.randn(1, 16)
    with pytest.raises(ValueError, match="unknown wavelet 'nope'"):
        dwt1d(x, "nope", 1)
    with pytest.raises(ValueError, match="levels"):
        dwt1d(x, "haar", 0)
    with pytest.raises(ValueError, match="boundary mode"):
        dwt1d(x, "haar", 1, mode="wrap-around")
    with pytest.raises(ValueError, match="unknown wavelet"):
        SpectralFilter2d(4, wavelet="morl")  # continuous wavelet: no DWT
    with pytest.raises(ValueError, match="levels"):
        SpectralFilter1d(4, levels=0)


def _randomise_gate(module):
    with torch.no_grad():
        module.gate.weight.normal_(0, 3.0)
        module.gate.bias.normal_(0, 3.0)


@pytest.mark.parametrize("wavelet", WAVELETS)
@pytest.mark.parametrize("levels", [1, 2, 3])
def test_spectral_filter1d_is_identity_at_init(wavelet, levels):
    torch.manual_seed(0)
    module = SpectralFilter1d(6, levels=levels, wavelet=wavelet)
    assert module.gains.shape == (levels + 1, 6)
    assert torch.equal(module.gains, torch.ones_like(module.gains))
    _randomise_gate(module)  # identity must hold for any gate weights
    for length in (5, 16, 31):
        x = torch.randn(3, 6, length)
        torch.testing.assert_close(module(x), x, atol=1e-5, rtol=0)


def test_spectral_filter1d_gains_train_and_filter():
    torch.manual_seed(0)
    module = SpectralFilter1d(4, levels=2, wavelet="db2")
    x = torch.randn(2, 4, 24)
    module(x).square().sum().backward()
    assert module.gains.grad is not None and module.gains.grad.abs().sum() > 0
    # Once the gains move, the output changes and depends on the (input-dependent) gate.
    with torch.no_grad():
        module.gains[1:].zero_()
    out = module(x)
    assert (out - x).abs().max() > 1e-2
    with torch.no_grad():
        module.gate.bias.add_(5.0)
    assert (module(x) - out).abs().max() > 1e-3


def test_spectral_filter1d_without_gate_is_the_plain_filter():
    module = SpectralFilter1d(1, levels=1, wavelet="haar", gate=False)
    assert module.gate is None
    with torch.no_grad():
        module.gains[1].zero_()  # drop the detail band: Haar approximation = pairwise means
    x = torch.tensor([[[1.0, 3.0, 10.0, 20.0, -4.0, 0.0]]])
    expected = torch.tensor([[[2.0, 2.0, 15.0, 15.0, -2.0, -2.0]]])
    torch.testing.assert_close(module(x), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("levels", [1, 2])
def test_spectral_filter2d_identity_at_any_resolution(levels):
    torch.manual_seed(1)
    module = SpectralFilter2d(5, levels=levels, wavelet="db2")
    assert module.gains.shape == (1 + 3 * levels, 5)
    assert module.band_names == band_names_2d(levels)
    _randomise_gate(module)
    for size in [(8, 8), (9, 7), (16, 12), (3, 3), (1, 1)]:
        x = torch.randn(2, 5, *size)
        out = module(x)
        assert out.shape == x.shape
        torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


def test_spectral_filter2d_gains_train_and_keep_dtype():
    torch.manual_seed(2)
    module = SpectralFilter2d(3, levels=1, wavelet="haar")
    x = torch.randn(4, 3, 10, 6)
    module(x).square().sum().backward()
    assert module.gains.grad is not None and module.gains.grad.abs().sum() > 0
    out = module(x.bfloat16())
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    with pytest.raises(ValueError, match="N×3×H×W"):
        module(torch.randn(2, 4, 8, 8))


def test_spectral_filter2d_lowpass_averages_blocks():
    module = SpectralFilter2d(1, levels=1, wavelet="haar", gate=False)
    with torch.no_grad():
        module.gains[1:].zero_()  # keep LL only: each 2×2 block becomes its mean
    x = torch.arange(16.0).view(1, 1, 4, 4)
    expected = (
        torch.nn.functional.avg_pool2d(x, 2).repeat_interleave(2, -1).repeat_interleave(2, -2)
    )
    torch.testing.assert_close(module(x), expected, atol=1e-5, rtol=0)


def test_band_names():
    assert band_names_1d(2) == ["A2", "D2", "D1"]
    assert band_names_2d(1) == ["LL1", "LH1", "HL1", "HH1"]


def test_filters_and_spectral_frontends_run_under_bf16_autocast():
    """The CUDA training path autocasts to bf16; ptwt must still get full-precision inputs."""
    import torch

    from singer.registry import FRONTENDS
    from singer.wavelets import SpectralFilter1d, SpectralFilter2d

    with torch.autocast("cpu", dtype=torch.bfloat16):
        y1 = SpectralFilter1d(8, levels=2, wavelet="db2")(torch.randn(2, 8, 37))
        y2 = SpectralFilter2d(8, levels=1)(torch.randn(2, 8, 9, 11))
        for name in ("msm", "sfm"):
            tokens = FRONTENDS.build(name)(
                torch.randn(2, 5120) * 0.1,
                8,
                x_t=torch.randn(2, 3, 8, 16, 16),
                t=torch.tensor([10, 900]),
            )
            assert tokens.shape[:2] == (2, 8) and torch.isfinite(tokens.float()).all()
    assert y1.shape == (2, 8, 37) and y2.shape == (2, 8, 9, 11)
