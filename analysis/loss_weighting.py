"""Does the zero-terminal-SNR step train? Min-SNR weighting with and without the floor.

    python analysis/loss_weighting.py [--steps 300] [--seed 0] [--out results/loss_weighting.json]

Trains the same tiny SINGER (``trainer=cpu_tiny``, same seed, data and noise) twice, once with
each v-prediction loss weight, then measures the *unweighted* v-MSE of each on the held-out
speakers' windows at fixed timesteps (the same noise for both), and the error of the clean
frame each predicts from pure noise at the first DDIM step (t = T−1, SNR = 0):

- ``unfloored``: ``min(SNR, γ)/(SNR + 1)`` (Hang et al.'s min-SNR in x0 terms): 0 at t = T−1;
- ``floored`` (the harness's): ``min(SNR + 1, γ)/(SNR + 1)``: 1 at t = T−1.

It prints a Markdown table; ``docs/metrics.md`` ("Diffusion loss weighting") records the result.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from singer.config import compose
from singer.data.batches import build_datasets, resize_batch
from singer.diffusion import GaussianDiffusion
from singer.inference import load_model
from singer.trainer import train

TIMESTEPS = (999, 950, 900, 700, 400, 100)


def unfloored(self, snr: torch.Tensor) -> torch.Tensor:
    """The weight before the floor: min(SNR, γ)/(SNR + 1) (v-prediction)."""
    return snr.clamp(max=self.min_snr_gamma) / (snr + 1.0)


def train_one(overrides: list[str], out: Path, weighting: str):
    original = GaussianDiffusion.loss_weight
    if weighting == "unfloored":
        GaussianDiffusion.loss_weight = unfloored
    try:
        cfg = compose(overrides)
        result = train(cfg, out / weighting, progress=False)
    finally:
        GaussianDiffusion.loss_weight = original
    return cfg, result


@torch.no_grad()
def measure(cfg, checkpoint: Path, seed: int) -> dict[str, float]:
    """Unweighted v-MSE at each of ``TIMESTEPS`` and the x0 error at t = T−1, held-out windows."""
    loaded = load_model(checkpoint, device="cpu")
    model = loaded.model.eval()
    _, val, _ = build_datasets(cfg)
    items = [val[i] for i in range(min(len(val), 8))]
    batch = resize_batch(torch.utils.data.default_collate(items), cfg.trainer.size)
    x0 = model.codec.encode(batch["video"])
    ref = model.codec.encode_frames(batch["ref"])
    motion = model._motion(batch["motion"])
    keep = torch.ones(x0.shape[0], dtype=torch.bool)
    g = torch.Generator().manual_seed(seed + 7)
    noise = torch.randn(x0.shape, generator=g)
    d = model.diffusion
    out = {}
    for step in TIMESTEPS:
        t = torch.full((x0.shape[0],), step, dtype=torch.long)
        x_t = d.add_noise(x0, noise, t)
        v = model._denoise(x_t, t, batch["audio"], ref, motion, keep, keep)
        out[f"v_mse@t{step}"] = float((v - d.target(x0, noise, t)).pow(2).mean())
        if step == TIMESTEPS[0]:
            # At SNR = 0, x_t is pure noise and the predicted clean frame is -v (v = -x0).
            out["x0_mse@t999"] = float((-v - x0).pow(2).mean())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python analysis/loss_weighting.py", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("runs/loss_weighting"))
    parser.add_argument("--out", type=Path, default=Path("results/loss_weighting.json"))
    parser.add_argument("overrides", nargs="*", help="extra training overrides")
    args = parser.parse_args(argv)
    overrides = [
        "trainer=cpu_tiny",
        f"trainer.steps={args.steps}",
        f"trainer.val_every={args.steps}",
        f"trainer.ckpt_every={args.steps}",
        "trainer.sample_at_end=false",
        "trainer.threads=1",
        f"seed={args.seed}",
        *args.overrides,
    ]
    rows = {}
    for weighting in ("unfloored", "floored"):
        cfg, result = train_one(overrides, args.work, weighting)
        rows[weighting] = measure(cfg, args.work / weighting / "checkpoints" / "last.pt", args.seed)
    keys = list(rows["floored"])
    print("| weighting | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for weighting, values in rows.items():
        print(f"| {weighting} | " + " | ".join(f"{values[k]:.4f}" for k in keys) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"steps": args.steps, "seed": args.seed, "rows": rows}, indent=2) + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
