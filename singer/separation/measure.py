"""Measure vocal separators on held-out SynthSing clips with accompaniment (SI-SDR).

    python -m singer.separation.measure --out results/separation \
        [--clips 12 --seed 1000 --seconds 4 --vmr-db 6 0 -6 --music-style mixed \
         --separators none mask_net hdemucs \
         --separator-arg hdemucs:checkpoint=/weights/hdemucs_high.pt --separator-arg hdemucs:sha256=<hex>]

For each voice-to-music ratio it generates (once, under ``OUT/data/``) a SynthSing set with
accompaniment, reads every clip's soundtrack back from its mp4 (AAC, as ``prepare`` does) and
its clean voice from ``vocals/``, runs each separator on the soundtrack, and scores it with the
registered ``si_sdr`` metric. Every separator sees the same clips (a paired comparison); the
improvement over the mixture is per clip. The seed's speakers are new to ``mask_net`` (trained
on a stream of its own) and to any model trained on another seed.

Each SynthSing speaker sings one clip and talks in another, so clips of one speaker are not
independent: the interval resamples speakers (each speaker's clips averaged first), and the
table gives both counts.

Writes ``OUT/separation.json`` (every clip's values and the summary) and ``OUT/separation.md``
(the table: mean and 95 % bootstrap CI over speakers, the numbers of clips and speakers, and the
speed as seconds of audio per second of compute).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.io import wavfile

from singer.data.media import read_audio
from singer.data.synth import generate_dataset
from singer.bootstrap import bootstrap_ci
from singer.registry import METRICS, UnknownNameError
from singer.separation.base import load_separator, parse_separator_args, separate
from singer.weights import MissingWeightsError, WeightsChecksumError


def _dataset(
    root: Path, *, clips: int, seed: int, seconds: float, vmr_db: float, style: str
) -> Path:
    folder = root / f"synthsing-n{clips}-seed{seed}-{seconds:g}s-{style}-vmr{vmr_db:+g}dB"
    if not (folder / ".complete").exists():
        generate_dataset(
            folder,
            clips=clips,
            seed=seed,
            kind="mixed",
            size=32,
            seconds=seconds,
            accompaniment=True,
            vmr_db=vmr_db,
            music_style=style,
            progress=False,
        )
        (folder / ".complete").write_text("")
    return folder


def _clips(folder: Path) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """``(clip_id, speaker_id, mixture S, vocals S)`` of a SynthSing set with accompaniment."""
    out = []
    for line in (folder / "meta.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        mixture = read_audio(
            folder / record["file"], record["sample_rate"], num_samples=record["num_samples"]
        )
        _, vocals = wavfile.read(folder / record["vocals"])
        out.append(
            (record["clip_id"], record["speaker_id"], mixture, np.asarray(vocals, dtype=np.float32))
        )
    return out


def measure(
    out: str | Path,
    *,
    separators: dict[str, dict],
    vmr_levels: list[float],
    clips: int = 12,
    seed: int = 1000,
    seconds: float = 4.0,
    style: str = "mixed",
    bootstrap: int = 1000,
    progress: bool = True,
) -> dict:
    """Score every separator (name → options) at every level; return (and write) the results."""
    out = Path(out)
    for name, args in separators.items():  # fail on a bad name or a missing file before any work
        if name != "none":
            load_separator(name, args)
    rows, per_clip = [], {}
    for vmr in vmr_levels:
        folder = _dataset(
            out / "data", clips=clips, seed=seed, seconds=seconds, vmr_db=vmr, style=style
        )
        data = _clips(folder)
        for name, args in separators.items():
            metric = METRICS.build("si_sdr")
            elapsed, audio_seconds = 0.0, 0.0
            for _, _, mixture, vocals in data:
                start = time.perf_counter()
                estimate = separate(mixture, name, args, sample_rate=16000)
                elapsed += time.perf_counter() - start
                audio_seconds += len(mixture) / 16000
                metric.update_audio(
                    torch.from_numpy(estimate)[None],
                    torch.from_numpy(vocals)[None],
                    torch.from_numpy(mixture)[None],
                )
            values = metric.per_clip()
            speakers = [speaker for _, speaker, _, _ in data]
            per_clip[f"{vmr:+g}dB/{name}"] = {
                "clips": [clip_id for clip_id, _, _, _ in data],
                "speakers": speakers,
                **values,
            }
            row = {
                "vmr_db": vmr,
                "separator": name,
                "clips": len(data),
                "speakers": len(set(speakers)),
            }
            for key in values:
                est, lo, hi = bootstrap_ci(_per_speaker(values[key], speakers), n=bootstrap)
                short = key.split("/")[-1]
                row.update({short: est, f"{short}_ci": [lo, hi]})
            row["realtime"] = audio_seconds / max(elapsed, 1e-9)
            rows.append(row)
            if progress:
                print(
                    f"vmr {vmr:+g} dB  {name:10s} SI-SDR {row['si_sdr']:6.2f} dB  "
                    f"improvement {row['si_sdr_improvement']:+6.2f} dB",
                    file=sys.stderr,
                )
    result = {
        "settings": {
            "clips": clips,
            "seed": seed,
            "seconds": seconds,
            "music_style": style,
            "vmr_db": list(vmr_levels),
            "separators": separators,
            "bootstrap": bootstrap,
        },
        "rows": rows,
        "per_clip": per_clip,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "separation.json").write_text(json.dumps(_finite(result), indent=1), encoding="utf-8")
    (out / "separation.md").write_text(format_table(rows), encoding="utf-8")
    return result


def _per_speaker(values: list[float], speakers: list[str]) -> list[float]:
    """The mean of each speaker's clips (NaNs left out), one value per speaker."""
    by: dict[str, list[float]] = {}
    for value, speaker in zip(values, speakers, strict=True):
        if np.isfinite(value):
            by.setdefault(speaker, []).append(value)
    return [float(np.mean(v)) for v in by.values()]


def _finite(node):
    """JSON has no NaN: undefined values become null."""
    if isinstance(node, float):
        return node if np.isfinite(node) else None
    if isinstance(node, dict):
        return {k: _finite(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_finite(v) for v in node]
    return node


def format_table(rows: list[dict]) -> str:
    """Markdown table: one row per (level, separator), mean [95 % CI over speakers]."""

    def cell(row: dict, key: str, signed: bool = False) -> str:
        lo, hi = row[f"{key}_ci"]
        fmt = "{:+.2f}" if signed else "{:.2f}"
        return f"{fmt.format(row[key])} [{fmt.format(lo)}, {fmt.format(hi)}]"

    lines = [
        "| voice-to-music (dB) | separator | SI-SDR of the mixture (dB) | SI-SDR (dB) | improvement (dB) | clips (speakers) | × real time |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['vmr_db']:+g} | {row['separator']} | {cell(row, 'si_sdr_mixture')} | "
            f"{cell(row, 'si_sdr')} | {cell(row, 'si_sdr_improvement', True)} | "
            f"{row['clips']} ({row['speakers']}) | "
            f"{row['realtime']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m singer.separation.measure",
        description="SI-SDR of vocal separators on held-out SynthSing clips with accompaniment.",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (data/ is kept there)")
    p.add_argument("--separators", nargs="+", default=["none", "mask_net"])
    p.add_argument(
        "--separator-arg",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE",
        help="an option of one separator, e.g. hdemucs:checkpoint=/weights/hdemucs_high.pt",
    )
    p.add_argument("--vmr-db", type=float, nargs="+", default=[6.0, 0.0, -6.0])
    p.add_argument("--clips", type=int, default=12)
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--music-style", default="mixed", choices=("pop", "ballad", "dance", "mixed"))
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    options: dict[str, list[str]] = {name: [] for name in args.separators}
    for item in args.separator_arg:
        name, sep, rest = item.partition(":")
        if not sep or name not in options:
            p.error(
                f"--separator-arg {item!r}: write NAME:KEY=VALUE with NAME one of {args.separators}"
            )
        options[name].append(rest)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        separators = {name: parse_separator_args(items) for name, items in options.items()}
        result = measure(
            args.out,
            separators=separators,
            vmr_levels=args.vmr_db,
            clips=args.clips,
            seed=args.seed,
            seconds=args.seconds,
            style=args.music_style,
            bootstrap=args.bootstrap,
        )
    except (UnknownNameError, ValueError, MissingWeightsError, WeightsChecksumError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(result["rows"]), end="")
    print(f"wrote {args.out / 'separation.json'} and {args.out / 'separation.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
