"""``python -m singer.sweep SWEEP.yaml``: run a sweep (Optuna picks, submitit runs, MLflow records).

Examples:
    python -m singer.sweep sweeps/spectral_scales.yaml --dry-run     # list the jobs, launch nothing
    python -m singer.sweep sweeps/spectral_scales.yaml               # run it (sweeps_out/spectral_scales/)
    python -m singer.sweep sweeps/spectral_scales.yaml --resume      # continue after a crash or Ctrl-C
    python -m singer.sweep sweeps/hparam_search.yaml --launcher slurm:gpu1 \\
        --storage postgresql+psycopg://user@db-host/optuna

The file format is in ``sweeps/README.md``; the logic in ``singer/sweeps/``. Errors follow
the project's convention (singer/cli.py): one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from rich.console import Console

from singer.cli import entry_point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m singer.sweep",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("sweep", help="the sweep file (YAML; format in sweeps/README.md)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the sweep in its output dir: finished trials stay, running ones are adopted",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="validate and print the planned trials; launch nothing",
    )
    parser.add_argument(
        "--launcher", help="debug | local | slurm:<profile> (overrides the file's launcher)"
    )
    parser.add_argument(
        "--storage",
        help="Optuna storage: an RDB URL (postgresql+psycopg://..., sqlite:///...) or a "
        "journal file path (default: <out>/optuna.journal)",
    )
    parser.add_argument("--out", help="output dir (default: sweeps_out/<name>)")
    parser.add_argument(
        "--max-trials", type=int, help="run at most this many trials (configurations)"
    )
    parser.add_argument(
        "--poll", type=float, default=2.0, help="seconds between job status checks (default 2)"
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no live progress bar (log lines only)"
    )
    return parser


@entry_point
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()

    # lazy: start-up: the sweep driver loads submitit, Hydra and OmegaConf (half a second on a
    # busy laptop), which `--help` does without
    from singer.sweeps.driver import SweepDriver, describe_plan
    from singer.sweeps.spec import SweepSpecError, check_launcher, load_sweep

    spec = load_sweep(args.sweep)
    if args.launcher:
        check_launcher(args.sweep, "--launcher", args.launcher, spec.timeout_min)
    if args.max_trials is not None and args.max_trials < 1:
        raise SweepSpecError(f"--max-trials must be >= 1, got {args.max_trials}", "give N >= 1")

    if args.dry_run:
        for line in describe_plan(spec, args.launcher, args.max_trials):
            console.print(line, highlight=False, soft_wrap=True, markup=False)
        console.print("dry run: nothing launched", style="dim")
        return 0

    # `kill <pid>` (SIGTERM) stops the driver like Ctrl-C: state saved, parent run ended KILLED.
    # Its jobs keep running; --resume adopts them.
    def stop(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, stop)
    # The driver unpickles the jobs' result files from the sweep folder, so nothing it writes
    # there may be writable by group or others, whatever the user's umask.
    os.umask(os.umask(0o022) | 0o022)
    driver = SweepDriver(
        spec,
        out_dir=args.out,
        storage=args.storage,
        launcher=args.launcher,
        resume=args.resume,
        max_trials=args.max_trials,
        poll_s=args.poll,
        console=console,
        progress=not args.no_progress,
    )
    try:
        driver.run()
    except KeyboardInterrupt:
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
