"""The training loop behind ``python -m singer.train`` (and every sweep trial).

It knows ModelSpecs only. Checkpoints resume exactly: model, optimizer, LR schedule, EMA,
the diffusion-noise generator, torch's global RNG, the data position and the step are all
saved, and the data order is a pure function of (seed, batch index). On CPU a run killed
and resumed ends with the same weights as an uninterrupted one.

The GPU path is switched by ``trainer.*`` keys (``singer/conf/trainer/default.yaml``): bf16
autocast (``precision``), ``torch.compile`` of the backbone with an eager fallback when
compiling fails (``compile``), the SDPA attention kernels (``attention``), channels-last
conv weights (``channels_last``), gradient checkpointing (``grad_checkpointing``) and fused
AdamW (``fused_adamw``). Several processes (torchrun, or a multi-task submitit job) train
one model with DistributedDataParallel; see :mod:`singer.distributed`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

from singer import distributed, tracking
from singer.cli import UserError
from singer.config import flatten, loggable_container, to_container
from singer.models.spec import Conditions, ModelSpec, count_parameters, get_model_spec
from singer.separation.base import cache_separator

CHECKPOINT_NAME = "last.pt"
LOSS_WINDOW = 10  # diffusion losses are noisy per batch (random t): compare window means


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class DeviceError(UserError, RuntimeError):
    """The device asked for is not there."""


@dataclass
class TrainResult:
    step: int
    out_dir: Path
    checkpoint: Path
    first_loss: float  # mean training loss of the first LOSS_WINDOW steps
    final_loss: float  # mean training loss of the last LOSS_WINDOW steps
    val_loss: float | None
    initial_val_loss: float | None  # before the first step, same batches and noise as val_loss
    run_id: str | None
    losses: list[float] = field(default_factory=list)  # every step's training loss
    metrics: dict[str, float] = field(default_factory=dict)
    rank: int = 0  # this process's DDP rank; only rank 0 has validated, logged and written


# -- small pieces ---------------------------------------------------------------------------
def resolve_device(spec: str = "auto") -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            f"device={spec} was asked for, but CUDA is not available",
            "use device=cpu or device=auto",
        )
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision in ("auto", "bf16"):
        return torch.bfloat16
    raise ValueError(f"trainer.precision must be auto, fp32 or bf16, got '{precision}'")


class BatchStream:
    """Batches of dataset indices, a pure function of (seed, batch index[, rank, world size]).

    The index stream is the concatenation of per-epoch permutations; global batch k holds
    items [k·B·W, (k+1)·B·W) of it (W = ``world_size``), so resuming at batch k needs no
    saved sampler state. Rank r takes items r, r + W, r + 2W, ... of each global batch
    (``DistributedSampler``-style): B items, disjoint across ranks.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        seed: int,
        start_batch: int = 0,
        *,
        rank: int = 0,
        world_size: int = 1,
    ):
        if num_items == 0:
            raise ValueError("the training split is empty")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of {world_size}")
        self.num_items, self.batch_size, self.seed, self.start_batch = (
            num_items,
            batch_size,
            seed,
            start_batch,
        )
        self.rank, self.world_size = rank, world_size

    def _epoch(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.num_items, generator=g).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        global_batch = self.batch_size * self.world_size
        position = self.start_batch * global_batch
        epoch, offset = divmod(position, self.num_items)
        order = self._epoch(epoch)
        while True:
            batch = []
            while len(batch) < global_batch:
                if offset == self.num_items:
                    epoch, offset = epoch + 1, 0
                    order = self._epoch(epoch)
                batch.append(order[offset])
                offset += 1
            yield batch[self.rank :: self.world_size]


class EMA:
    """Exponential moving average of a model's floating-point parameters and buffers."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        # Warm-up: early averages would otherwise be dominated by the random init.
        decay = min(self.decay, (1 + step) / (10 + step))
        ema_state = self.model.state_dict()
        for name, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                ema_state[name].lerp_(value, 1.0 - decay)
            else:
                ema_state[name].copy_(value)


# -- GPU-path switches ------------------------------------------------------------------------
SDPA_BACKENDS = ("auto", "flash", "efficient", "cudnn", "math")


def sdpa_context(name: str | None):
    """A context that restricts ``scaled_dot_product_attention`` to one kernel family.

    ``auto`` (or None) lets torch choose (flash / memory-efficient / cuDNN on CUDA when the
    inputs allow, math otherwise). A named kernel that cannot run the inputs raises inside the
    forward pass, which is the point: it shows that kernel is not used.
    """
    name = "auto" if name in (None, "", "auto") else str(name)
    if name not in SDPA_BACKENDS:
        raise ValueError(
            f"trainer.attention must be one of {', '.join(SDPA_BACKENDS)}; got {name!r}"
        )
    if name == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }[name]
    return sdpa_kernel([backend])


def enable_grad_checkpointing(model: torch.nn.Module) -> list[str]:
    """Call ``set_grad_checkpointing(True)`` on the outermost modules that have it (timm's
    method name; ``unet3d`` and ``dit`` backbones do). Returns their qualified names."""
    found: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(f"{outer}.") or outer == "" for outer in found):
            continue
        if callable(getattr(module, "set_grad_checkpointing", None)):
            module.set_grad_checkpointing(True)
            found.append(name)
    return found


def compile_target(model: torch.nn.Module) -> torch.nn.Module:
    """What ``trainer.compile`` compiles: the backbone (the bulk of the FLOPs), or the model
    itself when it has none. Front-ends, codecs and the diffusion step stay eager."""
    backbone = getattr(model, "backbone", None)
    return backbone if isinstance(backbone, torch.nn.Module) else model


class _LossModule(torch.nn.Module):
    """``spec.loss(model, batch, generator)`` as a module's forward, so DistributedDataParallel
    sees the whole training forward pass (its gradient hooks are armed in ``forward``)."""

    def __init__(self, model: torch.nn.Module, loss_fn: Callable):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: dict, generator: torch.Generator):
        return self.loss_fn(self.model, batch, generator)


class _NoRun:
    """Stands in for the MLflow run on ranks other than 0: every call does nothing."""

    run_id = None

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


# Parameters whose meaning is "a multiplier around 1" or "a learned stand-in" (MSM/SFM band
# gains, region weights, null tokens, type vectors): weight decay would pull them to 0.
NO_DECAY_NAMES = ("gains", "region_weights", "null_", "_type", "logit_")


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay for weight matrices and kernels only. Biases, norms (every 1-D
    parameter) and the gain/null-token parameters of ``NO_DECAY_NAMES`` are not decayed: the
    MSM and SFM start at identity (gains 1) and must stay there unless the loss moves them."""
    decay, keep = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        exempt = param.ndim < 2 or any(key in leaf for key in NO_DECAY_NAMES)
        (keep if exempt else decay).append(param)
    return [
        {"params": decay, "weight_decay": float(weight_decay)},
        {"params": keep, "weight_decay": 0.0},
    ]


def _to_device(batch: dict, device: torch.device) -> dict:
    return {
        k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()
    }


def _resize_batch(batch: dict, size: int) -> dict:
    """Resize frames when a prepared cache was made at another size than trainer.size."""
    import torch.nn.functional as F

    if batch["video"].shape[-1] == size:
        return batch
    out = dict(batch)
    for key in ("video", "motion"):
        b, c, f, h, w = batch[key].shape
        frames = batch[key].permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        frames = F.interpolate(frames, size=(size, size), mode="area")
        out[key] = frames.reshape(b, f, c, size, size).permute(0, 2, 1, 3, 4)
    out["ref"] = F.interpolate(batch["ref"], size=(size, size), mode="area")
    return out


def data_cache(cfg: DictConfig, *, workers: int = 1, progress: bool = True) -> Path:
    """The prepared clip cache of a config: ``data.cache_dir``, or SynthSing generated and
    prepared on first use (``workers`` processes generate it)."""
    from singer.data.cache import ensure_synthsing, separation_options

    data = cfg.data
    if data.get("cache_dir"):
        return Path(data.cache_dir)
    synth = data.synth
    return ensure_synthsing(
        data.root,
        clips=synth.clips,
        seconds=synth.seconds,
        kind=synth.kind,
        seed=synth.seed,
        size=synth.size,
        fps=data.fps,
        sample_rate=data.sample_rate,
        clip_size=cfg.trainer.size,
        workers=workers,
        progress=progress,
        **separation_options(data),
    )


def build_datasets(cfg: DictConfig) -> tuple[Dataset, Dataset, Path]:
    """Train and validation ClipDatasets for the config (SynthSing generated on first use)."""
    from singer.data.dataset import ClipDataset

    data = cfg.data
    cache = data_cache(cfg)
    kinds = list(data.kinds) if data.kinds else None
    common = dict(
        num_frames=cfg.trainer.num_frames,
        motion_frames=max(1, cfg.model.get("motion_frames", 0)),
        val_fraction=data.val_fraction,
        test_fraction=data.get("test_fraction", 0.0),
        seed=cfg.data.get("split_seed", 0),
        kinds=kinds,
    )
    train = ClipDataset(cache, split="train", **common)
    val = ClipDataset(cache, split="val", **common)
    return train, val, cache


def write_sample_video(
    path: Path,
    generated: torch.Tensor,
    truth: torch.Tensor | None,
    audio: torch.Tensor,
    fps: float,
    sample_rate: int,
) -> Path:
    """Write generated (and, beside it, ground-truth) frames 3×F×H×W in [-1, 1] with sound."""
    from singer.data.media import write_mp4

    frames = generated if truth is None else torch.cat([generated, truth], dim=-1)
    frames = ((frames.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    frames = frames.permute(1, 2, 3, 0).cpu().numpy()
    return write_mp4(path, frames, fps, audio.float().cpu().numpy(), sample_rate)


# -- the trainer ----------------------------------------------------------------------------
Reporter = Callable[[int, dict[str, float]], None]


class Trainer:
    """Trains one ModelSpec from a composed config; ``fit()`` resumes when asked to."""

    def __init__(
        self,
        cfg: DictConfig,
        out_dir: str | Path,
        *,
        reporter: Reporter | None = None,
        progress: bool = True,
    ):
        self.cfg = cfg
        self.tc = cfg.trainer
        self.out_dir = Path(out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.reporter = reporter
        self.progress = progress
        self.dist_env = distributed.from_env()
        self.device = distributed.device_for(self.dist_env, resolve_device(cfg.device))
        self.amp_dtype = autocast_dtype(self.tc.precision, self.device)
        self.spec: ModelSpec = get_model_spec(cfg.model.name)
        self.attention = self.tc.get("attention", "auto")
        sdpa_context(self.attention)  # reject a bad name before any work
        self.compile_status = "off"

    # state ------------------------------------------------------------------------------
    def _setup(self) -> None:
        tc, env = self.tc, self.dist_env
        if tc.threads:
            torch.set_num_threads(int(tc.threads))
        if self.device.type == "cuda" and tc.get("tf32", True):
            torch.set_float32_matmul_precision(
                "high"
            )  # TF32 for the fp32 matmuls left outside autocast
        torch.manual_seed(self.cfg.seed)  # the same initial weights on every rank
        self.model = self.spec.build(self.cfg).to(self.device)
        if tc.get("channels_last", False):
            self.model.to(memory_format=torch.channels_last)  # 4-D (conv) weights only
        if tc.get("grad_checkpointing", False) and not enable_grad_checkpointing(self.model):
            warnings.warn(
                f"trainer.grad_checkpointing=true, but no module of model '{self.cfg.model.name}' has "
                "set_grad_checkpointing(); training without it",
                RuntimeWarning,
                stacklevel=2,
            )
        self.ema = EMA(self.model, tc.ema_decay)
        fused = tc.get("fused_adamw", "auto")
        fused = self.device.type == "cuda" if fused in ("auto", None) else bool(fused)
        self.optimizer = torch.optim.AdamW(
            parameter_groups(self.model, tc.weight_decay),
            lr=tc.lr,
            betas=tuple(tc.betas),
            fused=fused,
        )
        warmup = max(1, int(tc.warmup_steps))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup)
        )
        gen_device = self.device if self.device.type == "cuda" else "cpu"
        self.noise_gen = torch.Generator(device=gen_device).manual_seed(
            distributed.rank_seed(self.cfg.seed + 1, env.rank)
        )
        if env.enabled:  # dropout etc.: a stream of its own on every rank
            torch.manual_seed(distributed.rank_seed(self.cfg.seed, env.rank))
        self._compiled: torch.nn.Module | None = None
        if tc.get("compile", False):
            self._compile(compile_target(self.model))
        self._forward = distributed.wrap(
            _LossModule(self.model, self.spec.loss), env, self.device, tc.get("ddp")
        )
        self.step = 0
        self.losses: list[float] = []
        self.initial_val_loss: float | None = None
        self.run_id: str | None = None

    # compile ------------------------------------------------------------------------------
    def _compile(self, target: torch.nn.Module) -> None:
        """Compile ``target``'s forward in place (its state_dict keys stay the same).

        Submodules whose class is named in ``trainer.compile_eager_modules`` run eagerly inside
        the compiled forward (one graph break each): the ptwt wavelet transforms of the SFM
        cannot be traced by TorchDynamo. Compiling happens on the first call; :meth:`train_step`
        falls back to eager when it fails.
        """
        options = {
            "mode": self.tc.get("compile_mode") or None,
            "backend": self.tc.get("compile_backend") or "inductor",
        }
        if options["mode"] == "default":
            options["mode"] = None
        eager_names = set(self.tc.get("compile_eager_modules") or ())
        self._eager_modules = [
            m for m in target.modules() if type(m).__name__ in eager_names and m is not target
        ]
        try:
            for module in self._eager_modules:
                module.forward = torch.compiler.disable(module.forward)
            target.forward = torch.compile(target.forward, **options)
        except (
            Exception
        ) as err:  # e.g. an unknown backend, or a platform torch.compile does not support
            self._compile_failed(target, err)
            return
        self._compiled = target
        self.compile_status = f"compiled ({options['backend']})"

    def _compile_failed(self, target: torch.nn.Module, err: BaseException) -> None:
        for module in [target, *getattr(self, "_eager_modules", [])]:
            module.__dict__.pop("forward", None)  # back to the class's (eager) forward
        self._compiled = None
        self.compile_status = f"eager fallback: {type(err).__name__}: {err}"[:500]
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        warnings.warn(
            f"torch.compile failed, training continues eagerly: {type(err).__name__}: {first_line}",
            RuntimeWarning,
            stacklevel=3,
        )

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "noise_gen": self.noise_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "losses": list(self.losses),
            "initial_val_loss": self.initial_val_loss,
            "run_id": self.run_id,
            "config": to_container(self.cfg),
        }

    def _rng_state(self) -> dict:
        return {
            "noise_gen": self.noise_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device)
            if self.device.type == "cuda"
            else None,
        }

    def _set_rng_state(self, state: dict) -> None:
        self.noise_gen.set_state(state["noise_gen"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)

    def save_checkpoint(self) -> Path:
        """Atomic write: a kill during saving leaves the previous checkpoint intact.

        Every rank calls this (the ranks' RNG states are gathered); rank 0 writes.
        """
        path = self.ckpt_dir / CHECKPOINT_NAME
        rank_rng = (
            distributed.gather_objects(self._rng_state(), self.dist_env)
            if self.dist_env.enabled
            else None
        )
        if self.dist_env.is_main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            state = self.state_dict()
            if rank_rng is not None:
                state["rank_rng"] = rank_rng
            tmp = path.with_suffix(".pt.tmp")
            torch.save(state, tmp)
            os.replace(tmp, path)
        distributed.barrier(self.dist_env)
        return path

    def load_checkpoint(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        self.ema.model.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.noise_gen.set_state(state["noise_gen"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.step = int(state["step"])
        env, rank_rng = self.dist_env, state.get("rank_rng")
        saved_world = len(rank_rng) if rank_rng else 1
        if saved_world != env.world_size:
            warnings.warn(
                f"checkpoint {path} was written by {saved_world} rank(s), this run has {env.world_size}: "
                "weights and optimizer state resume exactly; the data order and the random streams "
                "continue differently",
                RuntimeWarning,
                stacklevel=2,
            )
        if rank_rng is not None and saved_world == env.world_size:
            self._set_rng_state(rank_rng[env.rank])
        elif env.enabled:  # fresh per-rank streams, derived from the step
            self.noise_gen.manual_seed(
                distributed.rank_seed(self.cfg.seed + 1 + self.step, env.rank)
            )
            torch.manual_seed(distributed.rank_seed(self.cfg.seed + self.step, env.rank))
        self.losses = [float(x) for x in state["losses"]]
        self.initial_val_loss = state["initial_val_loss"]
        self.run_id = state["run_id"]

    def _resume_path(self) -> Path | None:
        resume = self.tc.resume
        if resume in (False, None, "false", ""):
            return None
        if resume is True or resume in ("true", "auto"):
            path = self.ckpt_dir / CHECKPOINT_NAME
            return path if path.exists() else None  # nothing to resume yet: start fresh
        path = Path(str(resume))
        path = path / "checkpoints" / CHECKPOINT_NAME if path.is_dir() else path
        if not path.exists():
            raise FileNotFoundError(f"trainer.resume={resume}: no checkpoint at {path}")
        return path

    # tracking -----------------------------------------------------------------------------
    def _model_tags(self) -> dict[str, str]:
        cfg = self.cfg
        tags = {"model": cfg.model.name, "trainer": cfg.trainer.get("name", "")}
        for group in ("frontend", "backbone", "codec"):
            if group in cfg and cfg[group] is not None:
                tags[group] = cfg[group].name
        if "backbone" in cfg and "bottleneck_filter" in cfg.backbone:
            tags["bottleneck_filter"] = cfg.backbone.bottleneck_filter
        tags.update({k: str(v) for k, v in (cfg.tracking.get("tags") or {}).items()})
        return tags

    def _open_run(self) -> tracking.Run:
        tc = self.cfg.tracking
        if self.run_id:
            return tracking.resume_run(self.run_id, tc.uri)
        run = tracking.start_run(
            tc.experiment,
            run_name=tc.run_name or self.out_dir.name,
            tags=self._model_tags(),
            parent_run_id=tc.get("parent_run_id"),
            uri=tc.uri,
        )
        self.run_id = run.run_id
        run.log_params(flatten(loggable_container(self.cfg)))  # env-read values stay unresolved
        run.log_params(
            {
                "params.total": count_parameters(self.model),
                "params.trainable": count_parameters(self.model, trainable_only=True),
            }
        )
        run.log_dict(loggable_container(self.cfg), "config.json")
        run.set_tags({"out_dir": str(self.out_dir.resolve())})
        return run

    # loop ---------------------------------------------------------------------------------
    def _loss(
        self, forward: Callable, batch: dict, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict]:
        """``forward(batch, generator) → (loss, logs)`` under autocast and the SDPA kernel choice."""
        with (
            sdpa_context(self.attention),
            torch.autocast(
                self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
            ),
        ):
            return forward(batch, generator)

    def train_step(self, batch: dict) -> tuple[float, dict, torch.Tensor]:
        """One optimisation step on a batch already on the device.

        Returns (the loss averaged over ranks, the spec's logs, the gradient norm before
        clipping). While the backbone is compiled, a failure of the compiled step (compiling
        happens on the first call, and again on a recompile) switches it back to eager with a
        warning, restores the random streams and runs the same step eagerly.
        """
        if self._compiled is None:
            return self._optimize(batch)
        rng = self._rng_state()
        try:
            return self._optimize(batch)
        except NonFiniteLossError:
            raise
        except Exception as err:
            self._compile_failed(self._compiled, err)
            self.optimizer.zero_grad(set_to_none=True)
            self._set_rng_state(rng)
            return self._optimize(batch)

    def _optimize(self, batch: dict) -> tuple[float, dict, torch.Tensor]:
        loss, logs = self._loss(self._forward, batch, self.noise_gen)
        loss_value = distributed.mean(loss.detach(), self.dist_env)
        if not torch.isfinite(loss_value):
            raise NonFiniteLossError(f"loss is {loss_value.item()} at step {self.step}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tc.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update(self.model, self.step)
        self.step += 1
        return loss_value.item(), logs, grad_norm

    @torch.no_grad()
    def validate(self, val_loader: DataLoader) -> dict[str, float]:
        """EMA-weight losses over the first ``val_batches`` val batches with fixed noise.

        ``val/loss`` is the training objective (min-SNR weighted); ``val/mse`` is unweighted,
        so it stays comparable across loss weightings (e.g. when a sweep varies γ). Conditions
        are never dropped here (``condition_dropout=False``): the classifier-free-guidance coin
        would only add noise to a number meant to compare checkpoints.
        """
        generator = torch.Generator(device=self.noise_gen.device).manual_seed(
            self.cfg.seed + 12_345
        )
        losses, mses = [], []
        for i, batch in enumerate(val_loader):
            if i >= self.tc.val_batches:
                break
            batch = _to_device(_resize_batch(batch, self.tc.size), self.device)
            batch["condition_dropout"] = False
            loss, logs = self._loss(
                lambda b, g: self.spec.loss(self.ema.model, b, g), batch, generator
            )
            losses.append(float(loss))
            mses.append(float(logs.get("mse", loss)))
        if not losses:
            return {}
        return {"val/loss": sum(losses) / len(losses), "val/mse": sum(mses) / len(mses)}

    def _sample(self, dataset: Dataset, run: tracking.Run | None) -> Path | None:
        if len(dataset) == 0:
            return None
        from torch.utils.data import default_collate

        batch = _to_device(_resize_batch(default_collate([dataset[0]]), self.tc.size), self.device)
        generator = torch.Generator(device=self.noise_gen.device).manual_seed(self.cfg.seed + 777)
        conditions = Conditions.from_batch(batch, device=self.device)
        video = self.spec.sample(
            self.ema.model,
            conditions,
            steps=self.tc.sample_steps,
            guidance_scale=self.cfg.model.sample.guidance_scale,
            generator=generator,
        )
        path = self.out_dir / "samples" / f"step{self.step:07d}.mp4"
        write_sample_video(
            path,
            video[0],
            batch["video"][0],
            batch["audio"][0],
            self.cfg.data.fps,
            self.cfg.data.sample_rate,
        )
        if run is not None:
            run.log_artifact(path, "samples")
        return path

    def fit(self) -> TrainResult:
        env = self.dist_env
        created = distributed.init(env, self.device, **self._ddp_init_options())
        try:
            return self._fit()
        except BaseException as err:
            self._end_open_run(err)
            raise
        finally:
            distributed.cleanup(created)

    def _end_open_run(self, err: BaseException) -> None:
        """A run that fails at any point (data set-up, the first checkpoint, the loop) ends
        its MLflow run FAILED (KILLED on Ctrl-C), never leaves it RUNNING."""
        run_id = getattr(self, "run_id", None)  # set up by _setup(), or from a checkpoint
        if not run_id or not self.dist_env.is_main:
            return
        try:
            run = tracking.Run(run_id, self.cfg.tracking.uri)
            if run.info.status != "RUNNING":  # the loop ended it already
                return
            run.set_tags({"error": f"{type(err).__name__}: {err}"[:5000]})
            run.end("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        except Exception as tracking_err:  # the original error matters more
            warnings.warn(
                f"could not end MLflow run {run_id}: {tracking_err}", RuntimeWarning, stacklevel=2
            )

    def _ddp_init_options(self) -> dict:
        ddp = self.tc.get("ddp") or {}
        return {"backend": ddp.get("backend", "auto"), "timeout_min": ddp.get("timeout_min", 30)}

    def _fit(self) -> TrainResult:
        env, main = self.dist_env, self.dist_env.is_main
        # Every rank uses rank 0's output folder and resume decision (Hydra's timestamped
        # folders may differ by a second between processes).
        self.out_dir = Path(distributed.broadcast_object(str(self.out_dir), env))
        self.ckpt_dir = self.out_dir / "checkpoints"
        self._setup()
        resume_from = distributed.on_main(self._resume_path, env)
        if resume_from is not None:
            self.load_checkpoint(resume_from)
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.yaml").write_text(OmegaConf.to_yaml(to_container(self.cfg)))

        with distributed.main_first(env):  # rank 0 generates / prepares a missing cache first
            train_set, val_set, cache = build_datasets(self.cfg)
        run = self._open_run() if main else _NoRun()
        # Which vocal separator the clips' audio went through (read from the cache itself).
        run.set_tags({"data.separator": cache_separator(cache)})
        if resume_from is None:
            self.save_checkpoint()  # records the MLflow run id, so a kill before the first save still resumes it
        stream = BatchStream(
            len(train_set),
            self.tc.batch_size,
            self.cfg.seed,
            start_batch=self.step,
            rank=env.rank,
            world_size=env.world_size,
        )
        workers = int(self.tc.num_workers)
        loader = DataLoader(
            train_set,
            batch_sampler=stream,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=self.device.type == "cuda",
        )
        val_loader = DataLoader(
            val_set, batch_size=self.tc.batch_size, shuffle=False, num_workers=0
        )

        if self.step == 0 and main:
            initial = self.validate(val_loader)
            self.initial_val_loss = initial.get("val/loss")
            if initial:
                run.log_metrics(initial, step=0)

        from tqdm.auto import tqdm

        bar = tqdm(
            total=self.tc.steps,
            initial=self.step,
            desc=f"train {self.cfg.model.name}",
            disable=not (self.progress and main),
            dynamic_ncols=True,
        )
        self.model.train()
        last_loss, val_loss, val_metrics, metrics = float("nan"), None, {}, {}
        window: list[float] = []
        tagged_compile = "off"
        t_start = time.perf_counter()
        status = "FAILED"
        try:
            for batch in loader:
                if self.step >= self.tc.steps:
                    break
                batch = _to_device(_resize_batch(batch, self.tc.size), self.device)
                last_loss, logs, grad_norm = self.train_step(batch)
                if self.compile_status != tagged_compile:  # compiled, or fell back to eager
                    run.set_tags({"compile": self.compile_status})
                    tagged_compile = self.compile_status
                self.losses.append(last_loss)
                window.append(last_loss)
                bar.update(1)
                bar.set_postfix(loss=f"{last_loss:.4f}")

                if self.step % self.tc.log_every == 0 or self.step == self.tc.steps:
                    metrics = {
                        "train/loss": sum(window) / len(window),
                        "train/lr": self.scheduler.get_last_lr()[0],
                        "train/grad_norm": float(grad_norm),
                        "train/steps_per_s": self.step / max(1e-9, time.perf_counter() - t_start),
                    }
                    metrics.update({f"train/{k}": float(v) for k, v in logs.items()})
                    window.clear()
                    run.log_metrics(metrics, step=self.step)
                if main and (self.step % self.tc.val_every == 0 or self.step == self.tc.steps):
                    val_metrics = self.validate(val_loader)
                    val_loss = val_metrics.get("val/loss")
                    if val_metrics:
                        run.log_metrics(val_metrics, step=self.step)
                        bar.set_postfix(loss=f"{last_loss:.4f}", val=f"{val_loss:.4f}")
                    if self.reporter is not None:
                        # Without validation batches there is no val/loss to report; the
                        # training loss never stands in for it.
                        self.reporter(self.step, {**val_metrics, "train/loss": last_loss})
                if self.step % self.tc.ckpt_every == 0 or self.step == self.tc.steps:
                    self.save_checkpoint()
            bar.close()
            if main and self.tc.sample_at_end and self.spec.sample is not None:
                self._sample(val_set if len(val_set) else train_set, run)
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except Exception as err:
            run.set_tags({"error": f"{type(err).__name__}: {err}"[:5000]})
            raise
        finally:
            bar.close()
            if status != "FINISHED":
                run.end(status)
        head, tail = self.losses[:LOSS_WINDOW], self.losses[-LOSS_WINDOW:]
        first_loss = sum(head) / len(head) if head else math.nan
        final_loss = sum(tail) / len(tail) if tail else math.nan
        final = {"final/train_loss": final_loss, "final/first_loss": first_loss}
        if val_metrics:
            final["final/val_loss"] = val_metrics["val/loss"]
            final["final/val_mse"] = val_metrics["val/mse"]
        run.log_metrics(final, step=self.step)
        run.end("FINISHED")
        summary = {
            "step": self.step,
            "first_loss": first_loss,
            "final_loss": final_loss,
            "val_loss": val_loss,
            "initial_val_loss": self.initial_val_loss,
            "run_id": self.run_id,
            "cache": str(cache),
            "world_size": env.world_size,
        }
        if main:
            (self.out_dir / "result.json").write_text(json.dumps(summary, indent=2))
        return TrainResult(
            step=self.step,
            out_dir=self.out_dir,
            checkpoint=self.ckpt_dir / CHECKPOINT_NAME,
            first_loss=first_loss,
            final_loss=final_loss,
            val_loss=val_loss,
            initial_val_loss=self.initial_val_loss,
            run_id=self.run_id,
            losses=list(self.losses),
            metrics={**metrics, **final},
            rank=env.rank,
        )


def train(cfg: DictConfig, out_dir: str | Path, **kwargs) -> TrainResult:
    return Trainer(cfg, out_dir, **kwargs).fit()
