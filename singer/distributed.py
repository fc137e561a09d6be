"""Multi-process data-parallel training (DistributedDataParallel) for the trainer.

One process per device. Where the ranks come from:

- ``torchrun --nproc_per_node=N -m singer.train ...`` (or any launcher that sets the
  ``env://`` variables ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``);
- a submitit job with several tasks (a SLURM profile with ``tasks_per_node: 8``, or the
  ``local`` executor with ``tasks_per_node``): the entry points (``singer.train``, the sweep
  trial and ``singer.launch.TrainJob``) call :func:`singer.launch.export_torch_distributed_env`,
  which turns submitit's job environment into the same variables;
- neither: one process, world size 1, and nothing here does anything.

Launching (give ``out_dir``: every rank must write to, and resume from, the same folder)::

    torchrun --nproc_per_node=8 -m singer.train out_dir=runs/ddp8                 # one node, 8 GPUs
    torchrun --nproc_per_node=2 -m singer.train trainer=cpu_tiny device=cpu out_dir=runs/cpu2  # 2 CPU ranks
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \
        -m singer.train out_dir=/shared/runs/x                                   # 2 nodes (run on each)
    python -m singer.train -m hydra/launcher=slurm_gpu8_ddp out_dir=/shared/runs/x  # SLURM via submitit

What the trainer does with a world of N > 1 processes:

- **Backend:** ``nccl`` on CUDA, ``gloo`` on CPU (``trainer.ddp.backend`` overrides). Rank r uses
  ``cuda:<local rank>``.
- **Model init** is identical on every rank (every rank seeds torch with ``seed`` before
  building), and DDP broadcasts rank 0's weights once more when it wraps the model.
- **Randomness for data and noise** differs per rank: rank r seeds its diffusion-noise
  generator and torch's global RNG with :func:`rank_seed`.
- **Data:** ``trainer.batch_size`` is per process. Global batch k is the k-th slice of size
  ``batch_size × N`` of the seeded index stream; rank r takes its items r, r + N, r + 2N, ...
  (``DistributedSampler``-style interleaving), so the ranks see disjoint items and the global
  data order does not depend on N for a fixed global batch.
- **Side effects** happen on rank 0 only: the MLflow run, checkpoints, ``config.yaml``,
  ``result.json``, validation, sample videos. The other ranks keep their RNG states in rank 0's
  checkpoint (gathered at each save), so a resumed run continues every rank's streams.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

# Rank r draws its data/noise randomness from seed + r * RANK_SEED_STRIDE. The stride keeps the
# per-rank streams apart from the small offsets (seed + 1, seed + 777, ...) the trainer adds to
# the seed for its own generators, and from runs with nearby seeds.
RANK_SEED_STRIDE = 1_000_003
BACKENDS = ("auto", "nccl", "gloo")
ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in a (possibly one-process) world."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    source: str = "single"  # single | env (torchrun or equivalent) | submitit (in a submitit job)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s data/noise streams (``seed`` itself on rank 0)."""
    return int(seed) + int(rank) * RANK_SEED_STRIDE


def from_env(environ: Mapping[str, str] | None = None) -> DistEnv:
    """Read the rank and world size from ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (torchrun's
    ``env://`` variables); never initialises or sets anything.

    Inside a multi-task submitit job the entry point exports those variables from submitit's
    job environment first (:func:`singer.launch.export_torch_distributed_env`), as dinov2's
    ``run/`` does; this module only reads them.
    """
    env = os.environ if environ is None else environ
    source = "submitit" if "SUBMITIT_EXECUTOR" in env or "SUBMITIT_DEBUG_JOB_ID" in env else "env"
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return DistEnv()
    try:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local_rank = int(env.get("LOCAL_RANK", rank))
    except ValueError as err:
        raise RuntimeError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers: {err}") from None
    if world < 1 or not 0 <= rank < world or local_rank < 0:
        raise RuntimeError(
            f"inconsistent distributed environment: RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local_rank}"
        )
    if world == 1:
        return DistEnv()
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank, source=source)


def device_for(env: DistEnv, device: torch.device) -> torch.device:
    """The device of this rank: ``cuda:<local rank>`` when training on CUDA with several ranks.

    When each task sees only its own GPU (``CUDA_VISIBLE_DEVICES`` set per task, e.g. SLURM's
    ``gpus_per_task``/``gpu_bind``), the local rank is taken modulo the visible devices.
    """
    if not env.enabled or device.type != "cuda":
        return device
    count = torch.cuda.device_count()
    if count == 0:
        raise RuntimeError("CUDA training with several ranks, but no CUDA device is visible")
    return torch.device("cuda", env.local_rank % count)


def backend_for(device: torch.device, backend: str = "auto") -> str:
    if backend not in BACKENDS:
        raise ValueError(
            f"trainer.ddp.backend must be one of {', '.join(BACKENDS)}; got {backend!r}"
        )
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    return backend


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def init(
    env: DistEnv, device: torch.device, backend: str = "auto", timeout_min: float = 30
) -> bool:
    """Join the process group of ``env`` (``env://``). Returns True when this call created it
    (the caller then calls :func:`cleanup`); False for one process or a group that already exists."""
    if not env.enabled:
        return False
    if is_initialized():
        if dist.get_world_size() != env.world_size or dist.get_rank() != env.rank:
            raise RuntimeError(
                f"a process group already exists with rank {dist.get_rank()}/{dist.get_world_size()}, "
                f"but the environment says {env.rank}/{env.world_size}"
            )
        return False
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this torch build")
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={env.world_size} but {', '.join(missing)} is not set; launch with torchrun"
        )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend=backend_for(device, backend),
        init_method="env://",
        rank=env.rank,
        world_size=env.world_size,
        timeout=_dt.timedelta(minutes=float(timeout_min)),
    )
    return True


def cleanup(created: bool) -> None:
    """Leave the process group if :func:`init` created it."""
    if created and is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.enabled and is_initialized():
        dist.barrier()


def broadcast_object(value: Any, env: DistEnv) -> Any:
    """Rank 0's ``value`` on every rank (picklable objects)."""
    if not env.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[[], Any], env: DistEnv) -> Any:
    """``fn()`` run on rank 0 only, its result returned on every rank; if it raises, every
    rank raises the same error (instead of the others waiting for rank 0 until the timeout)."""
    if not env.enabled:
        return fn()
    outcome: tuple[str, Any] = ("ok", None)
    if env.is_main:
        try:
            outcome = ("ok", fn())
        except Exception as err:  # shared with the other ranks, then raised everywhere
            outcome = ("error", err)
    kind, value = broadcast_object(outcome, env)
    if kind == "error":
        raise value
    return value


def gather_objects(value: Any, env: DistEnv) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank (``[value]`` for one process)."""
    if not env.enabled:
        return [value]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, value)
    return out


def mean(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """The mean of a tensor over ranks (the tensor itself for one process). A NaN or inf on
    any rank makes the result non-finite on every rank, so all ranks stop together."""
    if not env.enabled:
        return value
    total = value.detach().clone().float()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / env.world_size


def wrap(
    module: torch.nn.Module,
    env: DistEnv,
    device: torch.device,
    options: Mapping[str, Any] | None = None,
):
    """``module`` in DistributedDataParallel (``module`` itself for one process).

    ``options``: ``find_unused_parameters``, ``bucket_cap_mb``, ``gradient_as_bucket_view``,
    ``static_graph`` (``trainer.ddp``).
    """
    if not env.enabled:
        return module

    options = dict(options or {})
    kwargs = {
        "find_unused_parameters": bool(options.get("find_unused_parameters", False)),
        "gradient_as_bucket_view": bool(options.get("gradient_as_bucket_view", True)),
        "static_graph": bool(options.get("static_graph", False)),
    }
    if options.get("bucket_cap_mb") is not None:
        kwargs["bucket_cap_mb"] = float(options["bucket_cap_mb"])
    if device.type == "cuda":
        kwargs.update(device_ids=[device.index], output_device=device.index)
    return DistributedDataParallel(module, **kwargs)


@contextmanager
def main_first(env: DistEnv):
    """Run a block on rank 0 first, then on the other ranks (e.g. building a shared cache)."""
    if env.enabled and not env.is_main:
        barrier(env)
    try:
        yield
    finally:
        if env.enabled and env.is_main:
            barrier(env)
