"""Data throughput: the cached-clip loader against the trainer's consumption, and decord
against PyAV decoding the same mp4 files.

    python benchmarks/bench_data.py                      # SynthSing, cpu_tiny settings
    python benchmarks/bench_data.py --workers 4 --device cuda --batch 8 --frames 16 --size 64
    python benchmarks/bench_data.py --cache-dir cache/my_videos --videos my_videos/

loader:  batches/s of the trainer's own DataLoader (``ClipDataset`` over the prepared cache,
         ``BatchStream`` sampler, ``--workers`` processes), iterated alone.
trainer: training steps/s of ``Trainer.train_step`` on a batch of the same shape.
         The ratio loader / trainer says how far ahead of the trainer the loader is
         (target ≥ 3: data loading never limits training).
decode:  frames/s decoding every frame of the same mp4 files with decord (``VideoReader``)
         and with PyAV (``container.decode``), alternating file by file.

The SynthSing set (or ``--cache-dir`` and ``--videos``) is generated on first use.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import av  # noqa: E402
import decord  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from singer.data.batches import BatchStream, build_datasets, resize_batch, to_device  # noqa: E402
from singer.trainer import Trainer  # noqa: E402


def decode_decord(path: Path) -> int:
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
    frames = reader.get_batch(list(range(len(reader)))).asnumpy()
    del reader
    return int(frames.shape[0])


def decode_pyav(path: Path) -> int:
    count = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            frame.to_ndarray(format="rgb24")
            count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=32, help="trainer.size: the clip cache's frame size")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (cpu_tiny: 0)")
    p.add_argument(
        "--batches", type=int, default=8, help="loader batches and trainer steps per timed round"
    )
    p.add_argument("--clips", type=int, default=6, help="SynthSing clips (when no --cache-dir)")
    p.add_argument(
        "--seconds", type=float, default=2.0, help="SynthSing clip length (when no --cache-dir)"
    )
    p.add_argument(
        "--data-root", default=None, help="SynthSing root (default: the config's data.root)"
    )
    p.add_argument("--cache-dir", default=None, help="a prepared clip cache instead of SynthSing")
    p.add_argument(
        "--videos",
        default=None,
        help="folder of mp4 files to decode (default: SynthSing's raw clips)",
    )
    p.add_argument("--backbone", default="unet3d")
    p.add_argument("--frontend", default="msm")
    p.add_argument(
        "--override", action="append", default=[], help="extra config override (repeatable)"
    )
    args = p.parse_args(argv)
    device = C.setup(args)
    settings = {
        k: getattr(args, k)
        for k in (
            "batch",
            "frames",
            "size",
            "workers",
            "batches",
            "clips",
            "seconds",
            "backbone",
            "frontend",
            "warmup",
            "repeats",
        )
    }
    result = {"benchmark": "bench_data", "machine": C.machine(device), "settings": settings}

    overrides = [
        "trainer=cpu_tiny",
        f"backbone={args.backbone}",
        f"frontend={args.frontend}",
        f"trainer.batch_size={args.batch}",
        f"trainer.num_frames={args.frames}",
        f"trainer.size={args.size}",
        f"trainer.num_workers={args.workers}",
        f"device={device}",
        f"seed={args.seed}",
        f"data.synth.clips={args.clips}",
        f"data.synth.seconds={args.seconds}",
        *args.override,
    ]
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    if args.cache_dir:
        overrides.append(f"data.cache_dir={args.cache_dir}")
    cfg = C.compose(overrides)
    train_set, _, cache = build_datasets(cfg)
    result["cache"] = str(cache)

    # -- loader vs trainer ----------------------------------------------------------------------
    stream = BatchStream(len(train_set), args.batch, args.seed)
    loader = DataLoader(
        train_set,
        batch_sampler=stream,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
        pin_memory=device.type == "cuda",
    )
    batches = iter(loader)
    first = next(batches)
    with tempfile.TemporaryDirectory() as out_dir:
        trainer = Trainer(cfg, out_dir, progress=False)
        trainer._setup()
        trainer.model.train()

        batch = to_device(resize_batch(first, args.size), device)

        def load():
            for _ in range(args.batches):
                next(batches)

        def train():
            for _ in range(args.batches):
                trainer.train_step(batch)

        times = C.interleaved(
            {"loader": load, "trainer": train},
            repeats=args.repeats,
            warmup=args.warmup,
            device=device,
        )
    loader_rate = args.batches / C.median(times["loader"])
    trainer_rate = args.batches / C.median(times["trainer"])
    result["loader"] = {
        "batches_per_s": loader_rate,
        "clips_per_s": loader_rate * args.batch,
        "spread": C.spread(times["loader"]),
        "times_s": times["loader"],
    }
    result["trainer"] = {
        "steps_per_s": trainer_rate,
        "spread": C.spread(times["trainer"]),
        "times_s": times["trainer"],
    }
    result["loader_over_consumption"] = loader_rate / trainer_rate
    result["target"] = {"loader_over_consumption": ">= 3"}

    # -- decord vs PyAV ---------------------------------------------------------------------------
    videos_dir = Path(args.videos) if args.videos else Path(cache).parent / "raw"
    files = sorted(videos_dir.rglob("*.mp4"))
    decode: dict = {"files": len(files), "folder": str(videos_dir)}
    if files:
        frame_counts: dict[str, int] = {}

        def over_files(fn, name):
            def run():
                frame_counts[name] = sum(fn(f) for f in files)

            return run

        dtimes = C.interleaved(
            {
                "decord": over_files(decode_decord, "decord"),
                "pyav": over_files(decode_pyav, "pyav"),
            },
            repeats=args.repeats,
            warmup=1,
            device=torch.device("cpu"),
        )
        for name in ("decord", "pyav"):
            decode[name] = {
                "frames": frame_counts[name],
                "frames_per_s": frame_counts[name] / C.median(dtimes[name]),
                "spread": C.spread(dtimes[name]),
                "times_s": dtimes[name],
            }
        decode["decord_over_pyav"] = (
            decode["decord"]["frames_per_s"] / decode["pyav"]["frames_per_s"]
        )
    result["decode"] = decode
    result["status"] = "ok"

    rows = [
        {
            "what": f"loader ({args.workers} workers)",
            "rate": loader_rate,
            "unit": "batches/s",
            "ratio": result["loader_over_consumption"],
            "ratio of": "loader / trainer",
        },
        {
            "what": "trainer consumption",
            "rate": trainer_rate,
            "unit": "steps/s",
            "ratio": 1.0,
            "ratio of": "",
        },
    ]
    if files:
        rows += [
            {
                "what": f"decord decode ({len(files)} files)",
                "rate": decode["decord"]["frames_per_s"],
                "unit": "frames/s",
                "ratio": decode["decord_over_pyav"],
                "ratio of": "decord / PyAV",
            },
            {
                "what": f"PyAV decode ({len(files)} files)",
                "rate": decode["pyav"]["frames_per_s"],
                "unit": "frames/s",
                "ratio": 1.0,
                "ratio of": "",
            },
        ]
    C.emit(result, rows, ["what", "rate", "unit", "ratio", "ratio of"], args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
