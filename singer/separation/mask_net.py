"""``mask_net``: a small STFT mask network that the harness trains itself (embedded default).

    --separate mask_net                                  # trained on first use, then cached
    --separate mask_net --separator-arg checkpoint=runs/mask_net.pt   # one trained explicitly:
    python -m singer.separation.train --out runs/mask_net.pt

The network (:class:`MaskNet`, about 0.46 M parameters) is trained on SynthSing voices under
SynthSing music beds (:mod:`singer.separation.train`): speakers drawn from a random stream of
their own, so no speaker of a SynthSing dataset is among them. It needs no download and no
weight file from elsewhere: without ``checkpoint`` it is trained on first use (a few minutes
on a laptop CPU, deterministic for a recipe) into ``$SINGER_CACHE/separators/`` (default
``.cache/singer``) and reused from there. It has only ever heard synthetic music: on real
songs use a pretrained separator (``hdemucs``). Its measured quality is in docs/metrics.md.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from singer.registry import SEPARATORS
from singer.separation.base import Separator
from singer.weights import MissingWeightsError

CHECKPOINT_FORMAT = "singer.mask_net"
TRAIN_COMMAND = "python -m singer.separation.train --out runs/mask_net.pt"


class MaskNet(nn.Module):
    """Vocal mask on the STFT: waveform ``B×S`` (16 kHz) → vocal estimate ``B×S``.

    STFT (``n_fft``, ``hop``, Hann) → log magnitude ``B×F×T`` minus its mean over the input
    (so the mask does not depend on the level) → 1×1 convolution to ``hidden`` channels →
    residual blocks (3-tap convolution over time with dilation ``d``, GELU, GroupNorm), one per
    entry of ``dilations`` → 1×1 convolution to ``F`` bins → sigmoid mask ``M`` → iSTFT of
    ``M`` times the mixture's STFT. Frequency bins are channels, so every block sees the whole
    spectrum of a frame (formants, harmonics) and ±``sum(dilations)`` frames around it.
    """

    def __init__(
        self,
        n_fft: int = 512,
        hop: int = 128,
        hidden: int = 128,
        dilations: tuple[int, ...] | list[int] = (1, 2, 4, 8, 1, 2, 4, 8),
    ):
        super().__init__()
        self.n_fft, self.hop = int(n_fft), int(hop)
        self.arch = {"n_fft": self.n_fft, "hop": self.hop, "hidden": int(hidden)}
        self.arch["dilations"] = [int(d) for d in dilations]
        bins = self.n_fft // 2 + 1
        self.inp = nn.Conv1d(bins, hidden, 1)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv1d(hidden, hidden, 3, padding=d, dilation=d),
                nn.GELU(),
                nn.GroupNorm(1, hidden),
            )
            for d in self.arch["dilations"]
        )
        self.out = nn.Conv1d(hidden, bins, 1)
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)

    def mask(self, spec: torch.Tensor) -> torch.Tensor:
        """Complex STFT ``B×F×T`` → mask ``B×F×T`` in (0, 1)."""
        feat = torch.log(spec.abs() + 1e-5)
        h = self.inp(feat - feat.mean(dim=(1, 2), keepdim=True))
        for block in self.blocks:
            h = h + block(h)
        return torch.sigmoid(self.out(h))

    def forward(self, mixture: torch.Tensor) -> torch.Tensor:
        length = mixture.shape[-1]
        if length < self.n_fft:  # too short for one frame: pad, then cut back
            mixture = nn.functional.pad(mixture, (0, self.n_fft - length))
        spec = torch.stft(mixture, self.n_fft, self.hop, window=self.window, return_complex=True)
        vocals = torch.istft(
            spec * self.mask(spec),
            self.n_fft,
            self.hop,
            window=self.window,
            length=mixture.shape[-1],
        )
        return vocals[..., :length]


def load_mask_net(path: str | Path) -> MaskNet:
    """A :class:`MaskNet` from a checkpoint of :func:`singer.separation.train.train_mask_net`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingWeightsError(
            f"separator mask_net: `checkpoint={path}` is not a file.\n"
            f"  Train one with\n      {TRAIN_COMMAND}\n"
            "  or leave `checkpoint` unset to train it on first use."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a mask_net checkpoint (train one with `{TRAIN_COMMAND}`)")
    net = MaskNet(**state["arch"])
    net.load_state_dict(state["state_dict"])
    return net


@SEPARATORS.register("mask_net")
class MaskNetSeparator(Separator):
    """Small STFT mask network trained here on SynthSing with accompaniment; offline, no download."""

    def __init__(
        self,
        checkpoint: str | None = None,
        steps: int | None = None,
        pairs: int | None = None,
        seed: int | None = None,
        chunk_seconds: float = 30.0,
        overlap_seconds: float = 1.0,
    ):
        """``checkpoint``: a file of ``python -m singer.separation.train``; unset, the network
        is trained on first use with the default recipe (``steps``, ``pairs`` and ``seed``
        change it) and cached; ``random``: untrained (tests and speed benchmarks only)."""
        super().__init__(chunk_seconds=float(chunk_seconds), overlap_seconds=float(overlap_seconds))
        if checkpoint is not None and str(checkpoint) == "random":
            self.net = MaskNet()
            self.source = "random"
            return
        if checkpoint is None or str(checkpoint).strip() in ("", "null", "None"):
            from singer.separation.train import Recipe, first_use_checkpoint

            overrides = {"steps": steps, "pairs": pairs, "seed": seed}
            recipe = Recipe(**{k: int(v) for k, v in overrides.items() if v is not None})
            checkpoint = first_use_checkpoint(recipe)
        elif any(v is not None for v in (steps, pairs, seed)):
            raise ValueError(
                "mask_net: steps, pairs and seed choose how it is trained on first use; they do "
                "not apply to a given checkpoint"
            )
        self.net = load_mask_net(checkpoint)
        self.source = str(checkpoint)

    def separate_chunk(self, mixture: torch.Tensor) -> torch.Tensor:
        return self.net(mixture)
