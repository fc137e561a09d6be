"""The harness's training step against a bare PyTorch loop, on the same model and batch.

    python benchmarks/bench_trainer.py                          # CPU-sized defaults
    python benchmarks/bench_trainer.py --device cuda --batch 8 --frames 16 --size 64

harness: ``Trainer.train_step`` — the step ``python -m singer.train`` runs: autocast and the
         SDPA kernel choice, the loss averaged over ranks and checked for NaN, backward,
         gradient clipping, AdamW, the LR schedule and the EMA update.
bare:    ``loss = spec.loss(model, batch, generator)``; ``zero_grad``; ``backward``; AdamW —
         the same autocast and the same (fused on CUDA) AdamW.

The ratio harness / bare is the harness's overhead per step (target ≤ 1.05). Both steps
start from the same weights; ``--override trainer.X=...`` applies to both models (e.g.
``trainer.channels_last=true``), switches that only the harness has (compile) to the harness.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import torch  # noqa: E402

from singer.trainer import Trainer  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--backbone", default="unet3d", help="registered backbone name")
    p.add_argument("--frontend", default="msm")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=32)
    p.add_argument(
        "--override", action="append", default=[], help="extra config override (repeatable)"
    )
    args = p.parse_args(argv)
    device = C.setup(args)
    result = {
        "benchmark": "bench_trainer",
        "machine": C.machine(device),
        "backbone": args.backbone,
        "settings": {
            "frontend": args.frontend,
            "batch": args.batch,
            "frames": args.frames,
            "size": args.size,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "overrides": args.override,
        },
    }
    reason = C.backbone_status(args.backbone)
    if reason is not None:
        return C.emit_skipped(result, reason, args.json)

    cfg = C.compose(
        [
            "trainer=cpu_tiny",
            f"backbone={args.backbone}",
            f"frontend={args.frontend}",
            f"trainer.batch_size={args.batch}",
            f"trainer.num_frames={args.frames}",
            f"trainer.size={args.size}",
            f"device={device}",
            f"seed={args.seed}",
            *(["trainer.threads=" + str(args.threads)] if args.threads else []),
            *args.override,
        ]
    )
    with tempfile.TemporaryDirectory() as out_dir:
        trainer = Trainer(cfg, out_dir, progress=False)
        trainer._setup()  # model, EMA, optimizer, schedule, generators; writes nothing
        trainer.model.train()
        batch = C.synthetic_batch(cfg, args.batch, device, args.seed)

        # The bare loop: the same architecture and initial weights, plain PyTorch.
        spec = trainer.spec
        torch.manual_seed(args.seed)
        model = spec.build(cfg).to(device).train()
        model.load_state_dict(trainer.model.state_dict())
        if cfg.trainer.get("channels_last", False):
            model.to(memory_format=torch.channels_last)
        trainable = [q for q in model.parameters() if q.requires_grad]
        tc = cfg.trainer
        optimizer = torch.optim.AdamW(
            trainable,
            lr=tc.lr,
            betas=tuple(tc.betas),
            weight_decay=tc.weight_decay,
            fused=trainer.optimizer.defaults.get("fused"),
        )
        generator = torch.Generator(device=trainer.noise_gen.device).manual_seed(args.seed + 1)
        amp = trainer.amp_dtype

        def bare():
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                loss, _ = spec.loss(model, batch, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        def harness():
            trainer.train_step(batch)

        times = C.interleaved(
            {"harness": harness, "bare": bare},
            repeats=args.repeats,
            warmup=args.warmup,
            device=device,
        )
    h, b = C.median(times["harness"]), C.median(times["bare"])
    result.update(
        status="ok",
        harness_step_s=h,
        bare_step_s=b,
        ratio=h / b,
        target="ratio <= 1.05",
        spread={k: C.spread(v) for k, v in times.items()},
        times_s=times,
        compile_status=trainer.compile_status,
    )
    rows = [
        {
            "loop": "harness (Trainer.train_step)",
            "step ms": 1000 * h,
            "× bare": h / b,
            "spread": C.spread(times["harness"]),
        },
        {
            "loop": "bare PyTorch",
            "step ms": 1000 * b,
            "× bare": 1.0,
            "spread": C.spread(times["bare"]),
        },
    ]
    C.emit(result, rows, ["loop", "step ms", "× bare", "spread"], args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
