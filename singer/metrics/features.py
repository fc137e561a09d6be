"""Pluggable feature networks for the Fréchet metrics (FID on frames, FVD on clips).

A feature net maps video to one feature vector per frame (``kind = "frame"``) or per clip
(``kind = "clip"``); :func:`build_feature_net` builds one by name and
:meth:`FeatureNet.extract` runs it over a ``B×3×F×H×W`` video in [-1, 1], in chunks, returning
float64 numpy features (``B·F×D`` or ``B×D``).

Real networks (pretrained weights from a local file, never downloaded; see ``singer.weights``):

``inception_v3`` (frame, D = 2048)
    torchvision's Inception-v3 architecture with the ImageNet weights of torchvision
    (``inception_v3_google-0cc3c7bd.pth`` or any state dict with the same keys; ``AuxLogits.*``
    and ``fc.*`` are ignored). Frames go [-1, 1] → [0, 1], are resized to ``size`` (299) with
    bilinear interpolation (antialiased when shrinking), normalised with the ImageNet mean/std
    and passed through the network with ``transform_input=True`` (torchvision's setting for these
    weights); the feature is the 2048-d global average pool before ``fc``. The values are close
    to, but not the same as, those of the TensorFlow Inception graph of the original FID (which
    some tools port as "pt_inception-2015-12-05"); compare FIDs only across runs of this code.

``i3d`` (clip, D = num_classes for ``feature_layer="logits"``, 1024 for ``"pool"``)
    :class:`InceptionI3d`, an Inflated Inception-v1 written for this project whose parameter
    names follow the widely used public PyTorch port of I3D (files such as ``rgb_imagenet.pt``,
    Kinetics-400, 400 classes). Expected state-dict layout::

        Conv3d_1a_7x7.conv3d.weight            64×3×7×7×7   (no conv bias)
        Conv3d_1a_7x7.bn.{weight,bias,running_mean,running_var[,num_batches_tracked]}
        Conv3d_2b_1x1.*, Conv3d_2c_3x3.*       Unit3D = conv3d (bias-free) + bn (eps 1e-3)
        Mixed_{3b,3c,4b,4c,4d,4e,4f,5b,5c}.{b0,b1a,b1b,b2a,b2b,b3b}.{conv3d,bn}.*
        logits.conv3d.{weight,bias}            num_classes×1024×1×1×1

    Convolutions and max-pools use TensorFlow "SAME" padding computed from the input size.
    Frames stay in [-1, 1] (what those weights expect) and are resized to ``size`` (224). The
    feature is the global average over time and space of ``Mixed_5c`` (``"pool"``), or that
    average passed through the 1×1×1 ``logits`` layer (``"logits"``, the default, as the FVD
    paper uses the Kinetics logits). The public port averages with a fixed 2×7×7 window and
    then over time; for 224-px input the two differ only in how the first and last time steps
    are weighted, and the global average also works for clips shorter than 16 frames.

Offline networks (no weights; fixed formulas evaluated in float64 on the CPU, so the same
video gives the same features on every run, and across machines up to float64 round-off):

``offline_frame`` (frame, D = 118)
    Hand-designed appearance statistics of each frame, resized to 64×64 and measured in [0, 1]
    intensity units, then multiplied by 10 (``FEATURE_SCALE``) so that distances read in a
    convenient range (on 32-px SynthSing clips: a 3×3 blur ≈ 9, a 3-px shift ≈ 25, uniform
    noise frames ≈ 300). The statistics: soft 8-bin colour histograms per channel (24),
    channel mean and std (6), mean colour on a 4×4 grid (48), magnitude-weighted 8-bin signed
    gradient-orientation histograms (Sobel on luma) on a 2×2 grid (32), gradient-magnitude
    mean and std (2), mean gradient magnitude on a 2×2 grid (4), and mean |Laplacian| of luma
    at 64 and 32 px (2, sharpness/blur). Colour, layout, edge structure and blur all move the
    Fréchet distance.

``offline_clip`` (clip, D = 161)
    The time-average of ``offline_frame`` (118) plus temporal statistics (luma at 64×64 unless
    said otherwise), each a further ×10 (``TEMPORAL_SCALE``) so that changes of a few percent of
    the intensity range weigh about as much as the appearance features: mean |Δ| between
    consecutive frames on a 4×4 grid (16), mean |Δ| of RGB (1) and its std over time (1), mean
    |Δ²| (second difference: jitter, flicker) overall (1) and on a 2×2 grid (4), the std over
    time of the 4×4 grid luma (16), and the mean |Δ| of four groups of frame statistics (colour
    histograms, grid colours, orientation histograms, sharpness) (4).
    Clips of one frame have zero temporal statistics.

Metrics built on the offline nets are reported under their own names (``fid_offline``,
``fvd_offline``) so they are never mistaken for paper FID/FVD numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from singer.registry import UnknownNameError
from singer.weights import load_state_dict, resolve_weights

FEATURE_NETS: dict[str, Callable[..., FeatureNet]] = {}


def register_feature_net(name: str):
    """Class decorator: make a :class:`FeatureNet` buildable by ``name``."""

    def add(cls):
        if name in FEATURE_NETS and FEATURE_NETS[name] is not cls:
            raise ValueError(f"feature net '{name}' is already registered")
        FEATURE_NETS[name] = cls
        return cls

    return add


def feature_net_names() -> list[str]:
    return sorted(FEATURE_NETS)


def build_feature_net(name: str, **kwargs) -> FeatureNet:
    """Build the feature net registered under ``name`` (unknown names list the known ones)."""
    if name not in FEATURE_NETS:
        raise UnknownNameError("feature net", name, feature_net_names())
    return FEATURE_NETS[name](**kwargs)


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class FeatureNet(nn.Module):
    """Base class: ``forward`` maps frames ``N×3×H×W`` (kind ``frame``) or clips ``B×3×F×H×W``
    (kind ``clip``), values in [-1, 1], to ``N×D`` / ``B×D`` features."""

    kind: str = "frame"
    dim: int = 0

    def __init__(self, device: str | torch.device | None = "cpu", batch_size: int = 32):
        super().__init__()
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        return self(x.to(self.device))

    @torch.no_grad()
    def extract(self, video: torch.Tensor, frame_stride: int = 1) -> np.ndarray:
        """Features of a ``B×3×F×H×W`` video in [-1, 1] → float64 ``B·F'×D`` (frame nets, every
        ``frame_stride``-th frame) or ``B×D`` (clip nets)."""
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"video must be B×3×F×H×W, got shape {tuple(video.shape)}")
        self.eval()
        if self.kind == "frame":
            frames = video[:, :, :: max(1, int(frame_stride))]
            items = frames.permute(0, 2, 1, 3, 4).reshape(-1, 3, *frames.shape[-2:])
        else:
            items = video
        step = self.batch_size
        out = [
            self._run(items[i : i + step]).detach().double().cpu()
            for i in range(0, len(items), step)
        ]
        if not out:
            return np.zeros((0, self.dim))
        return torch.cat(out).numpy()


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] → [0, 1], clamped."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of ``N×C×H×W`` to ``size×size`` (antialiased when shrinking)."""
    if x.shape[-2:] == (size, size):
        return x
    shrink = x.shape[-1] > size or x.shape[-2] > size
    return F.interpolate(
        x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink
    )


def _load_into(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    *,
    what: str,
    path,
    layout: str,
    ignore_prefixes: tuple[str, ...] = (),
) -> None:
    """Strict load of ``state`` into ``module`` with a readable error.

    A leading ``module.`` (DataParallel) is stripped, keys under ``ignore_prefixes`` are
    dropped, and missing ``num_batches_tracked`` buffers (older checkpoints) are allowed.
    """
    cleaned = {}
    for key, value in state.items():
        key = key[len("module.") :] if key.startswith("module.") else key
        if not key.startswith(ignore_prefixes):
            cleaned[key] = value
    result = module.load_state_dict(cleaned, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    unexpected = list(result.unexpected_keys)
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match the {what} layout: {len(missing)} missing keys "
            f"(e.g. {missing[:4]}), {len(unexpected)} unexpected keys (e.g. {unexpected[:4]}). "
            f"Expected: {layout}"
        )


# =============================================================================================
# Inception-v3 (FID)
# =============================================================================================
INCEPTION_HINT = (
    "the file is torchvision's ImageNet Inception-v3 state dict. On a machine with network access run\n"
    '      python -c "import torch, torchvision; torch.save(torchvision.models.inception_v3('
    "weights='IMAGENET1K_V1').state_dict(), 'inception_v3.pt')\"\n"
    "    (or take inception_v3_google-0cc3c7bd.pth from that machine's torch hub cache) and copy it here."
)
INCEPTION_LAYOUT = "torchvision Inception3 keys (Conv2d_1a_3x3.conv.weight, ..., Mixed_7c.*); AuxLogits.* and fc.* are ignored"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@register_feature_net("inception_v3")
class InceptionV3Features(FeatureNet):
    """torchvision Inception-v3, 2048-d pool features of each frame (weights from a local file)."""

    kind = "frame"
    dim = 2048

    def __init__(
        self,
        weights: str | None = None,
        sha256: str | None = None,
        *,
        size: int = 299,
        device="auto",
        batch_size: int = 32,
        config_key: str = "metric_kwargs.fid.weights",
        sha256_key: str = "metric_kwargs.fid.sha256",
    ):
        super().__init__(device=device, batch_size=batch_size)
        # lazy: start-up: torchvision takes seconds, which importing the metrics does without
        from torchvision.models.inception import Inception3

        if size < 75:
            raise ValueError(f"Inception-v3 needs frames of at least 75 px, got size={size}")
        path = resolve_weights(
            weights,
            sha256=sha256,
            name="Inception-v3 weights (torchvision state dict)",
            config_key=config_key,
            sha256_key=sha256_key,
            hint=INCEPTION_HINT,
        )
        self.size = int(size)
        self.net = Inception3(
            num_classes=1000, aux_logits=False, transform_input=True, init_weights=False
        )
        self.net.fc = nn.Identity()
        _load_into(
            self.net,
            load_state_dict(path),
            what="Inception-v3",
            path=path,
            layout=INCEPTION_LAYOUT,
            ignore_prefixes=("AuxLogits.", "fc."),
        )
        self.source = str(path)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()
        self.to(self.device)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = _resize(_to_unit(frames.float()), self.size)
        return self.net((x - self.mean) / self.std)


# =============================================================================================
# I3D (FVD)
# =============================================================================================
def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) of one dimension."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel, stride) -> torch.Tensor:
    pads = []
    for size, k, s in reversed(
        list(zip(x.shape[-3:], kernel, stride))
    ):  # F.pad wants last dim first
        pads.extend(_same_pad(size, k, s))
    return F.pad(x, pads)


class Unit3D(nn.Module):
    """Conv3d (SAME padding) → BatchNorm3d (eps 1e-3) → ReLU, named ``conv3d`` / ``bn``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel=(1, 1, 1),
        stride=(1, 1, 1),
        *,
        batch_norm: bool = True,
        bias: bool = False,
        activation: bool = True,
    ):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)
        self.conv3d = nn.Conv3d(
            in_channels, out_channels, self.kernel, self.stride, padding=0, bias=bias
        )
        self.bn = nn.BatchNorm3d(out_channels, eps=1e-3, momentum=0.01) if batch_norm else None
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.activation else x


class MaxPool3dSame(nn.Module):
    """Max-pool with SAME padding (zeros: inputs follow a ReLU, so zero acts as −inf)."""

    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionBlock3D(nn.Module):
    """Four branches (1×1; 1×1→3×3; 1×1→3×3; pool→1×1), concatenated on channels."""

    def __init__(self, in_channels: int, widths: tuple[int, int, int, int, int, int]):
        super().__init__()
        self.b0 = Unit3D(in_channels, widths[0])
        self.b1a = Unit3D(in_channels, widths[1])
        self.b1b = Unit3D(widths[1], widths[2], (3, 3, 3))
        self.b2a = Unit3D(in_channels, widths[3])
        self.b2b = Unit3D(widths[3], widths[4], (3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, widths[5])
        self.out_channels = widths[0] + widths[2] + widths[4] + widths[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1
        )


# (name, in_channels, branch widths) of the Inception blocks, and where the max-pools sit.
I3D_BLOCKS = (
    ("Mixed_3b", 192, (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", 256, (128, 128, 192, 32, 96, 64)),
    ("MaxPool3d_4a_3x3", (3, 3, 3), (2, 2, 2)),
    ("Mixed_4b", 480, (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", 512, (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", 512, (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", 512, (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", 528, (256, 160, 320, 32, 128, 128)),
    ("MaxPool3d_5a_2x2", (2, 2, 2), (2, 2, 2)),
    ("Mixed_5b", 832, (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", 832, (384, 192, 384, 48, 128, 128)),
)


class InceptionI3d(nn.Module):
    """Inflated Inception-v1 (I3D) for RGB clips ``B×3×T×H×W`` in [-1, 1].

    ``forward`` returns ``B×1024`` pooled features (``pool=True``) or ``B×num_classes`` logits.
    Parameter names follow the common public PyTorch I3D port (see the module docstring).
    """

    def __init__(self, num_classes: int = 400):
        super().__init__()
        self.num_classes = int(num_classes)
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.blocks: list[str] = []
        for name, first, second in I3D_BLOCKS:
            if name.startswith("MaxPool"):
                self.add_module(name, MaxPool3dSame(first, second))
            else:
                self.add_module(name, InceptionBlock3D(first, second))
            self.blocks.append(name)
        self.logits = Unit3D(1024, self.num_classes, batch_norm=False, bias=True, activation=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``B×1024`` global average of ``Mixed_5c`` over time and space."""
        for name in (
            "Conv3d_1a_7x7",
            "MaxPool3d_2a_3x3",
            "Conv3d_2b_1x1",
            "Conv3d_2c_3x3",
            "MaxPool3d_3a_3x3",
            *self.blocks,
        ):
            x = getattr(self, name)(x)
        return x.mean(dim=(2, 3, 4))

    def forward(self, x: torch.Tensor, pool: bool = False) -> torch.Tensor:
        pooled = self.features(x)
        if pool:
            return pooled
        return self.logits(pooled[:, :, None, None, None]).flatten(1)


I3D_HINT = (
    "the file is an RGB I3D state dict in the layout of the common public PyTorch I3D port (e.g. its "
    "rgb_imagenet.pt, Kinetics-400). On a machine with network access fetch that file from the port's "
    "repository (models/rgb_imagenet.pt) and copy it here; see singer/metrics/features.py for the key layout."
)
I3D_LAYOUT = "Conv3d_1a_7x7.conv3d.weight, Conv3d_1a_7x7.bn.*, ..., Mixed_5c.b3b.bn.*, logits.conv3d.{weight,bias}"


@register_feature_net("i3d")
class I3DFeatures(FeatureNet):
    """I3D (Inflated Inception-v1) clip features: Kinetics logits or 1024-d pool (local weights)."""

    kind = "clip"

    def __init__(
        self,
        weights: str | None = None,
        sha256: str | None = None,
        *,
        size: int = 224,
        feature_layer: str = "logits",
        device="auto",
        batch_size: int = 4,
        config_key: str = "metric_kwargs.fvd.weights",
        sha256_key: str = "metric_kwargs.fvd.sha256",
    ):
        super().__init__(device=device, batch_size=batch_size)
        if feature_layer not in ("logits", "pool"):
            raise ValueError(f"feature_layer must be 'logits' or 'pool', got {feature_layer!r}")
        if size < 32:
            raise ValueError(f"I3D needs frames of at least 32 px, got size={size}")
        path = resolve_weights(
            weights,
            sha256=sha256,
            name="I3D weights (RGB state dict)",
            config_key=config_key,
            sha256_key=sha256_key,
            hint=I3D_HINT,
        )
        state = load_state_dict(path)
        state = {
            (k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()
        }
        logits = state.get("logits.conv3d.weight")
        if logits is None and feature_layer == "logits":
            raise ValueError(
                f"{path} has no logits.conv3d.weight; use feature_layer='pool' or a file with the logits"
            )
        num_classes = int(logits.shape[0]) if logits is not None else 400
        self.net = InceptionI3d(num_classes)
        ignore = ("logits.",) if logits is None else ()
        _load_into(
            self.net, state, what="I3D", path=path, layout=I3D_LAYOUT, ignore_prefixes=ignore
        )
        self.size = int(size)
        self.feature_layer = feature_layer
        self.dim = 1024 if feature_layer == "pool" else num_classes
        self.source = str(path)
        self.requires_grad_(False)
        self.eval()
        self.to(self.device)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = clips.shape
        frames = clips.float().clamp(-1.0, 1.0).permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        frames = (
            _resize(frames, self.size).reshape(b, f, c, self.size, self.size).permute(0, 2, 1, 3, 4)
        )
        return self.net(frames.contiguous(), pool=self.feature_layer == "pool")


# =============================================================================================
# Offline, hand-designed features
# =============================================================================================
OFFLINE_SIZE = 64
HIST_BINS = 8
ORIENT_BINS = 8
FEATURE_SCALE = 10.0  # offline features are ×10, so Fréchet distances (squared) read ×100
TEMPORAL_SCALE = 10.0  # and the temporal statistics of offline_clip a further ×10
LUMA = (0.299, 0.587, 0.114)


def _soft_histogram(values: torch.Tensor, bins: int) -> torch.Tensor:
    """Triangular soft histogram of ``N×P`` values in [0, 1] → ``N×bins`` proportions (rows sum to 1)."""
    centres = (torch.arange(bins, dtype=values.dtype) + 0.5) / bins
    v = values.clamp(float(centres[0]), float(centres[-1])).unsqueeze(-1)
    weights = (1.0 - (v - centres).abs() * bins).clamp(min=0.0)
    return weights.mean(dim=-2)


def _filter2d(image: torch.Tensor, kernel: list[list[float]]) -> torch.Tensor:
    """``N×1×H×W`` filtered with a 3×3 kernel (replicate padding)."""
    k = torch.tensor(kernel, dtype=image.dtype).view(1, 1, 3, 3)
    return F.conv2d(F.pad(image, (1, 1, 1, 1), mode="replicate"), k)


def _luma(x: torch.Tensor) -> torch.Tensor:
    """``N×3×H×W`` → ``N×1×H×W``."""
    return (x * torch.tensor(LUMA, dtype=x.dtype).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)


# Group boundaries of the frame features, in order (used by the clip features too).
FRAME_GROUPS = (
    ("colour_hist", 3 * HIST_BINS),
    ("colour_moments", 6),
    ("grid_colour", 3 * 16),
    ("orientation", 4 * ORIENT_BINS),
    ("gradient", 2),
    ("grid_gradient", 4),
    ("sharpness", 2),
)
FRAME_DIM = sum(size for _, size in FRAME_GROUPS)


def _group_slices() -> dict[str, slice]:
    out, start = {}, 0
    for name, size in FRAME_GROUPS:
        out[name] = slice(start, start + size)
        start += size
    return out


def offline_frame_features(frames: torch.Tensor) -> torch.Tensor:
    """``N×3×H×W`` in [-1, 1] → ``N×118`` float64 (the ``offline_frame`` features)."""
    x = _resize(_to_unit(frames.detach().to("cpu", torch.float64)), OFFLINE_SIZE)
    n = x.shape[0]
    hist = _soft_histogram(x.reshape(n * 3, -1), HIST_BINS).reshape(n, -1)
    moments = torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3), unbiased=False)], dim=1)
    grid = F.adaptive_avg_pool2d(x, 4).reshape(n, -1)

    y = _luma(x)
    gx = _filter2d(y, [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]) / 8.0
    gy = _filter2d(y, [[-1, -2, -1], [0, 0, 0], [1, 2, 1]]) / 8.0
    magnitude = torch.sqrt(gx * gx + gy * gy)
    angle = torch.atan2(gy, gx)
    width = 2.0 * math.pi / ORIENT_BINS
    centres = -math.pi + (torch.arange(ORIENT_BINS, dtype=x.dtype) + 0.5) * width
    delta = torch.remainder(angle - centres.view(1, -1, 1, 1) + math.pi, 2.0 * math.pi) - math.pi
    weights = (1.0 - delta.abs() / width).clamp(min=0.0) * magnitude  # N×bins×H×W
    cell_pixels = (OFFLINE_SIZE // 2) ** 2
    floor = 1e-3 * cell_pixels  # flat cells tend to the uniform histogram
    per_cell = F.adaptive_avg_pool2d(weights, 2) * cell_pixels  # N×bins×2×2 sums
    mass = F.adaptive_avg_pool2d(magnitude, 2) * cell_pixels  # N×1×2×2
    orientation = (
        ((per_cell + floor / ORIENT_BINS) / (mass + floor)).permute(0, 2, 3, 1).reshape(n, -1)
    )
    gradient = torch.stack(
        [magnitude.mean(dim=(1, 2, 3)), magnitude.std(dim=(1, 2, 3), unbiased=False)], dim=1
    )
    grid_gradient = F.adaptive_avg_pool2d(magnitude, 2).reshape(n, -1)

    laplace = [[0, 1, 0], [1, -4, 1], [0, 1, 0]]
    sharp_full = _filter2d(y, laplace).abs().mean(dim=(1, 2, 3))
    sharp_half = _filter2d(F.avg_pool2d(y, 2), laplace).abs().mean(dim=(1, 2, 3))
    sharpness = torch.stack([sharp_full, sharp_half], dim=1)
    out = torch.cat([hist, moments, grid, orientation, gradient, grid_gradient, sharpness], dim=1)
    assert out.shape[1] == FRAME_DIM
    return FEATURE_SCALE * out


TEMPORAL_DIM = 16 + 1 + 1 + 1 + 4 + 16 + 4
CLIP_DIM = FRAME_DIM + TEMPORAL_DIM


def offline_clip_features(clips: torch.Tensor) -> torch.Tensor:
    """``B×3×F×H×W`` in [-1, 1] → ``B×161`` float64 (the ``offline_clip`` features)."""
    b, c, f, h, w = clips.shape
    frames = clips.detach().to("cpu", torch.float64).permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
    per_frame = offline_frame_features(frames).reshape(b, f, FRAME_DIM)
    x = _resize(_to_unit(frames), OFFLINE_SIZE).reshape(b, f, c, OFFLINE_SIZE, OFFLINE_SIZE)
    y = _luma(x.reshape(b * f, c, OFFLINE_SIZE, OFFLINE_SIZE)).reshape(
        b, f, OFFLINE_SIZE, OFFLINE_SIZE
    )
    temporal = torch.zeros(b, TEMPORAL_DIM, dtype=torch.float64)
    if f >= 2:
        d1 = (y[:, 1:] - y[:, :-1]).abs()  # B×(F−1)×H×W
        grid_d1 = F.adaptive_avg_pool2d(d1, 4).mean(dim=1).reshape(b, 16)
        rgb_d1 = (x[:, 1:] - x[:, :-1]).abs().mean(dim=(2, 3, 4))  # B×(F−1)
        rgb_mean, rgb_std = (
            rgb_d1.mean(dim=1, keepdim=True),
            rgb_d1.std(dim=1, unbiased=False, keepdim=True),
        )
        if f >= 3:
            d2 = (y[:, 2:] - 2.0 * y[:, 1:-1] + y[:, :-2]).abs()
            d2_mean = d2.mean(dim=(1, 2, 3))[:, None]
            grid_d2 = F.adaptive_avg_pool2d(d2, 2).mean(dim=1).reshape(b, 4)
        else:
            d2_mean, grid_d2 = (
                torch.zeros(b, 1, dtype=torch.float64),
                torch.zeros(b, 4, dtype=torch.float64),
            )
        grid_std = F.adaptive_avg_pool2d(y, 4).std(dim=1, unbiased=False).reshape(b, 16)
        slices = _group_slices()
        step = (
            per_frame[:, 1:] - per_frame[:, :-1]
        ).abs() / FEATURE_SCALE  # in raw units, like the rest
        names = ("colour_hist", "grid_colour", "orientation", "sharpness")
        groups = [step[..., slices[g]].mean(dim=(1, 2)) for g in names]
        temporal = torch.cat(
            [grid_d1, rgb_mean, rgb_std, d2_mean, grid_d2, grid_std, torch.stack(groups, dim=1)], 1
        )
    return torch.cat([per_frame.mean(dim=1), FEATURE_SCALE * TEMPORAL_SCALE * temporal], dim=1)


@register_feature_net("offline_frame")
class OfflineFrameFeatures(FeatureNet):
    """Hand-designed frame statistics (colour, layout, gradients, sharpness); no weights."""

    kind = "frame"
    dim = FRAME_DIM

    def __init__(self, device=None, batch_size: int = 256):
        super().__init__(device="cpu", batch_size=batch_size)  # float64 on the CPU: deterministic

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return offline_frame_features(frames)


@register_feature_net("offline_clip")
class OfflineClipFeatures(FeatureNet):
    """Hand-designed clip statistics: time-averaged frame statistics + temporal differences."""

    kind = "clip"
    dim = CLIP_DIM

    def __init__(self, device=None, batch_size: int = 16):
        super().__init__(device="cpu", batch_size=batch_size)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return offline_clip_features(clips)
