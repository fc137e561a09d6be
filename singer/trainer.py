"""The training loop behind ``python -m singer.train`` (and every sweep trial).

It knows ModelSpecs only. The pieces around the loop live beside it:

- :mod:`singer.train_state`: checkpoints that resume exactly (weights, optimizer, LR schedule,
  EMA, counters and every rank's random streams);
- :mod:`singer.acceleration`: the GPU-path switches (bf16 autocast, ``torch.compile`` with its
  eager fallback, SDPA kernels, channels-last, gradient checkpointing, fused AdamW);
- :mod:`singer.data.batches`: the datasets of a config and the seeded batch stream, whose
  order is a pure function of (seed, batch index);
- :mod:`singer.distributed`: several processes (torchrun, or a multi-task submitit job) train
  one model with DistributedDataParallel;
- :mod:`singer.tracking`: the MLflow run.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from singer import distributed, tracking
from singer.acceleration import (
    Compiler,
    autocast_dtype,
    compile_target,
    configure_torch,
    forward_context,
    prepare_model,
    resolve_device,
    sdpa_context,
)
from singer.config import to_container
from singer.data.batches import build_datasets, loaders, resize_batch, to_device
from singer.inference import sample_video
from singer.models.spec import ModelSpec, count_parameters, get_model_spec
from singer.optim import EMA, build_optimizer
from singer.separation.base import cache_separator
from singer.train_state import Checkpointer, TrainState, rng_state, set_rng_state

LOSS_WINDOW = 10  # diffusion losses are noisy per batch (random t): compare window means


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainResult:
    step: int
    out_dir: Path
    checkpoint: Path
    first_loss: float  # mean training loss of the first LOSS_WINDOW steps
    final_loss: float  # mean training loss of the last LOSS_WINDOW steps
    val_loss: float | None  # None when validation had no batches (an empty val split)
    initial_val_loss: float | None  # before the first step, same batches and noise as val_loss
    run_id: str | None
    losses: list[float] = field(default_factory=list)  # every step's training loss
    metrics: dict[str, float] = field(default_factory=dict)
    rank: int = 0  # this process's DDP rank; only rank 0 has validated, logged and written

    def write_summary(self, **extra) -> Path:
        """``<out_dir>/result.json``: the scalar results and ``extra``."""
        keys = ("step", "first_loss", "final_loss", "val_loss", "initial_val_loss", "run_id")
        summary = {key: getattr(self, key) for key in keys} | extra
        path = self.out_dir / "result.json"
        path.write_text(json.dumps(summary, indent=2))
        return path


class _LossModule(torch.nn.Module):
    """``spec.loss(model, batch, generator)`` as a module's forward, so DistributedDataParallel
    sees the whole training forward pass (its gradient hooks are armed in ``forward``)."""

    def __init__(self, model: torch.nn.Module, loss_fn: Callable):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: dict, generator: torch.Generator):
        return self.loss_fn(self.model, batch, generator)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


# -- the trainer ----------------------------------------------------------------------------
Reporter = Callable[[int, dict[str, float]], None]


class Trainer:
    """Trains one ModelSpec from a composed config; ``fit()`` resumes when asked to.

    ``reporter(step, metrics)`` is called on rank 0 after each validation with the validation
    metrics (``val/loss``, ``val/mse``; none when validation had no batches) and ``train/loss``.
    """

    def __init__(
        self,
        cfg: DictConfig,
        out_dir: str | Path,
        *,
        reporter: Reporter | None = None,
        progress: bool = True,
    ):
        self.cfg, self.tc = cfg, cfg.trainer
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
        self.compiler = Compiler(self.tc)
        self.state = TrainState()

    @property
    def compile_status(self) -> str:
        return self.compiler.status

    # set-up -------------------------------------------------------------------------------
    def _setup(self) -> None:
        """Model, EMA, optimizer, LR schedule, generators and checkpointer; writes nothing."""
        tc, env, seed = self.tc, self.dist_env, self.cfg.seed
        configure_torch(tc, self.device)
        torch.manual_seed(seed)  # the same initial weights on every rank
        self.model = self.spec.build(self.cfg).to(self.device)
        prepare_model(self.model, tc, self.cfg.model.name)
        self.ema = EMA(self.model, tc.ema_decay)
        self.optimizer, self.scheduler = build_optimizer(self.model, tc, self.device)
        gen_device = self.device if self.device.type == "cuda" else "cpu"
        self.noise_gen = torch.Generator(device=gen_device).manual_seed(
            distributed.rank_seed(seed + 1, env.rank)
        )
        if env.enabled:  # dropout etc.: a stream of its own on every rank
            torch.manual_seed(distributed.rank_seed(seed, env.rank))
        if self.compiler.enabled:
            self.compiler.compile(compile_target(self.model))
        self._forward = distributed.wrap(
            _LossModule(self.model, self.spec.loss), env, self.device, tc.get("ddp")
        )
        self.checkpointer = Checkpointer(
            self.ckpt_dir, env=env, device=self.device, seed=seed, config=to_container(self.cfg)
        )

    def _parts(self) -> dict:
        return {
            "model": self.model,
            "ema": self.ema.model,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
        }

    def save_checkpoint(self) -> Path:
        return self.checkpointer.save(self._parts(), self.state, self.noise_gen)

    def load_checkpoint(self, path: Path) -> None:
        self.checkpointer.load(path, self._parts(), self.state, self.noise_gen)

    # one step -----------------------------------------------------------------------------
    def train_step(self, batch: dict) -> tuple[float, dict, torch.Tensor]:
        """One optimisation step on a batch already on the device.

        Returns (the loss averaged over ranks, the spec's logs, the gradient norm before
        clipping). While the backbone is compiled, a failure of the compiled step (compiling
        happens on the first call, and again on a recompile) switches it back to eager with a
        warning, restores the random streams and runs the same step eagerly.
        """
        if not self.compiler.active:
            return self._optimize(batch)
        rng = rng_state(self.noise_gen, self.device)
        try:
            return self._optimize(batch)
        except NonFiniteLossError:
            raise
        except Exception as err:
            self.compiler.fall_back(err)
            self.optimizer.zero_grad(set_to_none=True)
            set_rng_state(rng, self.noise_gen, self.device)
            return self._optimize(batch)

    def _optimize(self, batch: dict) -> tuple[float, dict, torch.Tensor]:
        with forward_context(self.device, self.amp_dtype, self.attention):
            loss, logs = self._forward(batch, self.noise_gen)
        loss_value = distributed.mean(loss.detach(), self.dist_env)
        if not torch.isfinite(loss_value):
            raise NonFiniteLossError(f"loss is {loss_value.item()} at step {self.state.step}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tc.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update(self.model, self.state.step)
        self.state.step += 1
        return loss_value.item(), logs, grad_norm

    def validate(self, val_loader: DataLoader) -> dict[str, float]:
        """:func:`validate` with this run's EMA weights."""
        return validate(
            self.spec, self.ema.model, val_loader, self.cfg, self.device, self.amp_dtype
        )

    # the run ------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        ddp = self.tc.get("ddp") or {}
        created = distributed.init(
            self.dist_env, self.device, ddp.get("backend", "auto"), ddp.get("timeout_min", 30)
        )
        try:
            return self._fit()
        except BaseException as err:
            # Whatever failed (data set-up, the first checkpoint, the loop, the sample video),
            # the MLflow run ends FAILED (KILLED on Ctrl-C) with the error; never RUNNING.
            if self.state.run_id and self.dist_env.is_main:
                tracking.end_failed_run(self.state.run_id, self.cfg.tracking.uri, err)
            raise
        finally:
            distributed.cleanup(created)

    def _fit(self) -> TrainResult:
        env, main, state = self.dist_env, self.dist_env.is_main, self.state
        # Every rank uses rank 0's output folder and resume decision (Hydra's timestamped
        # folders may differ by a second between processes).
        self.out_dir = Path(distributed.broadcast_object(str(self.out_dir), env))
        self.ckpt_dir = self.out_dir / "checkpoints"
        self._setup()
        resume_from = distributed.on_main(
            lambda: self.checkpointer.resume_path(self.tc.resume), env
        )
        if resume_from is not None:
            self.load_checkpoint(resume_from)
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.yaml").write_text(OmegaConf.to_yaml(to_container(self.cfg)))

        with distributed.main_first(env):  # rank 0 generates / prepares a missing cache first
            train_set, val_set, cache = build_datasets(self.cfg)
        run = self._open_run(cache)
        if resume_from is None:
            self.save_checkpoint()  # records the MLflow run id, so a kill before the first save still resumes it
        loader, val_loader = loaders(
            train_set, val_set, self.tc, self.cfg.seed, state.step, env, self.device
        )
        if state.step == 0 and main:
            initial = self.validate(val_loader)
            state.initial_val_loss = initial.get("val/loss")
            if initial:
                run.log_metrics(initial, step=0)

        val_metrics, metrics = self._loop(loader, val_loader, run)
        if main and self.tc.sample_at_end and self.spec.sample is not None:
            dataset = val_set if len(val_set) else train_set
            path = self.out_dir / "samples" / f"step{state.step:07d}.mp4"
            if sample_video(self.spec, self.ema.model, dataset, path, self.cfg, self.device):
                run.log_artifact(path, "samples")
        return self._finish(run, val_metrics, metrics, cache)

    def _open_run(self, cache: Path) -> tracking.Run | tracking.NoRun:
        """Rank 0's MLflow run (continued on resume); a stand-in that logs nothing elsewhere."""
        if not self.dist_env.is_main:
            return tracking.NoRun()
        sizes = {
            "params.total": count_parameters(self.model),
            "params.trainable": count_parameters(self.model, trainable_only=True),
        }
        run = tracking.open_training_run(self.cfg, self.out_dir, self.state.run_id, sizes)
        self.state.run_id = run.run_id
        # Which vocal separator the clips' audio went through (read from the cache itself).
        run.set_tags({"data.separator": cache_separator(cache)})
        return run

    def _loop(
        self, loader: DataLoader, val_loader: DataLoader, run: tracking.Run
    ) -> tuple[dict, dict]:
        """Train up to ``trainer.steps``: log, validate (rank 0) and checkpoint on schedule.
        Returns the last validation metrics and the last logged training metrics."""
        tc, state, main = self.tc, self.state, self.dist_env.is_main
        val_metrics, metrics, window = {}, {}, []
        tagged_compile = "off"
        t_start = time.perf_counter()
        self.model.train()
        with tqdm(
            total=tc.steps,
            initial=state.step,
            desc=f"train {self.cfg.model.name}",
            disable=not (self.progress and main),
            dynamic_ncols=True,
        ) as bar:
            for batch in loader:
                if state.step >= tc.steps:
                    break
                batch = to_device(resize_batch(batch, tc.size), self.device)
                loss, logs, grad_norm = self.train_step(batch)
                if self.compile_status != tagged_compile:  # compiled, or fell back to eager
                    run.set_tags({"compile": self.compile_status})
                    tagged_compile = self.compile_status
                state.losses.append(loss)
                window.append(loss)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
                last = state.step == tc.steps
                if state.step % tc.log_every == 0 or last:
                    metrics = {
                        "train/loss": _mean(window),
                        "train/lr": self.scheduler.get_last_lr()[0],
                        "train/grad_norm": float(grad_norm),
                        "train/steps_per_s": state.step / max(1e-9, time.perf_counter() - t_start),
                        **{f"train/{k}": float(v) for k, v in logs.items()},
                    }
                    window.clear()
                    run.log_metrics(metrics, step=state.step)
                if main and (state.step % tc.val_every == 0 or last):
                    val_metrics = self.validate(val_loader)
                    if val_metrics:
                        run.log_metrics(val_metrics, step=state.step)
                        bar.set_postfix(loss=f"{loss:.4f}", val=f"{val_metrics['val/loss']:.4f}")
                    if self.reporter is not None:
                        # Without validation batches there is no val/loss to report; the
                        # training loss never stands in for it.
                        self.reporter(state.step, {**val_metrics, "train/loss": loss})
                if state.step % tc.ckpt_every == 0 or last:
                    self.save_checkpoint()
        return val_metrics, metrics

    def _finish(
        self, run: tracking.Run, val_metrics: dict, metrics: dict, cache: Path
    ) -> TrainResult:
        """Log the final metrics, end the run, write ``result.json`` (rank 0)."""
        state, env = self.state, self.dist_env
        final = final_metrics(state.losses, val_metrics)
        run.log_metrics(final, step=state.step)
        run.end("FINISHED")
        result = TrainResult(
            step=state.step,
            out_dir=self.out_dir,
            checkpoint=self.checkpointer.path,
            first_loss=final["final/first_loss"],
            final_loss=final["final/train_loss"],
            val_loss=val_metrics.get("val/loss"),
            initial_val_loss=state.initial_val_loss,
            run_id=state.run_id,
            losses=list(state.losses),
            metrics={**metrics, **final},
            rank=env.rank,
        )
        if env.is_main:
            result.write_summary(cache=str(cache), world_size=env.world_size)
        return result


@torch.no_grad()
def validate(
    spec: ModelSpec,
    model: torch.nn.Module,
    val_loader: DataLoader,
    cfg: DictConfig,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Losses of ``model`` over the first ``trainer.val_batches`` batches of ``val_loader``
    with fixed noise (``seed + 12345``); ``{}`` when there are none.

    ``val/loss`` is the training objective (min-SNR weighted); ``val/mse`` is unweighted, so it
    stays comparable across loss weightings (e.g. when a sweep varies γ). Conditions are never
    dropped here (``condition_dropout=False``): the classifier-free-guidance coin would only
    add noise to a number meant to compare checkpoints.
    """
    tc = cfg.trainer
    generator = torch.Generator(device=device if device.type == "cuda" else "cpu")
    generator.manual_seed(cfg.seed + 12_345)
    losses, mses = [], []
    for i, batch in enumerate(val_loader):
        if i >= tc.val_batches:
            break
        batch = to_device(resize_batch(batch, tc.size), device)
        batch["condition_dropout"] = False
        with forward_context(device, amp_dtype, tc.get("attention", "auto")):
            loss, logs = spec.loss(model, batch, generator)
        losses.append(float(loss))
        mses.append(float(logs.get("mse", loss)))
    if not losses:
        return {}
    return {"val/loss": _mean(losses), "val/mse": _mean(mses)}


def final_metrics(losses: list[float], val_metrics: dict[str, float]) -> dict[str, float]:
    """The run's closing numbers: training loss over the first and last ``LOSS_WINDOW`` steps,
    and the last validation (none when validation had no batches)."""
    final = {
        "final/train_loss": _mean(losses[-LOSS_WINDOW:]),
        "final/first_loss": _mean(losses[:LOSS_WINDOW]),
    }
    if val_metrics:
        final["final/val_loss"] = val_metrics["val/loss"]
        final["final/val_mse"] = val_metrics["val/mse"]
    return final


def train(cfg: DictConfig, out_dir: str | Path, **kwargs) -> TrainResult:
    return Trainer(cfg, out_dir, **kwargs).fit()
