"""Checkpoints that resume a training run exactly, random streams included.

A checkpoint (``<out_dir>/checkpoints/last.pt``) holds the model, its EMA, the optimizer, the
LR schedule, the loop's counters (:class:`TrainState`), the diffusion-noise generator, torch's
global (and CUDA) RNG, and the composed config. With several DDP ranks it also holds every
rank's random streams, gathered at each save, so each rank continues its own. The data
position needs no saving: the data order is a pure function of (seed, batch index)
(:class:`singer.data.batches.BatchStream`). On CPU a run killed and resumed ends with the same
weights as an uninterrupted one.

Other readers (:mod:`singer.inference`, the evaluator) use the keys ``model``, ``step``,
``run_id`` and ``config``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from singer import distributed
from singer.distributed import DistEnv

CHECKPOINT_NAME = "last.pt"


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> Any: ...


@dataclass
class TrainState:
    """The loop's own counters, saved beside the weights."""

    step: int = 0
    losses: list[float] = field(default_factory=list)  # every step's training loss
    initial_val_loss: float | None = None  # before the first step
    run_id: str | None = None  # the MLflow run: a resumed run continues it

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "losses": list(self.losses),
            "initial_val_loss": self.initial_val_loss,
            "run_id": self.run_id,
        }

    def load_state_dict(self, state: Mapping) -> None:
        self.step = int(state["step"])
        self.losses = [float(x) for x in state["losses"]]
        self.initial_val_loss = state["initial_val_loss"]
        self.run_id = state["run_id"]


# -- random streams ---------------------------------------------------------------------------
def rng_state(noise_gen: torch.Generator, device: torch.device) -> dict:
    """This process's random streams: the noise generator, torch's global RNG, and the CUDA
    RNG of ``device``."""
    return {
        "noise_gen": noise_gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def set_rng_state(state: Mapping, noise_gen: torch.Generator, device: torch.device) -> None:
    """Restore what :func:`rng_state` returned."""
    noise_gen.set_state(state["noise_gen"])
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"], device)


# -- checkpoints ------------------------------------------------------------------------------
class Checkpointer:
    """Saves and loads ``<ckpt_dir>/last.pt`` for one run (every rank holds one).

    ``parts`` are the stateful training objects by checkpoint key (``model``, ``ema``,
    ``optimizer``, ``scheduler``); ``config`` is the composed config as plain containers.
    """

    def __init__(
        self,
        ckpt_dir: Path,
        *,
        env: DistEnv,
        device: torch.device,
        seed: int,
        config: dict,
    ):
        self.ckpt_dir = Path(ckpt_dir)
        self.env, self.device, self.seed, self.config = env, device, int(seed), config

    @property
    def path(self) -> Path:
        return self.ckpt_dir / CHECKPOINT_NAME

    def resume_path(self, resume: Any) -> Path | None:
        """The checkpoint ``trainer.resume`` points at: ``true``/``auto`` → this run's own (None
        when there is none yet: start fresh), a run folder or a ``.pt`` file → that one."""
        if resume in (False, None, "false", ""):
            return None
        if resume is True or resume in ("true", "auto"):
            return self.path if self.path.exists() else None
        path = Path(str(resume))
        path = path / "checkpoints" / CHECKPOINT_NAME if path.is_dir() else path
        if not path.exists():
            raise FileNotFoundError(f"trainer.resume={resume}: no checkpoint at {path}")
        return path

    def save(
        self, parts: Mapping[str, Stateful], state: TrainState, noise_gen: torch.Generator
    ) -> Path:
        """Atomic write: a kill during saving leaves the previous checkpoint intact.

        Every rank calls this (the ranks' random streams are gathered); rank 0 writes.
        """
        env = self.env
        rank_rng = (
            distributed.gather_objects(rng_state(noise_gen, self.device), env)
            if env.enabled
            else None
        )
        if env.is_main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            data = {
                "step": state.step,
                **{name: part.state_dict() for name, part in parts.items()},
                "noise_gen": noise_gen.get_state(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                **state.state_dict(),
                "config": self.config,
            }
            if rank_rng is not None:
                data["rank_rng"] = rank_rng
            tmp = self.path.with_suffix(".pt.tmp")
            torch.save(data, tmp)
            os.replace(tmp, self.path)
        distributed.barrier(env)
        return self.path

    def load(
        self,
        path: Path,
        parts: Mapping[str, Stateful],
        state: TrainState,
        noise_gen: torch.Generator,
    ) -> None:
        """Restore ``parts``, ``state`` and the random streams from ``path``.

        A checkpoint written by as many ranks as this run has gives every rank back its own
        streams. Otherwise the weights and optimizer still resume exactly, and each rank gets
        fresh streams derived from the step (with a warning).
        """
        data = torch.load(path, map_location="cpu", weights_only=True)
        for name, part in parts.items():
            part.load_state_dict(data[name])
        noise_gen.set_state(data["noise_gen"])
        torch.set_rng_state(data["torch_rng"])
        if data["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(data["cuda_rng"])
        state.load_state_dict(data)
        env, rank_rng = self.env, data.get("rank_rng")
        saved_world = len(rank_rng) if rank_rng else 1
        if saved_world != env.world_size:
            warnings.warn(
                f"checkpoint {path} was written by {saved_world} rank(s), this run has {env.world_size}: "
                "weights and optimizer state resume exactly; the data order and the random streams "
                "continue differently",
                RuntimeWarning,
                stacklevel=3,
            )
        if rank_rng is not None and saved_world == env.world_size:
            set_rng_state(rank_rng[env.rank], noise_gen, self.device)
        elif env.enabled:  # fresh per-rank streams, derived from the step
            noise_gen.manual_seed(distributed.rank_seed(self.seed + 1 + state.step, env.rank))
            torch.manual_seed(distributed.rank_seed(self.seed + state.step, env.rank))
