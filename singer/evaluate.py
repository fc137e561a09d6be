"""``python -m singer.evaluate CHECKPOINT_OR_RUN_DIR_OR_RUN_ID`` — metrics under a fixed protocol.

    python -m singer.evaluate runs/x                          # default protocol, val split
    python -m singer.evaluate runs/x --seeds 0 1 2 --set steps=20 --set num_clips=16
    python -m singer.evaluate <mlflow run id> --bands --probes --out results/x

Writes ``<out>/metrics.json`` and logs ``eval/*`` into the checkpoint's MLflow run. Exit status
2 for a problem with the request (missing checkpoint or weights, non-generative model, unknown
metric, bad protocol). The logic lives in :mod:`singer.evaluation`.
"""

from __future__ import annotations

import argparse
import math
import sys

from singer.cli import entry_point, fail


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m singer.evaluate", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "target",
        help="checkpoint .pt, run directory, or MLflow run id (resolved via its out_dir tag)",
    )
    parser.add_argument("--split", choices=("val", "train", "all"), default="val")
    parser.add_argument(
        "--data-cache", help="a prepared clip cache (default: the checkpoint's data config)"
    )
    parser.add_argument(
        "--protocol", help="a YAML file overriding singer/conf/evaluate/default.yaml"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one protocol key (repeatable), e.g. --set steps=20",
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", help="generation seeds (overrides the protocol's)"
    )
    parser.add_argument("--bands", action="store_true", help="run the frequency-band ablation")
    parser.add_argument(
        "--probes", action="store_true", help="run the ridge probes of the audio front-end(s)"
    )
    parser.add_argument("--out", help="output directory (default: <run dir>/eval/<protocol hash>)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def _user_errors() -> tuple[type[BaseException], ...]:
    from singer.evaluation import EvaluationError, ProtocolError
    from singer.evaluation.probes import ProbeError
    from singer.registry import UnknownNameError
    from singer.weights import MissingWeightsError, WeightsChecksumError

    return (
        EvaluationError,
        ProtocolError,
        ProbeError,
        UnknownNameError,
        MissingWeightsError,
        WeightsChecksumError,
    )


@entry_point
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from singer.evaluation import evaluate_checkpoint, load_protocol

    try:
        protocol = load_protocol(args.protocol, args.overrides)
        result = evaluate_checkpoint(
            args.target,
            protocol=protocol,
            split=args.split,
            data_cache=args.data_cache,
            seeds=args.seeds,
            bands=args.bands,
            probes=args.probes,
            out_dir=args.out,
            log_mlflow=not args.no_mlflow,
            device=args.device,
            progress=not args.no_progress,
        )
    except _user_errors() as err:
        return fail(err)
    print(
        f"{result.model} step {result.step}, protocol {result.protocol_hash}, {len(result.clip_ids)} clips "
        f"({result.split}), seeds {result.protocol.seeds}"
    )
    width = max((len(k) for k in result.metrics), default=0)
    for key, value in result.metrics.items():
        lo, hi = result.ci.get(key, (math.nan, math.nan))
        interval = f"  [{lo:.4g}, {hi:.4g}]" if math.isfinite(lo) else ""
        print(f"  {key.ljust(width)}  {value:.4g}{interval}")
    for name, error in result.probe_errors.items():
        print(f"  probe of '{name}' skipped: {error}", file=sys.stderr)
    print(
        f"wrote {result.path}"
        + (f"; logged to MLflow run {result.run_id}" if not args.no_mlflow else "")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
