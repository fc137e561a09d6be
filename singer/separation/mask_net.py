"""``mask_net``: a small STFT mask network that the harness trains itself (embedded default).

    --separate mask_net                                  # trained on first use, then cached
    --separate mask_net --separator-arg checkpoint=runs/mask_net.pt   # one trained explicitly:
    python -m singer.separation.train --out runs/mask_net.pt

The network (:class:`MaskNet`, about 0.46 M parameters) is trained on SynthSing voices under
SynthSing music beds (:func:`train_mask_net`): speakers drawn from a random stream of
their own, so no speaker of a SynthSing dataset is among them. It needs no download and no
weight file from elsewhere: without ``checkpoint`` it is trained on first use (a few minutes
on a laptop CPU, deterministic for a recipe) into ``$SINGER_CACHE/separators/`` (default
``.cache/singer``) and reused from there. It has only ever heard synthetic music: on real
songs use a pretrained separator (``hdemucs``). Its measured quality is in docs/metrics.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from singer.registry import SEPARATORS
from singer.safe_io import file_lock
from singer.separation.base import Separator, si_sdr
from singer.weights import MissingWeightsError

CHECKPOINT_FORMAT = "singer.mask_net"
TRAIN_COMMAND = "python -m singer.separation.train --out runs/mask_net.pt"
SAMPLE_RATE = 16000


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
    """A :class:`MaskNet` from a checkpoint of :func:`train_mask_net`."""
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


# -- training -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recipe:
    """How ``mask_net`` is trained (its fields name the first-use cache file)."""

    pairs: int = 48  # performances (each with its music bed), 4 s each
    steps: int = 400
    batch_size: int = 8
    crop_seconds: float = 2.0
    lr: float = 1.0e-3
    vmr_low: float = -10.0  # dB, voice-to-music ratios drawn for training mixes
    vmr_high: float = 15.0
    seed: int = 0

    def digest(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


def si_sdr_loss(estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Negative SI-SDR in dB, mean over the batch (``B×S`` each)."""
    return -si_sdr(estimate, target).mean()


def training_pairs(
    pairs: int, seed: int, *, seconds: float = 4.0, sample_rate: int = SAMPLE_RATE
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(voices, beds)``, each ``pairs×S``: SynthSing performances and music beds in their keys."""
    # lazy: start-up: SynthSing loads scipy and the video codecs (seconds), which the separation
    # package, imported wherever audio is separated, does without
    from singer.data import synth as S

    num = int(round(seconds * sample_rate))
    voices, beds = [], []
    for i in range(pairs):
        rng = np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(7, i)))
        speaker = S.sample_speaker(rng, speaker_id=f"sep{i:03d}")
        kind = S.KINDS[i % 2]
        voice, ctl, _ = S.synth_audio(
            rng, kind, speaker.voice, num_samples=num, sample_rate=sample_rate
        )
        if kind == "singing":
            frames = ctl["f0"][:: sample_rate // 100]  # 10 ms steps are plenty for the key
            amp = ctl["amplitude"][:: sample_rate // 100]
            root = S.estimate_key(frames, 20.0 * np.log10(amp / amp.max() + 1e-9))
        else:
            root = 110.0 * 2.0 ** (int(rng.integers(12)) / 12.0)
        style = S.MUSIC_STYLES[i % len(S.MUSIC_STYLES)]
        bed, _ = S.synth_music(
            rng, num_samples=num, sample_rate=sample_rate, style=style, root_hz=root
        )
        voices.append(voice.astype(np.float32))
        beds.append(bed.astype(np.float32))
    return torch.from_numpy(np.stack(voices)), torch.from_numpy(np.stack(beds))


def _batch(
    voices: torch.Tensor, beds: torch.Tensor, recipe: Recipe, crop: int, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of ``(mixture, voice)``, each ``B×crop``."""
    n, total, b = voices.shape[0], voices.shape[1], recipe.batch_size
    who = torch.randint(n, (b,), generator=g)
    other = torch.randint(n, (b,), generator=g)
    bed_of = torch.where(torch.rand(b, generator=g) < 0.5, who, other)
    starts = torch.randint(total - crop + 1, (2, b), generator=g)
    voice = torch.stack([voices[i, s : s + crop] for i, s in zip(who, starts[0], strict=True)])
    bed = torch.stack([beds[i, s : s + crop] for i, s in zip(bed_of, starts[1], strict=True)])
    vmr = recipe.vmr_low + (recipe.vmr_high - recipe.vmr_low) * torch.rand(b, 1, generator=g)
    power = voice.pow(2).mean(-1, keepdim=True) / bed.pow(2).mean(-1, keepdim=True).clamp_min(1e-12)
    mixture = voice + power.sqrt() * 10.0 ** (-vmr / 20.0) * bed
    scale = 0.5 / mixture.abs().amax(-1, keepdim=True).clamp_min(1e-9)
    return mixture * scale, voice * scale


def train_mask_net(recipe: Recipe, out: str | Path, *, progress: bool = True) -> Path:
    """Train :class:`MaskNet` with ``recipe`` and write its checkpoint to ``out``.

    Data: ``pairs`` four-second performances (singing and talking alternately), each from a
    new speaker drawn from a random stream keyed by ``(seed, 7, i)``, which no SynthSing
    dataset uses, so the separator is never trained on a speaker it is later evaluated on.
    Each performance gets a music bed in its key (styles in turn). Every training example is a
    random two-second crop of a voice over a crop of its own bed or, half of the time, of
    another performance's bed, mixed at a voice-to-music ratio drawn uniformly from
    [``vmr_low``, ``vmr_high``] dB and scaled to a peak of 0.5 as SynthSing mixes are. The loss
    is the negative SI-SDR of the estimate against the voice. Adam with a cosine learning-rate
    decay; everything is seeded, so one recipe gives one network on one machine.
    """
    out = Path(out)
    voices, beds = training_pairs(recipe.pairs, recipe.seed)
    crop = int(round(recipe.crop_seconds * SAMPLE_RATE))
    if crop > voices.shape[1]:
        raise ValueError(f"crop_seconds={recipe.crop_seconds} is longer than the 4 s performances")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        net = MaskNet()
    g = torch.Generator().manual_seed(recipe.seed + 1)
    opt = torch.optim.Adam(net.parameters(), lr=recipe.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, max(1, recipe.steps), eta_min=0.1 * recipe.lr
    )
    losses: list[float] = []
    bar = tqdm(range(recipe.steps), desc="train mask_net", disable=not progress)
    for _ in bar:
        mixture, voice = _batch(voices, beds, recipe, crop, g)
        loss = si_sdr_loss(net(mixture), voice)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(si_sdr=f"{-np.mean(losses[-20:]):.2f} dB")
    bar.close()
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": 1,
        "arch": net.arch,
        "state_dict": net.state_dict(),
        "recipe": asdict(recipe),
        "train_si_sdr_db": float(-np.mean(losses[-20:])) if losses else float("nan"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    tmp.replace(out)
    return out


def cache_root() -> Path:
    """Where first-use separators are kept: ``$SINGER_CACHE/separators`` (default ``.cache/singer``)."""
    return Path(os.environ.get("SINGER_CACHE") or ".cache/singer") / "separators"


def first_use_checkpoint(recipe: Recipe) -> Path:
    """The cached checkpoint of ``recipe``, trained now (under a file lock) if missing."""
    root = cache_root()
    path = root / f"mask_net-{recipe.digest()}.pt"
    with file_lock(root / f".{path.name}.lock"):
        if not path.is_file():
            print(
                f"separator mask_net: training it on first use ({recipe.steps} steps, a few "
                f"minutes on a CPU) into {path}",
                file=sys.stderr,
            )
            train_mask_net(recipe, path)
    return path


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
