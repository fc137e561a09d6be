"""Training the ``mask_net`` separator on SynthSing voices under SynthSing music beds.

    python -m singer.separation.train --out runs/mask_net.pt [--steps 400 --pairs 48 --seed 0]

The data and the recipe are described in :func:`singer.separation.mask_net.train_mask_net`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from singer.separation.mask_net import Recipe, train_mask_net


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
