"""Generation cost: seconds of compute per second of 25-fps video, per backbone.

    python benchmarks/bench_generate.py                                   # CPU: 64², unet3d (+ dit if registered)
    python benchmarks/bench_generate.py --device cuda --size 256          # GPU: 256²
    python benchmarks/bench_generate.py --device cuda --size 256 --codec tiny_ae --override codec.checkpoint=...

One clip of ``--frames`` frames is sampled with DDIM (``--steps``, default 25) and
classifier-free guidance (``--guidance``, default 3.5: two denoiser passes per step), from a
random reference frame and audio, with untrained weights (the cost does not depend on them).
bf16 autocast on CUDA. Backbones that are not registered yet are reported as skipped.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import torch  # noqa: E402

from singer.models.spec import Conditions, count_parameters, get_model_spec  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.splitlines()[0])
    p.set_defaults(warmup=1, repeats=3)
    p.add_argument(
        "--backbones", default="unet3d,dit", help="comma-separated registered backbone names"
    )
    p.add_argument("--frontend", default="msm")
    p.add_argument("--codec", default="identity")
    p.add_argument(
        "--size", type=int, default=None, help="frame size (default: 64 on CPU, 256 on GPU)"
    )
    p.add_argument("--frames", type=int, default=8, help="frames per generated clip")
    p.add_argument("--fps", type=float, default=25.0)
    p.add_argument("--steps", type=int, default=25, help="DDIM steps")
    p.add_argument(
        "--guidance", type=float, default=3.5, help="CFG scale (1.0: no unconditional pass)"
    )
    p.add_argument("--precision", default="auto", help="auto (bf16 on CUDA) | fp32 | bf16")
    p.add_argument(
        "--override", action="append", default=[], help="extra config override (repeatable)"
    )
    args = p.parse_args(argv)
    device = C.setup(args)
    size = args.size or (256 if device.type == "cuda" else 64)
    result = {
        "benchmark": "bench_generate",
        "machine": C.machine(device),
        "settings": {
            "size": size,
            "frames": args.frames,
            "fps": args.fps,
            "steps": args.steps,
            "guidance": args.guidance,
            "frontend": args.frontend,
            "codec": args.codec,
            "precision": args.precision,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "overrides": args.override,
        },
    }

    names = [b.strip() for b in args.backbones.split(",") if b.strip()]
    backbones, rows, candidates, built = {}, [], {}, {}
    video_seconds = args.frames / args.fps
    for name in names:
        reason = C.backbone_status(name)
        if reason is not None:
            backbones[name] = {"status": "skipped", "reason": reason}
            rows.append({"backbone": name, "status": "skipped: not available"})
            continue
        cfg = C.compose(
            [
                "trainer=cpu_tiny",
                f"backbone={name}",
                f"frontend={args.frontend}",
                f"codec={args.codec}",
                f"trainer.num_frames={args.frames}",
                f"trainer.size={size}",
                f"data.fps={args.fps}",
                *args.override,
            ]
        )
        spec = get_model_spec(cfg.model.name)
        torch.manual_seed(args.seed)
        model = spec.build(cfg).to(device).eval()
        batch = C.synthetic_batch(cfg, 1, device, args.seed)
        conditions = Conditions(
            audio=batch["audio"], ref=batch["ref"], num_frames=args.frames, motion=batch["motion"]
        )

        def generate(model=model, spec=spec, conditions=conditions):
            generator = torch.Generator(device=device).manual_seed(args.seed)
            with torch.inference_mode(), C.autocast(device, args.precision):
                video = spec.sample(
                    model,
                    conditions,
                    steps=args.steps,
                    guidance_scale=args.guidance,
                    generator=generator,
                )
            assert video.shape[2] == args.frames

        candidates[name] = generate
        built[name] = count_parameters(model)

    if candidates:
        times = C.interleaved(candidates, repeats=args.repeats, warmup=args.warmup, device=device)
        for name in candidates:
            t = C.median(times[name])
            backbones[name] = {
                "status": "ok",
                "clip_s": t,
                "compute_s_per_video_s": t / video_seconds,
                "video_s": video_seconds,
                "params": built[name],
                "spread": C.spread(times[name]),
                "times_s": times[name],
            }
            rows.append(
                {
                    "backbone": name,
                    "status": "ok",
                    "s per clip": t,
                    "clip (s of video)": video_seconds,
                    "compute s / video s": t / video_seconds,
                    "spread": C.spread(times[name]),
                    "params (M)": built[name] / 1e6,
                }
            )
    result.update(
        status="ok" if candidates else "skipped",
        size=size,
        backbones=backbones,
        target={"compute_s_per_video_s at 256² on GPU": "<= 1"},
    )
    C.emit(
        result,
        rows,
        [
            "backbone",
            "status",
            "s per clip",
            "clip (s of video)",
            "compute s / video s",
            "spread",
            "params (M)",
        ],
        args.json,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
