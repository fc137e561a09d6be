"""The training loop behind ``python -m singer.train`` (and every sweep trial).

It knows ModelSpecs only. Checkpoints resume exactly: model, optimizer, LR schedule, EMA,
the diffusion-noise generator, torch's global RNG, the data position and the step are all
saved, and the data order is a pure function of (seed, batch index). On CPU a run killed
and resumed ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

from singer import tracking
from singer.config import flatten, to_container
from singer.models.spec import Conditions, ModelSpec, count_parameters, get_model_spec

CHECKPOINT_NAME = "last.pt"
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
    val_loss: float | None
    initial_val_loss: float | None  # before the first step, same batches and noise as val_loss
    run_id: str | None
    losses: list[float] = field(default_factory=list)  # every step's training loss
    metrics: dict[str, float] = field(default_factory=dict)


# -- small pieces ---------------------------------------------------------------------------
def resolve_device(spec: str = "auto") -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={spec} was asked for, but CUDA is not available")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision in ("auto", "bf16"):
        return torch.bfloat16
    raise ValueError(f"trainer.precision must be auto, fp32 or bf16, got '{precision}'")


class BatchStream:
    """Batches of dataset indices, a pure function of (seed, batch index).

    The index stream is the concatenation of per-epoch permutations; batch k holds
    items [k·B, (k+1)·B) of it, so resuming at batch k needs no saved sampler state.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, start_batch: int = 0):
        if num_items == 0:
            raise ValueError("the training split is empty")
        self.num_items, self.batch_size, self.seed, self.start_batch = num_items, batch_size, seed, start_batch

    def _epoch(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.num_items, generator=g).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        position = self.start_batch * self.batch_size
        epoch, offset = divmod(position, self.num_items)
        order = self._epoch(epoch)
        while True:
            batch = []
            while len(batch) < self.batch_size:
                if offset == self.num_items:
                    epoch, offset = epoch + 1, 0
                    order = self._epoch(epoch)
                batch.append(order[offset])
                offset += 1
            yield batch


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


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


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


def build_datasets(cfg: DictConfig) -> tuple[Dataset, Dataset, Path]:
    """Train and validation ClipDatasets for the config (SynthSing generated on first use)."""
    from singer.data.cache import ensure_synthsing
    from singer.data.dataset import ClipDataset

    data = cfg.data
    if data.cache_dir:
        cache = Path(data.cache_dir)
    else:
        synth = data.synth
        cache = ensure_synthsing(
            data.root, clips=synth.clips, seconds=synth.seconds, kind=synth.kind, seed=synth.seed,
            size=synth.size, fps=data.fps, sample_rate=data.sample_rate, clip_size=cfg.trainer.size,
        )  # fmt: skip
    kinds = list(data.kinds) if data.kinds else None
    common = dict(
        num_frames=cfg.trainer.num_frames, motion_frames=max(1, cfg.model.get("motion_frames", 0)),
        val_fraction=data.val_fraction, seed=cfg.data.get("split_seed", 0), kinds=kinds,
    )  # fmt: skip
    train = ClipDataset(cache, split="train", **common)
    val = ClipDataset(cache, split="val", **common)
    return train, val, cache


def write_sample_video(path: Path, generated: torch.Tensor, truth: torch.Tensor | None, audio: torch.Tensor,
                       fps: float, sample_rate: int) -> Path:  # fmt: skip
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

    def __init__(self, cfg: DictConfig, out_dir: str | Path, *, reporter: Reporter | None = None,
                 progress: bool = True):  # fmt: skip
        self.cfg = cfg
        self.tc = cfg.trainer
        self.out_dir = Path(out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.reporter = reporter
        self.progress = progress
        self.device = resolve_device(cfg.device)
        self.amp_dtype = autocast_dtype(self.tc.precision, self.device)
        self.spec: ModelSpec = get_model_spec(cfg.model.name)

    # state ------------------------------------------------------------------------------
    def _setup(self) -> None:
        if self.tc.threads:
            torch.set_num_threads(int(self.tc.threads))
        torch.manual_seed(self.cfg.seed)
        self.model = self.spec.build(self.cfg).to(self.device)
        self.ema = EMA(self.model, self.tc.ema_decay)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(
            trainable, lr=self.tc.lr, betas=tuple(self.tc.betas), weight_decay=self.tc.weight_decay, fused=fused
        )
        warmup = max(1, int(self.tc.warmup_steps))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: min(1.0, (s + 1) / warmup))
        gen_device = self.device if self.device.type == "cuda" else "cpu"
        self.noise_gen = torch.Generator(device=gen_device).manual_seed(self.cfg.seed + 1)
        self.step = 0
        self.losses: list[float] = []
        self.initial_val_loss: float | None = None
        self.run_id: str | None = None

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

    def save_checkpoint(self) -> Path:
        """Atomic write: a kill during saving leaves the previous checkpoint intact."""
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        path = self.ckpt_dir / CHECKPOINT_NAME
        tmp = path.with_suffix(".pt.tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)
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
            tc.experiment, run_name=tc.run_name or self.out_dir.name, tags=self._model_tags(),
            parent_run_id=tc.get("parent_run_id"), uri=tc.uri,
        )  # fmt: skip
        self.run_id = run.run_id
        run.log_params(flatten(to_container(self.cfg)))
        run.log_params({"params.total": count_parameters(self.model),
                        "params.trainable": count_parameters(self.model, trainable_only=True)})  # fmt: skip
        run.log_dict(to_container(self.cfg), "config.json")
        run.set_tags({"out_dir": str(self.out_dir.resolve())})
        return run

    # loop ---------------------------------------------------------------------------------
    def _loss(self, model: torch.nn.Module, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            loss, logs = self.spec.loss(model, batch, generator)
        return loss, logs

    @torch.no_grad()
    def validate(self, val_loader: DataLoader) -> dict[str, float]:
        """EMA-weight losses over the first ``val_batches`` val batches with fixed noise.

        ``val/loss`` is the training objective (min-SNR weighted); ``val/mse`` is unweighted,
        so it stays comparable across loss weightings (e.g. when a sweep varies γ).
        """
        generator = torch.Generator(device=self.noise_gen.device).manual_seed(self.cfg.seed + 12_345)
        losses, mses = [], []
        for i, batch in enumerate(val_loader):
            if i >= self.tc.val_batches:
                break
            batch = _to_device(_resize_batch(batch, self.tc.size), self.device)
            loss, logs = self._loss(self.ema.model, batch, generator)
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
        conditions = Conditions(audio=batch["audio"], ref=batch["ref"], num_frames=batch["video"].shape[2],
                                motion=batch["motion"])  # fmt: skip
        video = self.spec.sample(
            self.ema.model, conditions, steps=self.tc.sample_steps,
            guidance_scale=self.cfg.model.sample.guidance_scale, generator=generator,
        )  # fmt: skip
        path = self.out_dir / "samples" / f"step{self.step:07d}.mp4"
        write_sample_video(path, video[0], batch["video"][0], batch["audio"][0], self.cfg.data.fps,
                           self.cfg.data.sample_rate)  # fmt: skip
        if run is not None:
            run.log_artifact(path, "samples")
        return path

    def fit(self) -> TrainResult:
        self._setup()
        resume_from = self._resume_path()
        if resume_from is not None:
            self.load_checkpoint(resume_from)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "config.yaml").write_text(OmegaConf.to_yaml(to_container(self.cfg)))

        train_set, val_set, cache = build_datasets(self.cfg)
        run = self._open_run()
        if resume_from is None:
            self.save_checkpoint()  # records the MLflow run id, so a kill before the first save still resumes it
        stream = BatchStream(len(train_set), self.tc.batch_size, self.cfg.seed, start_batch=self.step)
        workers = int(self.tc.num_workers)
        loader = DataLoader(train_set, batch_sampler=stream, num_workers=workers, persistent_workers=workers > 0,
                            pin_memory=self.device.type == "cuda")  # fmt: skip
        val_loader = DataLoader(val_set, batch_size=self.tc.batch_size, shuffle=False, num_workers=0)

        if self.step == 0:
            initial = self.validate(val_loader)
            self.initial_val_loss = initial.get("val/loss")
            if initial:
                run.log_metrics(initial, step=0)

        from tqdm.auto import tqdm

        bar = tqdm(total=self.tc.steps, initial=self.step, desc=f"train {self.cfg.model.name}",
                   disable=not self.progress, dynamic_ncols=True)  # fmt: skip
        self.model.train()
        last_loss, val_loss, val_metrics, metrics = float("nan"), None, {}, {}
        window: list[float] = []
        t_start = time.perf_counter()
        status = "FAILED"
        try:
            for batch in loader:
                if self.step >= self.tc.steps:
                    break
                batch = _to_device(_resize_batch(batch, self.tc.size), self.device)
                loss, logs = self._loss(self.model, batch, self.noise_gen)
                if not torch.isfinite(loss.detach()):
                    raise NonFiniteLossError(f"loss is {loss.item()} at step {self.step}")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tc.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                self.ema.update(self.model, self.step)
                self.step += 1
                last_loss = loss.item()
                self.losses.append(last_loss)
                window.append(last_loss)
                bar.update(1)
                bar.set_postfix(loss=f"{last_loss:.4f}")

                if self.step % self.tc.log_every == 0 or self.step == self.tc.steps:
                    metrics = {"train/loss": sum(window) / len(window), "train/lr": self.scheduler.get_last_lr()[0],
                               "train/grad_norm": float(grad_norm),
                               "train/steps_per_s": self.step / max(1e-9, time.perf_counter() - t_start)}  # fmt: skip
                    metrics.update({f"train/{k}": float(v) for k, v in logs.items()})
                    window.clear()
                    run.log_metrics(metrics, step=self.step)
                if self.step % self.tc.val_every == 0 or self.step == self.tc.steps:
                    val_metrics = self.validate(val_loader)
                    val_loss = val_metrics.get("val/loss")
                    if val_metrics:
                        run.log_metrics(val_metrics, step=self.step)
                        bar.set_postfix(loss=f"{last_loss:.4f}", val=f"{val_loss:.4f}")
                    if self.reporter is not None:
                        self.reporter(self.step, {"val/loss": last_loss, "val/mse": last_loss, **val_metrics,
                                                  "train/loss": last_loss})  # fmt: skip
                if self.step % self.tc.ckpt_every == 0 or self.step == self.tc.steps:
                    self.save_checkpoint()
            bar.close()
            if self.tc.sample_at_end and self.spec.sample is not None:
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
        summary = {"step": self.step, "first_loss": first_loss, "final_loss": final_loss, "val_loss": val_loss,
                   "initial_val_loss": self.initial_val_loss,
                   "run_id": self.run_id, "cache": str(cache)}  # fmt: skip
        (self.out_dir / "result.json").write_text(json.dumps(summary, indent=2))
        return TrainResult(
            step=self.step, out_dir=self.out_dir, checkpoint=self.ckpt_dir / CHECKPOINT_NAME,
            first_loss=first_loss, final_loss=final_loss, val_loss=val_loss,
            initial_val_loss=self.initial_val_loss, run_id=self.run_id,
            losses=list(self.losses), metrics={**metrics, **final},
        )  # fmt: skip


def train(cfg: DictConfig, out_dir: str | Path, **kwargs) -> TrainResult:
    return Trainer(cfg, out_dir, **kwargs).fit()
