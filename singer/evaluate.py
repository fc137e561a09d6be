"""``python -m singer.evaluate`` — metrics under a fixed protocol, with CIs over held-out speakers.

    python -m singer.evaluate runs/x                          # a checkpoint: default protocol, val split
    python -m singer.evaluate runs/x --seeds 0 1 2 --set steps=20 --set num_clips=16
    python -m singer.evaluate <mlflow run id> --bands --probes --out results/x
    python -m singer.evaluate videos GEN_DIR --truth DATA_DIR --out OUT_DIR [--reencode 18 28]

A checkpoint is evaluated on its held-out speakers with its true audio and, as controls, with
another held-out speaker's audio and with silence (``audio_effect/<cue>``: what the audio adds to
the motion). ``videos`` scores any system's mp4s (one per truth clip, ``<clip stem>.mp4``) with
the same protocol. Both write ``<out>/metrics.json`` and log ``eval/*`` to MLflow. Exit status 2
for a problem with the request (missing checkpoint, folder or weights, non-generative model,
unknown metric, bad protocol). The logic lives in :mod:`singer.evaluation`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from singer.cli import UserError, entry_point, fail
from singer.registry import UnknownNameError


def _common(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    parser.add_argument("--no-progress", action="store_true")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m singer.evaluate", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "target",
        help="checkpoint .pt, run directory, or MLflow run id (resolved via its out_dir tag); "
        "or `videos` to score a folder of generated mp4s (python -m singer.evaluate videos -h)",
    )
    parser.add_argument("--split", choices=("val", "test", "train", "all"), default="val")
    parser.add_argument(
        "--data-cache", help="a prepared clip cache (default: the checkpoint's data config)"
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", help="generation seeds (overrides the protocol's)"
    )
    parser.add_argument("--bands", action="store_true", help="run the frequency-band ablation")
    parser.add_argument(
        "--probes", action="store_true", help="run the ridge probes of the audio front-end(s)"
    )
    parser.add_argument("--out", help="output directory (default: <run dir>/eval/<protocol hash>)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    _common(parser)
    return parser.parse_args(argv)


def parse_videos_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m singer.evaluate videos",
        description="Score any system's videos (one <clip stem>.mp4 per truth clip) with the "
        "harness's protocol; audio-dependent metrics use each mp4's own audio track.",
    )
    parser.add_argument("gen_dir", type=Path, help="folder of generated mp4s")
    parser.add_argument(
        "--truth",
        required=True,
        type=Path,
        help="a SynthSing folder (meta.jsonl + clips/) or a prepared cache (index.jsonl)",
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument(
        "--reencode",
        type=int,
        nargs="+",
        default=[],
        metavar="CRF",
        help="also re-encode every video as H.264 at these CRFs and report how far each metric moves",
    )
    parser.add_argument(
        "--length-tolerance",
        type=int,
        default=1,
        help="frames a video may differ from its truth clip in length (default 1)",
    )
    parser.add_argument(
        "--experiment", default="evaluate-videos", help="MLflow experiment to log into"
    )
    _common(parser)
    return parser.parse_args(argv)


def _user_errors() -> tuple[type[BaseException], ...]:
    # lazy: start-up: these modules load torch (seconds), which `--help` does without
    from singer.evaluation import EvaluationError, ProtocolError
    from singer.evaluation.probes import ProbeError
    from singer.weights import MissingWeightsError, WeightsChecksumError

    return (
        EvaluationError,
        ProtocolError,
        ProbeError,
        UnknownNameError,
        MissingWeightsError,
        WeightsChecksumError,
    )


def print_result(result) -> None:
    """Every value with its interval and unit count; the audio controls with their verdicts."""
    units = len(set(result.unit_of_clip.values()))
    print(
        f"{result.model} step {result.step}, protocol {result.protocol_hash}: "
        f"{len(result.clip_ids)} clips of {units} speakers ({result.split}, {result.windows} windows), "
        f"seeds {result.protocol.seeds}"
    )
    width = max((len(k) for k in result.metrics), default=0)
    effects = [k for k in result.metrics if k.startswith("audio_effect")]
    for key in result.metrics:
        if key in effects:
            continue
        interval = result.interval(key)
        print(f"  {key.ljust(width)}  {interval.format(4)}")
    if effects:
        print(
            "audio control (true audio − another speaker's audio / silence; resolved = CI excludes 0):"
        )
        for key in effects:
            interval = result.interval(key)
            print(f"  {key.ljust(width)}  {interval.format(4)}  {interval.verdict}")
    for note in result.notes:
        print(f"  note: {note}", file=sys.stderr)
    for name, error in result.probe_errors.items():
        print(f"  probe of '{name}' skipped: {error}", file=sys.stderr)


def videos_main(argv: list[str]) -> int:
    args = parse_videos_args(argv)
    # lazy: start-up: the evaluation package loads torch (seconds), which `--help` does without
    from singer.evaluation import load_protocol
    from singer.evaluation.runner import log_to_mlflow, write_outputs
    from singer.evaluation.videos import evaluate_videos

    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out} is a file", "give a folder for metrics.json")
    try:
        protocol = load_protocol(args.protocol, args.overrides)
        result, files = evaluate_videos(
            args.gen_dir,
            args.truth,
            protocol=protocol,
            reencode_crfs=tuple(args.reencode),
            length_tolerance=args.length_tolerance,
            progress=not args.no_progress,
        )
    except _user_errors() as err:
        return fail(err)
    for line in files:
        if line["status"] != "ok":
            print(f"{line['file']}: {line['status']} — {line['reason']}", file=sys.stderr)
    print_result(result)
    written = write_outputs(result, args.out)
    if not args.no_mlflow:
        result.run_id = log_to_mlflow(result, written, uri=None, experiment=args.experiment)
        write_outputs(result, args.out)
    print(
        f"wrote {result.path}"
        + (f"; logged to MLflow run {result.run_id}" if not args.no_mlflow else "")
    )
    return 0


@entry_point
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "videos":
        return videos_main(argv[1:])
    args = parse_args(argv)
    # lazy: start-up: the evaluation package loads torch (seconds), which `--help` does without
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
    print_result(result)
    print(
        f"wrote {result.path}"
        + (f"; logged to MLflow run {result.run_id}" if not args.no_mlflow else "")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
