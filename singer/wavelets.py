"""Discrete wavelet transforms and learnable spectral filters (shared by audio and video paths).

The transforms are thin wrappers over ``ptwt`` (PyTorch wavelets, differentiable and
GPU-ready). They fix three things the raw library calls leave open:

* the boundary mode is always explicit (``DEFAULT_MODE = "symmetric"``, which is also
  PyWavelets' default; ``ptwt`` itself defaults to ``"reflect"``), so coefficients match
  ``pywt.wavedec(x, wavelet, mode="symmetric")``;
* the inverse crops back to the original length / size, so any length (odd too) round-trips;
* inputs in half precision are computed in float32 (``ptwt`` rejects bf16/half).

Coefficient order follows ``ptwt.wavedec``: ``[cA_L, cD_L, ..., cD_1]`` (coarsest first). In
2-D each detail entry is a ``(horizontal, vertical, diagonal)`` triple, which this project
names ``LH, HL, HH`` (PyWavelets' ``cH, cV, cD``).

``SpectralFilter1d`` / ``SpectralFilter2d`` multiply every sub-band × channel by a learnable
gain (initialised to 1.0), invert the transform and blend the result into the input through
an input-dependent sigmoid gate: ``out = x + gate(x) · (filtered(x) − x)``. With all gains at
1.0 ``filtered(x) == x``, so a fresh module is exactly the identity whatever the gate weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import ptwt
import pywt
import torch
from torch import nn

DEFAULT_MODE = "symmetric"
# Boundary modes that ptwt supports for both 1-D and 2-D transforms.
BOUNDARY_MODES = ("symmetric", "reflect", "zero", "constant", "periodic")

Coeffs1d = list[torch.Tensor]
Coeffs2d = list  # [cA_L, (cH_L, cV_L, cD_L), ..., (cH_1, cV_1, cD_1)]


def check_wavelet(wavelet: str) -> str:
    """Return ``wavelet`` if it names a discrete wavelet PyWavelets knows, else raise ``ValueError``."""
    known = pywt.wavelist(kind="discrete")
    if not isinstance(wavelet, str) or wavelet not in known:
        examples = ", ".join(["haar", "db2", "db4", "sym4", "coif1", "bior2.2"])
        raise ValueError(
            f"unknown wavelet {wavelet!r}: use a discrete wavelet name from pywt.wavelist(kind='discrete'), "
            f"e.g. {examples}"
        )
    return wavelet


def check_levels(levels: int, *, low: int = 1, high: int | None = None) -> int:
    """Return ``levels`` if it is an int in ``[low, high]``, else raise ``ValueError``."""
    if (
        isinstance(levels, bool)
        or not isinstance(levels, int)
        or levels < low
        or (high is not None and levels > high)
    ):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"wavelet levels must be an integer in {bound}, got {levels!r}")
    return levels


def check_mode(mode: str) -> str:
    if mode not in BOUNDARY_MODES:
        raise ValueError(
            f"unknown wavelet boundary mode {mode!r}; choose one of {', '.join(BOUNDARY_MODES)}"
        )
    return mode


def _no_autocast(x: torch.Tensor):
    """Autocast would re-run ptwt's convolutions in bf16/fp16, which ptwt rejects."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the transforms run in: float64 stays, everything else becomes float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def dwt1d(
    x: torch.Tensor, wavelet: str = "haar", levels: int = 1, mode: str = DEFAULT_MODE
) -> Coeffs1d:
    """Multi-level DWT along the last axis.

    Args:
        x: ``...×T`` (any leading dims).
        wavelet: a discrete wavelet name (``check_wavelet``).
        levels: number of decomposition levels (>= 1).
        mode: boundary extension (``BOUNDARY_MODES``).

    Returns:
        ``[cA_L, cD_L, ..., cD_1]``, each ``...×T_l``, in float32 (float64 if ``x`` is float64).
    """
    check_wavelet(wavelet)
    check_levels(levels)
    check_mode(mode)
    x = x.to(compute_dtype(x.dtype))
    with _no_autocast(x):
        return list(ptwt.wavedec(x, wavelet, mode=mode, level=levels, axis=-1))


def idwt1d(
    coeffs: Sequence[torch.Tensor], wavelet: str = "haar", length: int | None = None
) -> torch.Tensor:
    """Inverse of :func:`dwt1d`: coefficients ``[cA_L, cD_L, ..., cD_1]`` → ``...×length``.

    The synthesis can be a few samples longer than the signal (odd lengths, long filters);
    it is cropped to ``length`` when given.
    """
    check_wavelet(wavelet)
    with _no_autocast(coeffs[0]):
        out = ptwt.waverec(list(coeffs), wavelet, axis=-1)
    return out[..., :length] if length is not None else out


def dwt2d(
    x: torch.Tensor, wavelet: str = "haar", levels: int = 1, mode: str = DEFAULT_MODE
) -> Coeffs2d:
    """Multi-level 2-D DWT over the last two axes.

    Args:
        x: ``...×H×W`` (e.g. ``N×C×H×W``); any ``H, W`` >= 1, odd sizes too.

    Returns:
        ``[cA_L, (cH_L, cV_L, cD_L), ..., (cH_1, cV_1, cD_1)]``, each ``...×H_l×W_l``.
    """
    check_wavelet(wavelet)
    check_levels(levels)
    check_mode(mode)
    x = x.to(compute_dtype(x.dtype))
    with _no_autocast(x):
        coeffs = ptwt.wavedec2(x, wavelet, mode=mode, level=levels, axes=(-2, -1))
    return [coeffs[0]] + [tuple(detail) for detail in coeffs[1:]]


def idwt2d(
    coeffs: Coeffs2d, wavelet: str = "haar", size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Inverse of :func:`dwt2d`, cropped to ``size = (H, W)`` when given → ``...×H×W``."""
    check_wavelet(wavelet)
    structured = [coeffs[0]] + [
        ptwt.constants.WaveletDetailTuple2d(*detail) for detail in coeffs[1:]
    ]
    with _no_autocast(coeffs[0]):
        out = ptwt.waverec2(structured, wavelet, axes=(-2, -1))
    if size is not None:
        out = out[..., : size[0], : size[1]]
    return out


def band_names_1d(levels: int) -> list[str]:
    """Names of the 1-D sub-bands in coefficient order, e.g. ``["A2", "D2", "D1"]``."""
    return [f"A{levels}"] + [f"D{level}" for level in range(levels, 0, -1)]


def band_names_2d(levels: int) -> list[str]:
    """Names of the 2-D sub-bands in coefficient order, e.g. ``["LL1", "LH1", "HL1", "HH1"]``."""
    names = [f"LL{levels}"]
    for level in range(levels, 0, -1):
        names += [f"LH{level}", f"HL{level}", f"HH{level}"]
    return names


class _SpectralFilter(nn.Module):
    """Shared parts of the 1-D and 2-D filters: gains, gate and the residual blend."""

    def __init__(
        self,
        channels: int,
        levels: int,
        wavelet: str,
        gate: bool,
        num_bands: int,
        gate_conv: nn.Module,
    ):
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.channels = channels
        self.levels = levels
        self.wavelet = wavelet
        self.mode = DEFAULT_MODE
        # One gain per (sub-band, channel). At 1.0 the filter passes the signal unchanged, so
        # training starts from the identity (the official code started from random gains and
        # never trained them).
        self.gains = nn.Parameter(torch.ones(num_bands, channels))
        # Input-dependent gate: how much of the filtered signal replaces the input, per channel.
        self.gate = gate_conv if gate else None

    def _blend(self, x: torch.Tensor, filtered: torch.Tensor) -> torch.Tensor:
        if self.gate is None:
            return filtered
        # The gate conv may live in another dtype than the float32/64 compute path.
        conv_dtype = self.gate.weight.dtype
        weight = torch.sigmoid(self.gate(x.to(conv_dtype))).to(x.dtype)
        return x + weight * (filtered - x)


class SpectralFilter1d(_SpectralFilter):
    """Learnable per-sub-band, per-channel gains on a multi-level DWT along time.

    Input and output ``B×C×T``. ``gains`` has shape ``(levels + 1)×C`` in coefficient order
    ``[A_L, D_L, ..., D_1]`` (see :func:`band_names_1d`). ``out = x + σ(conv1x1(x)) ·
    (IDWT(gains · DWT(x)) − x)``; without the gate ``out = IDWT(gains · DWT(x))``.
    """

    def __init__(self, channels: int, levels: int = 2, wavelet: str = "haar", gate: bool = True):
        check_levels(levels)
        check_wavelet(wavelet)
        super().__init__(
            channels,
            levels,
            wavelet,
            gate,
            levels + 1,
            nn.Conv1d(channels, channels, kernel_size=1),
        )

    @property
    def band_names(self) -> list[str]:
        return band_names_1d(self.levels)

    def filtered(self, x: torch.Tensor) -> torch.Tensor:
        """``IDWT(gains · DWT(x))`` for ``x: B×C×T`` (computed in float32 or float64)."""
        coeffs = dwt1d(x, self.wavelet, self.levels, self.mode)
        gains = self.gains.to(coeffs[0].dtype)
        scaled = [band * gains[i].view(1, -1, 1) for i, band in enumerate(coeffs)]
        return idwt1d(scaled, self.wavelet, length=x.shape[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[1] != self.channels:
            raise ValueError(f"SpectralFilter1d expects B×{self.channels}×T, got {tuple(x.shape)}")
        dtype = x.dtype
        x = x.to(compute_dtype(dtype))
        out = self._blend(x, self.filtered(x))
        return out.to(dtype)


class SpectralFilter2d(_SpectralFilter):
    """Learnable per-sub-band, per-channel gains on a 2-D DWT of each frame's feature map.

    Input and output ``N×C×H×W`` (frames folded into ``N``), any ``H×W``. ``gains`` has shape
    ``(1 + 3·levels)×C`` in coefficient order ``[LL_L, LH_L, HL_L, HH_L, ..., LH_1, HL_1, HH_1]``
    (see :func:`band_names_2d`): one gain per (level, sub-band, channel); an ``LL`` band exists
    only at the coarsest level of a multi-level transform. ``out = x + σ(conv1x1(x)) ·
    (IDWT(gains · DWT(x)) − x)``; without the gate ``out = IDWT(gains · DWT(x))``.
    """

    def __init__(self, channels: int, levels: int = 1, wavelet: str = "haar", gate: bool = True):
        check_levels(levels)
        check_wavelet(wavelet)
        super().__init__(
            channels,
            levels,
            wavelet,
            gate,
            1 + 3 * levels,
            nn.Conv2d(channels, channels, kernel_size=1),
        )

    @property
    def band_names(self) -> list[str]:
        return band_names_2d(self.levels)

    def filtered(self, x: torch.Tensor) -> torch.Tensor:
        """``IDWT(gains · DWT(x))`` for ``x: N×C×H×W`` (computed in float32 or float64)."""
        coeffs = dwt2d(x, self.wavelet, self.levels, self.mode)
        gains = self.gains.to(coeffs[0].dtype)

        def gain(index: int) -> torch.Tensor:
            return gains[index].view(1, -1, 1, 1)

        scaled = [coeffs[0] * gain(0)]
        for level, detail in enumerate(coeffs[1:]):
            first = 1 + 3 * level
            scaled.append(tuple(band * gain(first + k) for k, band in enumerate(detail)))
        return idwt2d(scaled, self.wavelet, size=(x.shape[-2], x.shape[-1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(
                f"SpectralFilter2d expects N×{self.channels}×H×W, got {tuple(x.shape)}"
            )
        dtype = x.dtype
        x = x.to(compute_dtype(dtype))
        out = self._blend(x, self.filtered(x))
        return out.to(dtype)
