"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual
Metric"): learned perceptual distance of each generated frame to its reference frame.

Both frames (in [-1, 1]) are shifted and scaled as the reference code does, passed through
AlexNet's (or VGG-16's) convolutional trunk; at each of its 5 tapped layers the features are
unit-normalised over channels, their squared difference is weighted per channel by a learned
non-negative 1×1 layer ("lin"), averaged over space, and the layers are summed. Lower is
closer. A clip's value is the mean over its frames (``per_clip`` per evaluated item).

Two local files, both sha256-checked, nothing downloaded (``singer.weights``):

- ``backbone_weights``: the torchvision ``alexnet`` (or ``vgg16``) ImageNet state dict,
  e.g. ``alexnet-owt-7be5be79.pth`` (only its ``features.*`` tensors are used);
- ``lin_weights``: the LPIPS linear layers, e.g. ``weights/v0.1/alex.pth`` of the reference
  ``lpips`` package (keys ``lin0.model.1.weight`` … ``lin4.model.1.weight``).

    --set metrics=[lpips] --set metric_kwargs.lpips.backbone_weights=/w/alexnet.pth \\
        --set metric_kwargs.lpips.lin_weights=/w/alex.pth
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from singer.metrics.base import EvalBatch, Metric
from singer.registry import METRICS
from singer.weights import resolve_weights

# Layers tapped in torchvision's ``features`` (after each ReLU that ends a stage).
TAPS = {"alex": (1, 4, 7, 9, 11), "vgg": (3, 8, 15, 22, 29)}
CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
HINT = {
    "alex": "torchvision's AlexNet ImageNet weights (alexnet-owt-7be5be79.pth) and the lpips "
    "package's weights/v0.1/alex.pth, copied from a machine with internet access",
    "vgg": "torchvision's VGG-16 ImageNet weights (vgg16-397923af.pth) and the lpips package's "
    "weights/v0.1/vgg.pth, copied from a machine with internet access",
}


class LPIPSNet(nn.Module):
    """The LPIPS distance network: ``forward(x B×3×H×W, y) → B`` distances (inputs in [-1, 1])."""

    def __init__(self, net: str = "alex"):
        super().__init__()
        # lazy: start-up: torchvision takes seconds, which importing the metrics does without
        from torchvision import models

        if net not in TAPS:
            raise ValueError(f"net must be one of {sorted(TAPS)}, got {net!r}")
        trunk = models.alexnet(weights=None) if net == "alex" else models.vgg16(weights=None)
        self.features = trunk.features[: TAPS[net][-1] + 1]
        self.taps = TAPS[net]
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in CHANNELS[net])
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        h = (x - self.shift) / self.scale
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.taps:
                out.append(h / (h.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = 0.0
        for lin, a, b in zip(self.lins, self._taps(x), self._taps(y), strict=True):
            total = total + lin((a - b).pow(2)).mean(dim=(1, 2, 3))
        return total

    def load_files(self, backbone: dict, lin: dict) -> None:
        """Load a torchvision state dict (``features.*``) and the lpips ``lin*.model.1.weight``."""
        trunk = {k[len("features.") :]: v for k, v in backbone.items() if k.startswith("features.")}
        own = self.features.state_dict()
        missing = [k for k in own if k not in trunk]
        if missing:
            raise ValueError(
                f"the backbone state dict lacks features.{missing[0]} (and {len(missing) - 1} more)"
            )
        self.features.load_state_dict({k: trunk[k] for k in own})
        for i, layer in enumerate(self.lins):
            key = f"lin{i}.model.1.weight"
            if key not in lin:
                raise ValueError(f"the LPIPS linear-layer file lacks {key}")
            layer.weight.data.copy_(lin[key].reshape(layer.weight.shape))


@METRICS.register("lpips")
class LPIPS(Metric):
    """LPIPS to the reference frames (AlexNet or VGG-16 trunk, local weights), mean per clip."""

    name = "lpips"

    def __init__(
        self,
        backbone_weights: str | None = None,
        lin_weights: str | None = None,
        backbone_sha256: str | None = None,
        lin_sha256: str | None = None,
        *,
        net: str = "alex",
        device: str = "auto",
        batch_size: int = 32,
    ):
        if net not in TAPS:
            raise ValueError(f"net must be one of {sorted(TAPS)}, got {net!r}")
        backbone = resolve_weights(
            backbone_weights,
            sha256=backbone_sha256,
            name=f"LPIPS {net} backbone (torchvision state dict)",
            config_key="metric_kwargs.lpips.backbone_weights",
            sha256_key="metric_kwargs.lpips.backbone_sha256",
            hint=HINT[net],
        )
        lin = resolve_weights(
            lin_weights,
            sha256=lin_sha256,
            name=f"LPIPS {net} linear layers",
            config_key="metric_kwargs.lpips.lin_weights",
            sha256_key="metric_kwargs.lpips.lin_sha256",
            hint=HINT[net],
        )
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.net = LPIPSNet(net)
        self.net.load_files(
            torch.load(backbone, map_location="cpu", weights_only=True),
            torch.load(lin, map_location="cpu", weights_only=True),
        )
        self.net = self.net.eval().requires_grad_(False).to(self.device)
        self.batch_size = int(batch_size)
        self.reset()

    def reset(self) -> None:
        self.values: list[float] = []

    @torch.no_grad()
    def update(self, batch: EvalBatch) -> None:
        clips, frames = batch.generated.shape[0], batch.generated.shape[2]
        if batch.reference is None:
            self.values.extend([float("nan")] * clips)
            return
        gen = (
            batch.generated.detach()
            .float()
            .transpose(1, 2)
            .reshape(-1, 3, *batch.generated.shape[-2:])
        )
        ref = (
            batch.reference.detach()
            .float()
            .transpose(1, 2)
            .reshape(-1, 3, *batch.reference.shape[-2:])
        )
        scores = []
        for start in range(0, len(gen), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            scores.append(self.net(gen[chunk].to(self.device), ref[chunk].to(self.device)).cpu())
        per_clip = torch.cat(scores).double().reshape(clips, frames).mean(dim=1)
        self.values.extend(float(v) for v in per_clip)

    def compute(self) -> dict[str, float]:
        data = np.asarray(self.values, dtype=np.float64)
        data = data[np.isfinite(data)]
        return {"lpips": float(data.mean()) if data.size else float("nan")}

    def per_clip(self) -> dict[str, list[float]]:
        return {"lpips": list(self.values)}
