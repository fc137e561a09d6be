"""Training the ``mask_net`` separator on SynthSing voices under SynthSing music beds.

    python -m singer.separation.train --out runs/mask_net.pt [--steps 400 --pairs 48 --seed 0]

Data: ``pairs`` four-second performances (singing and talking alternately), each from a new
speaker drawn from a random stream keyed by ``(seed, 7, i)``, which no SynthSing dataset uses,
so the separator is never trained on a speaker it is later evaluated on. Each performance gets
a music bed in its key (styles in turn). Every training example is a random two-second crop of
a voice over a crop of its own bed or, half of the time, of another performance's bed, mixed
at a voice-to-music ratio drawn uniformly from [``vmr_low``, ``vmr_high``] dB and scaled to a
peak of 0.5 as SynthSing mixes are. The loss is the negative SI-SDR of the estimate against
the voice. Adam with a cosine learning-rate decay; everything is seeded, so one recipe gives
one network on one machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from singer.separation.mask_net import CHECKPOINT_FORMAT, MaskNet

SAMPLE_RATE = 16000


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
    from singer.metrics.separation import si_sdr

    return -si_sdr(estimate, target).mean()


def training_pairs(
    pairs: int, seed: int, *, seconds: float = 4.0, sample_rate: int = SAMPLE_RATE
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(voices, beds)``, each ``pairs×S``: SynthSing performances and music beds in their keys."""
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
    """Train :class:`MaskNet` with ``recipe`` and write its checkpoint to ``out``."""
    from tqdm.auto import tqdm

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
    from singer.data.cache import _file_lock

    root = cache_root()
    path = root / f"mask_net-{recipe.digest()}.pt"
    with _file_lock(root / f".{path.name}.lock"):
        if not path.is_file():
            print(
                f"separator mask_net: training it on first use ({recipe.steps} steps, a few "
                f"minutes on a CPU) into {path}",
                file=sys.stderr,
            )
            train_mask_net(recipe, path)
    return path


def main(argv: list[str] | None = None) -> int:
    defaults = Recipe()
    p = argparse.ArgumentParser(
        prog="python -m singer.separation.train",
        description="Train the mask_net vocal separator on SynthSing voices under music beds.",
    )
    p.add_argument("--out", required=True, type=Path, help="checkpoint file to write (.pt)")
    p.add_argument("--steps", type=int, default=defaults.steps)
    p.add_argument("--pairs", type=int, default=defaults.pairs, help="performances generated")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.steps < 1 or args.pairs < 2 or args.batch_size < 1:
        p.error("--steps and --batch-size must be at least 1, --pairs at least 2")
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = Recipe(
        pairs=args.pairs,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )
    path = train_mask_net(recipe, args.out, progress=not args.quiet)
    print(f"wrote {path}; use it with --separate mask_net --separator-arg checkpoint={path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
