"""Model FLOPs utilisation (MFU) of a backbone's training step on a GPU.

    python benchmarks/bench_mfu.py --backbone dit --preset dit-b2  # latent 4×16×32×32 (256² video), batch 8
    python benchmarks/bench_mfu.py --backbone unet3d --compile --batch 16
    python benchmarks/bench_mfu.py --peak-tflops 312              # a GPU missing from PEAK_BF16_TFLOPS

MFU = (FLOPs of one training step) / (step time) / (the GPU's peak dense bf16 FLOP/s).

FLOPs are counted once with ``torch.utils.flop_counter.FlopCounterMode`` over forward +
backward of the backbone alone (matmuls, convolutions, attention; element-wise work is not
counted, as usual for MFU). The step — forward, MSE loss, backward, fused AdamW — is timed
under bf16 autocast (``--compile``: the backbone's forward compiled, as
``trainer.compile=true``). Front-end, codec and sampler are outside the measured step: the
input is the latent a codec would give (``--channels``×``--frames``×``--latent``², default
4×16×32×32, i.e. 256² frames through an 8× VAE), plus random audio tokens and reference.

Needs CUDA: without it the script says so and exits with status 0 (nothing measured).
``--device cpu --peak-tflops N`` runs the same code on CPU, only to check it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from singer.models.singer import _kwargs  # noqa: E402
from singer.registry import BACKBONES  # noqa: E402

# Peak dense (no sparsity) bf16 tensor-core throughput, TFLOP/s, from the vendors' data sheets.
# Matched against torch.cuda.get_device_name() by substring, first match wins.
PEAK_BF16_TFLOPS = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM
    ("A100", 312.0),
    ("L40S", 362.0),
)

# Backbone sizes for MFU runs (config overrides); "config" keeps singer/conf/backbone/<name>.yaml,
# whose defaults are tiny CPU models that cannot fill a GPU.
PRESETS = {
    "config": [],
    "dit-b2": ["hidden_size=768", "depth=12", "num_heads=12", "patch_size=2"],
    "dit-xl2": ["hidden_size=1152", "depth=28", "num_heads=16", "patch_size=2"],
}

NO_CUDA = "bench_mfu: CUDA is not available, so there is nothing to measure: MFU needs a GPU (see --help)."


def peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.splitlines()[0])
    p.set_defaults(device="cuda", warmup=3, repeats=10)
    p.add_argument("--backbone", default="dit", help="registered backbone name")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--latent", type=int, default=32, help="latent frame size (256² frames / 8)")
    p.add_argument("--channels", type=int, default=4, help="latent channels")
    p.add_argument("--tokens", type=int, default=4, help="audio tokens per frame (N)")
    p.add_argument("--audio-dim", type=int, default=64, help="audio token width (D)")
    p.add_argument("--motion-frames", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="torch.compile the backbone's forward")
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--precision", default="bf16", help="bf16 | fp32")
    p.add_argument(
        "--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s (default: table)"
    )
    p.add_argument(
        "--preset", default="config", choices=sorted(PRESETS), help="backbone size (see PRESETS)"
    )
    p.add_argument(
        "--override",
        action="append",
        default=[],
        help="backbone config override without the 'backbone.' prefix, e.g. depth=8 (repeatable)",
    )
    args = p.parse_args(argv)

    wants_cuda = args.device.startswith("cuda") or args.device == "auto"
    if wants_cuda and not torch.cuda.is_available():
        print(NO_CUDA, file=sys.stderr)
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(
                json.dumps({"benchmark": "bench_mfu", "status": "skipped", "reason": NO_CUDA})
                + "\n"
            )
        return 0
    device = C.setup(args)
    if device.type != "cuda" and args.peak_tflops is None:
        p.error("--device cpu is a dry run of the code: give --peak-tflops too")
    keys = (
        "batch",
        "frames",
        "latent",
        "channels",
        "tokens",
        "audio_dim",
        "motion_frames",
        "compile",
        "grad_checkpointing",
        "precision",
        "preset",
        "warmup",
        "repeats",
        "override",
    )
    result = {
        "benchmark": "bench_mfu",
        "machine": C.machine(device),
        "backbone": args.backbone,
        "settings": {k: getattr(args, k) for k in keys},
    }
    reason = C.backbone_status(args.backbone)
    if reason is not None:
        return C.emit_skipped(result, reason, args.json)
    peak = args.peak_tflops or peak_tflops(result["machine"].get("gpu", ""))
    if peak is None:
        p.error(
            f"no peak bf16 FLOP/s known for {result['machine'].get('gpu')!r}: give --peak-tflops"
        )

    cfg = C.compose(
        [
            f"backbone={args.backbone}",
            *[f"backbone.{o}" for o in [*PRESETS[args.preset], *args.override]],
        ]
    )
    torch.manual_seed(args.seed)
    backbone = BACKBONES.build(
        args.backbone,
        in_channels=args.channels,
        audio_dim=args.audio_dim,
        motion_frames=args.motion_frames,
        **_kwargs(cfg.backbone),
    )
    backbone = backbone.to(device).train()
    if args.grad_checkpointing:
        backbone.set_grad_checkpointing(True)
    b, c, f, s = args.batch, args.channels, args.frames, args.latent
    g = torch.Generator(device=device).manual_seed(args.seed)
    x_t = torch.randn(b, c, f, s, s, device=device, generator=g)
    t = torch.randint(0, 1000, (b,), device=device, generator=g)
    audio = torch.randn(b, f, args.tokens, args.audio_dim, device=device, generator=g)
    ref = torch.randn(b, c, s, s, device=device, generator=g)
    motion = (
        torch.randn(b, c, args.motion_frames, s, s, device=device, generator=g)
        if args.motion_frames
        else None
    )
    target = torch.randn(b, c, f, s, s, device=device, generator=g)
    optimizer = torch.optim.AdamW(backbone.parameters(), lr=1e-4, fused=device.type == "cuda")

    def forward_backward():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            out = backbone(x_t, t, audio, ref, motion)
            loss = torch.nn.functional.mse_loss(out.float(), target)
        loss.backward()

    counter = FlopCounterMode(display=False)
    with counter:
        forward_backward()
    flops = int(counter.get_total_flops())
    optimizer.zero_grad(set_to_none=True)

    if args.compile:
        backbone.forward = torch.compile(backbone.forward)

    def step():
        optimizer.zero_grad(set_to_none=True)
        forward_backward()
        optimizer.step()

    times = C.interleaved({"step": step}, repeats=args.repeats, warmup=args.warmup, device=device)
    step_s = C.median(times["step"])
    achieved = flops / step_s
    mfu = achieved / (peak * 1e12)
    memory = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    result.update(
        status="ok",
        flops_per_step=flops,
        step_s=step_s,
        achieved_tflops=achieved / 1e12,
        peak_tflops=peak,
        mfu=mfu,
        spread=C.spread(times["step"]),
        times_s=times["step"],
        peak_memory_bytes=memory,
        params=sum(q.numel() for q in backbone.parameters()),
        dry_run=device.type != "cuda",
        target={"dit mfu (bf16, latent 32², 16 frames, batch >= 8)": ">= 0.45"},
    )
    rows = [
        {
            "backbone": args.backbone,
            "batch": b,
            "latent": f"{c}×{f}×{s}²",
            "GFLOP/step": flops / 1e9,
            "step ms": 1000 * step_s,
            "TFLOP/s": achieved / 1e12,
            "peak TFLOP/s": peak,
            "MFU": mfu,
        }
    ]
    C.emit(
        result,
        rows,
        ["backbone", "batch", "latent", "GFLOP/step", "step ms", "TFLOP/s", "peak TFLOP/s", "MFU"],
        args.json,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
