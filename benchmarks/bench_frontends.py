"""Training-step time and memory of each audio front-end, on the same backbone and batch,
as ratios to the mel front-end.

    python benchmarks/bench_frontends.py                       # CPU-sized defaults
    python benchmarks/bench_frontends.py --device cuda --batch 8 --frames 16 --size 64

A step is forward (loss) + backward + AdamW, as the trainer runs it (bf16 autocast on CUDA).
Variants (all on the chosen backbone; ``+sfm`` adds SINGER's SFM bottleneck to it, the other
variants run the backbone without it):

    mel, raw, msm, sfm, wav2vec2 (random init, frozen encoder), msm+sfm (the paper's SINGER)

Memory is the peak allocated CUDA memory of a step on GPU; on CPU, where torch tracks no
peak, it is the bytes of activations saved for backward (parameters excluded).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import torch  # noqa: E402

from singer.models.spec import count_parameters, get_model_spec  # noqa: E402

VARIANTS = {
    "mel": ["frontend=mel", "backbone.bottleneck_filter=none"],
    "raw": ["frontend=raw", "backbone.bottleneck_filter=none"],
    "msm": ["frontend=msm", "backbone.bottleneck_filter=none"],
    "sfm": ["frontend=sfm", "backbone.bottleneck_filter=none"],
    "wav2vec2": [
        "frontend=wav2vec2",
        "frontend.random_init=true",
        "backbone.bottleneck_filter=none",
    ],
    "msm+sfm": ["frontend=msm", "backbone.bottleneck_filter=sfm"],
}


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--backbone", default="unet3d", help="registered backbone name")
    p.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="comma-separated, from: " + ", ".join(VARIANTS),
    )
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--precision", default="auto", help="auto (bf16 on CUDA) | fp32 | bf16")
    p.add_argument(
        "--override", action="append", default=[], help="extra config override (repeatable)"
    )
    args = p.parse_args(argv)
    device = C.setup(args)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    if "mel" not in names:
        names.insert(0, "mel")  # the reference of every ratio

    result = {
        "benchmark": "bench_frontends",
        "machine": C.machine(device),
        "backbone": args.backbone,
        "settings": {
            "batch": args.batch,
            "frames": args.frames,
            "size": args.size,
            "precision": args.precision,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "overrides": args.override,
        },
    }
    reason = C.backbone_status(args.backbone)
    if reason is not None:
        return C.emit_skipped(result, reason, args.json, variants={})

    base = [
        "trainer=cpu_tiny",
        f"backbone={args.backbone}",
        f"trainer.batch_size={args.batch}",
        f"trainer.num_frames={args.frames}",
        f"trainer.size={args.size}",
    ]
    steps, memory, params = {}, {}, {}
    batch = None
    for name in names:
        cfg = C.compose([*base, *VARIANTS[name], *args.override])
        spec = get_model_spec(cfg.model.name)
        torch.manual_seed(args.seed)
        model = spec.build(cfg).to(device).train()
        if batch is None:
            batch = C.synthetic_batch(
                cfg, args.batch, device, args.seed
            )  # the same batch for every variant
        trainable = [q for q in model.parameters() if q.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=device.type == "cuda")
        generator = torch.Generator(device=device).manual_seed(args.seed + 1)
        params[name] = (count_parameters(model), count_parameters(model, trainable_only=True))

        def loss_of(model=model, spec=spec, generator=generator, batch=batch):
            with C.autocast(device, args.precision):
                return spec.loss(model, batch, generator)[0]

        def step(model=model, optimizer=optimizer, loss_of=loss_of):
            optimizer.zero_grad(set_to_none=True)
            loss_of().backward()
            optimizer.step()

        steps[name] = step
        step()  # allocates optimizer state before memory is measured
        if device.type == "cuda":
            C.sync(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            step()
            C.sync(device)
            memory[name] = torch.cuda.max_memory_allocated(device) - before
        else:
            optimizer.zero_grad(set_to_none=True)
            memory[name] = C.saved_activation_bytes(loss_of, model.parameters())

    times = C.interleaved(steps, repeats=args.repeats, warmup=args.warmup, device=device)
    ref_time, ref_mem = C.median(times["mel"]), memory["mel"]
    memory_kind = "peak_allocated" if device.type == "cuda" else "saved_activations"
    rows, variants = [], {}
    for name in names:
        t = C.median(times[name])
        variants[name] = {
            "step_s": t,
            "step_ratio_to_mel": t / ref_time,
            "spread": C.spread(times[name]),
            "memory_bytes": memory[name],
            "memory_ratio_to_mel": memory[name] / ref_mem if ref_mem else None,
            "params": params[name][0],
            "trainable_params": params[name][1],
            "times_s": times[name],
        }
        rows.append(
            {
                "variant": name,
                "step ms": 1000 * t,
                "× mel": t / ref_time,
                "spread": C.spread(times[name]),
                f"{memory_kind} MB": memory[name] / 2**20,
                "mem × mel": variants[name]["memory_ratio_to_mel"],
                "params (M)": params[name][0] / 1e6,
            }
        )
    result.update(
        status="ok",
        memory_kind=memory_kind,
        variants=variants,
        target={"msm+sfm step_ratio_to_mel": "<= 1.03"},
    )
    if "msm+sfm" in variants:
        result["msm_sfm_step_ratio_to_mel"] = variants["msm+sfm"]["step_ratio_to_mel"]
    C.emit(
        result,
        rows,
        ["variant", "step ms", "× mel", "spread", f"{memory_kind} MB", "mem × mel", "params (M)"],
        args.json,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
