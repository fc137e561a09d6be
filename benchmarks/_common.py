"""Shared pieces of the benchmark scripts: arguments, machine description, interleaved
timing, synthetic batches, and JSON + Markdown output.

Timings are compared only within one run: the candidates are timed in alternating order
(round-robin, the order rotated every round) after a warm-up, and each is summarised by its
median, so slow drifts of a shared machine hit every candidate alike.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as `python benchmarks/bench_x.py` from a checkout
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from singer.acceleration import resolve_device as trainer_device  # noqa: E402
from singer.config import compose as _compose  # noqa: E402
from singer.registry import BACKBONES  # noqa: E402


# -- arguments ------------------------------------------------------------------------------------
def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument(
        "--json", type=Path, default=None, help="also write the JSON result to this file"
    )
    p.add_argument("--warmup", type=int, default=2, help="untimed runs of each candidate first")
    p.add_argument(
        "--repeats", type=int, default=7, help="timed rounds (each candidate once per round)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    return p


def setup(args: argparse.Namespace) -> torch.device:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return resolve_device(args.device)


def resolve_device(name: str) -> torch.device:
    try:
        return trainer_device(name)
    except RuntimeError as err:  # CUDA asked for but absent: a message, not a traceback
        raise SystemExit(f"--device {name}: {err}") from None


# -- machine --------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return out + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpus": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "commit": commit(),
        "date": _dt.date.today().isoformat(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# -- timing ---------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    candidates: Mapping[str, Callable[[], Any]], *, repeats: int, warmup: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds per call of every candidate, timed round-robin with the order rotated each round."""
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(max(1, repeats)):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            sync(device)
            start = time.perf_counter()
            candidates[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def spread(values: Sequence[float]) -> float:
    """Relative spread (max − min) / median: how noisy the machine was for this candidate."""
    return (
        float((max(values) - min(values)) / statistics.median(values)) if values else float("nan")
    )


# -- models and batches ---------------------------------------------------------------------------
def compose(overrides: Sequence[str]):
    return _compose(list(overrides))


def backbone_status(name: str) -> str | None:
    """None when backbone ``name`` can be benchmarked, else why not (not registered / no config)."""
    if name not in BACKBONES:
        return f"backbone '{name}' is not registered (known: {', '.join(BACKBONES.names())})"
    if not (REPO / "singer" / "conf" / "backbone" / f"{name}.yaml").is_file():
        return f"backbone '{name}' has no config singer/conf/backbone/{name}.yaml"
    return None


def synthetic_batch(
    cfg, batch_size: int, device: torch.device, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A training batch shaped like ``ClipDataset``'s (video, audio, ref, motion) from random numbers."""
    g = torch.Generator().manual_seed(seed)
    frames, size = int(cfg.trainer.num_frames), int(cfg.trainer.size)
    motion = max(1, int(cfg.model.get("motion_frames", 0)))
    samples = round(frames * cfg.data.sample_rate / cfg.data.fps)

    def video(*shape):
        return (torch.rand(*shape, generator=g) * 2 - 1).to(device)

    return {
        "video": video(batch_size, 3, frames, size, size),
        "audio": (0.1 * torch.randn(batch_size, samples, generator=g)).to(device),
        "ref": video(batch_size, 3, size, size),
        "motion": video(batch_size, 3, motion, size, size),
    }


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CUDA by default (as the trainer's ``precision=auto``); fp32 on CPU."""
    enabled = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def saved_activation_bytes(fn: Callable[[], torch.Tensor], parameters=()) -> int:
    """Bytes of the distinct tensors autograd saves for backward while ``fn()`` runs its
    forward pass (then ``fn()``'s result is backpropagated), not counting ``parameters``: the
    CPU stand-in for peak training memory, which torch does not track on CPU."""
    params = {p.untyped_storage().data_ptr() for p in parameters}
    seen: dict[tuple, int] = {}

    def pack(t: torch.Tensor):
        try:
            storage = t.untyped_storage()
            if storage.data_ptr() not in params:
                key = (storage.data_ptr(), t.device.type)
                seen[key] = max(seen.get(key, 0), storage.nbytes())
        except (RuntimeError, NotImplementedError):  # e.g. tensors without storage
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    out.backward()
    return int(sum(seen.values()))


# -- output ---------------------------------------------------------------------------------------
def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return "—" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def emit(
    result: dict[str, Any],
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    json_path: Path | None,
) -> None:
    """Print the JSON result, then a Markdown table; write the JSON to ``json_path`` too."""
    text = json.dumps(result, indent=2, default=str)
    print(text)
    print()
    m = result["machine"]
    print(
        f"### {result['benchmark']}  ({m.get('gpu') or m['cpu']}, {m['device']}, commit {m['commit']}, {m['date']})"
    )
    print()
    print(markdown_table(rows, columns))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(text + "\n")


def emit_skipped(result: dict[str, Any], reason: str, json_path: Path | None, **empty: Any) -> int:
    """Report a benchmark that cannot run (``status: skipped`` and why); returns exit status 0."""
    result.update(status="skipped", reason=reason, **empty)
    emit(result, [], ["status"], json_path)
    print(f"\n{result['benchmark']}: skipped: {reason}", file=sys.stderr)
    return 0
