"""``python -m singer.params [OVERRIDES...]`` — a model's parameter count, by config.

    python -m singer.params model=hallo backbone.channels=[16,32,64]
    python -m singer.params model=wav2lip trainer=cpu_tiny --json

Builds the model the overrides compose (no data, no training) and prints its trainable and total
parameter counts, per top-level submodule. Baselines are compared at matched size with it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from torch import nn

from singer.cli import entry_point
from singer.config import compose
from singer.models.spec import count_parameters, get_model_spec


def parameter_counts(model: nn.Module) -> dict:
    """``{"trainable": n, "total": n, "parts": {child: {"trainable": n, "total": n}}}``."""
    parts = {
        name: {
            "trainable": count_parameters(child, trainable_only=True),
            "total": count_parameters(child),
        }
        for name, child in model.named_children()
    }
    return {
        "trainable": count_parameters(model, trainable_only=True),
        "total": count_parameters(model),
        "parts": parts,
    }


def count_for(overrides: Sequence[str]) -> dict:
    """Parameter counts of the model that ``overrides`` compose (``model.name`` included)."""
    cfg = compose(list(overrides))
    counts = parameter_counts(get_model_spec(cfg.model.name).build(cfg))
    return {"model": str(cfg.model.name), **counts}


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m singer.params", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides, as for python -m singer.train"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    counts = count_for(args.overrides)
    if args.json:
        print(json.dumps(counts, indent=2))
        return 0
    print(
        f"{counts['model']}: {counts['trainable']:,} trainable / {counts['total']:,} total parameters"
    )
    for name, part in counts["parts"].items():
        print(f"  {name:<16} {part['trainable']:>12,} trainable / {part['total']:>12,} total")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
