"""The evaluator: a checkpoint + a fixed protocol → metrics with CIs (JSON and MLflow).

It knows ModelSpecs only: a model is loaded with :func:`singer.inference.load_model`, clips are
generated through ``spec.sample`` and scored by metrics built by name from ``METRICS``. A
baseline is evaluated exactly like SINGER. Importing this module has no side effects; the sweep
driver calls :func:`evaluate_checkpoint` inside its trial jobs.

Determinism: clips are fixed windows of the split (evenly spaced over it), batched in order;
batch ``b`` of seed ``s`` is generated from ``torch.Generator().manual_seed(s·1_000_003 + b)``.
The same protocol, checkpoint and data therefore give the same videos, and the band ablation
regenerates every band-stopped batch with exactly the noise of its full-band batch.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from singer.evaluation.bands import BandSensitivity, bandstop, plot_heatmap, plot_sensitivity
from singer.evaluation.bootstrap import bootstrap_ci
from singer.evaluation.protocol import EvalProtocol, load_protocol

RUN_ID_PATTERN = re.compile(r"[0-9a-f]{32}")
SEED_STRIDE = 1_000_003  # batch seeds s·STRIDE + b never collide for < 1e6 batches


class EvaluationError(Exception):
    """A problem with the request (missing checkpoint, unusable model or data): exit status 2."""


class NotGenerativeError(EvaluationError):
    """The checkpoint's ModelSpec has no ``sample`` (it does not generate video)."""


@dataclass
class EvalResult:
    """What one evaluation produced.

    metrics:  ``{key: value}``, each the mean over seeds of the metric's ``compute()``.
    ci:       ``{key: (lo, hi)}``, percentile bootstrap over clips (per-clip metrics; per-clip
              values averaged over seeds first) or over seeds (set-level metrics, ≥ 2 seeds);
              ``(nan, nan)`` when there is nothing to resample.
    bands / probes: table rows (see ``singer.evaluation.bands`` / ``probes``), or None.
    path:     the ``metrics.json`` written (None when no output directory was used).
    """

    metrics: dict[str, float]
    ci: dict[str, tuple[float, float]]
    protocol: EvalProtocol
    model: str
    step: int
    checkpoint: str
    split: str
    clip_ids: list[str]
    run_id: str | None = None
    per_seed: dict[str, list[float]] = field(default_factory=dict)
    bands: list[dict] | None = None
    probes: list[dict] | None = None
    probe_errors: dict[str, str] = field(default_factory=dict)
    path: Path | None = None

    @property
    def protocol_hash(self) -> str:
        return self.protocol.hash()

    def mlflow_metrics(self) -> dict[str, float]:
        """``eval/<key>``, ``eval/<key>_ci_lo``, ``eval/<key>_ci_hi`` (CI keys only when finite)."""
        out = {}
        for key, value in self.metrics.items():
            out[f"eval/{key}"] = float(value)
            lo, hi = self.ci.get(key, (float("nan"), float("nan")))
            if np.isfinite(lo) and np.isfinite(hi):
                out[f"eval/{key}_ci_lo"], out[f"eval/{key}_ci_hi"] = float(lo), float(hi)
        return out

    def to_dict(self) -> dict:
        from singer.tracking import git_commit

        def clean(value):  # JSON has no NaN: write null
            return None if isinstance(value, float) and not np.isfinite(value) else value

        return {
            "model": self.model,
            "checkpoint": self.checkpoint,
            "step": self.step,
            "run_id": self.run_id,
            "split": self.split,
            "clips": self.clip_ids,
            "protocol": self.protocol.to_dict(),
            "protocol_hash": self.protocol_hash,
            "git": git_commit(),
            "metrics": {k: clean(v) for k, v in self.metrics.items()},
            "ci": {k: [clean(lo), clean(hi)] for k, (lo, hi) in self.ci.items()},
            "per_seed": {k: [clean(v) for v in vs] for k, vs in self.per_seed.items()},
            "bands": [{k: clean(v) for k, v in row.items()} for row in self.bands]
            if self.bands is not None
            else None,
            "probes": [{k: clean(v) for k, v in row.items()} for row in self.probes]
            if self.probes is not None
            else None,
            "probe_errors": self.probe_errors,
        }


# -- finding the checkpoint ---------------------------------------------------------------------
def resolve_target(target: str | Path, *, uri: str | None = None) -> Path:
    """A checkpoint file, a run directory, or an MLflow run id (via its ``out_dir`` tag) → checkpoint path."""
    from singer import tracking
    from singer.inference import resolve_checkpoint

    path = Path(target)
    if path.exists():
        try:
            return resolve_checkpoint(path)
        except FileNotFoundError as err:
            raise EvaluationError(str(err)) from None
    if RUN_ID_PATTERN.fullmatch(str(target)):
        try:
            out_dir = tracking.run_out_dir(str(target), uri)
        except LookupError as err:
            raise EvaluationError(
                f"{target} is not a file or directory, and as an MLflow run id: {err}"
            ) from None
        try:
            return resolve_checkpoint(out_dir)
        except FileNotFoundError as err:
            raise EvaluationError(f"MLflow run {target} points to {out_dir}, but: {err}") from None
    raise EvaluationError(
        f"no checkpoint at {target} (give a .pt file, a run directory or an MLflow run id)"
    )


# -- data ---------------------------------------------------------------------------------------
def _cache_dir(cfg, data_cache: str | Path | None, progress: bool) -> Path:
    """The prepared clip cache to evaluate on: explicit, the config's, or SynthSing (made if needed)."""
    if data_cache:
        return Path(data_cache)
    data = cfg.data
    if data.get("cache_dir"):
        return Path(data.cache_dir)
    from singer.data.cache import ensure_synthsing, separation_options

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
        progress=progress,
        **separation_options(data),
    )


def center_square(batch: dict) -> dict:
    """Centre-crop ``video``/``motion`` (``B×3×F×H×W``) and ``ref`` (``B×3×H×W``) to squares."""
    h, w = batch["video"].shape[-2:]
    if h == w:
        return batch
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    out = dict(batch)
    for key in ("video", "motion", "ref"):
        out[key] = batch[key][..., top : top + side, left : left + side]
    return out


def select_windows(num_windows: int, count: int) -> list[int]:
    """``count`` window indices spread evenly over ``range(num_windows)`` (all when fewer)."""
    if num_windows <= count:
        return list(range(num_windows))
    return sorted({int(round(x)) for x in np.linspace(0, num_windows - 1, count)})


def load_batches(
    cfg,
    protocol: EvalProtocol,
    *,
    split: str,
    count: int,
    data_cache=None,
    progress: bool = True,
    warn_fewer: bool = True,
) -> list[dict]:
    """Collated, centre-cropped, resized batches of the protocol's windows of ``split``.

    Each batch holds ``video B×3×F×H×W``, ``audio B×S``, ``ref``, ``motion``, ``cues B×F×K``,
    ``has_cues``, ``clip_id`` (``F`` = ``protocol.num_frames``, ``H = W`` = ``protocol.resolution``).
    """
    from singer.data.dataset import ClipDataset, collate
    from singer.trainer import _resize_batch

    if not protocol.is_resolved:
        protocol = protocol.resolve(cfg)
    cache = _cache_dir(cfg, data_cache, progress)
    kinds = list(cfg.data.kinds) if cfg.data.get("kinds") else None
    try:
        dataset = ClipDataset(
            cache,
            split=split,
            num_frames=protocol.num_frames,
            motion_frames=max(1, int(cfg.model.get("motion_frames", 0))),
            val_fraction=cfg.data.val_fraction,
            seed=cfg.data.get("split_seed", 0),
            kinds=kinds,
        )
    except (FileNotFoundError, ValueError) as err:
        raise EvaluationError(f"cannot read evaluation data from {cache}: {err}") from None
    if len(dataset) == 0:
        raise EvaluationError(
            f"the '{split}' split of {cache} has no windows of {protocol.num_frames} frames; "
            "try --split all or a smaller num_frames"
        )
    indices = select_windows(len(dataset), count)
    if warn_fewer and len(indices) < count:
        warnings.warn(
            f"the '{split}' split has only {len(indices)} windows; evaluating those instead of {count}",
            stacklevel=2,
        )
    batches = []
    for start in range(0, len(indices), protocol.batch_size):
        items = [dataset[i] for i in indices[start : start + protocol.batch_size]]
        batches.append(_resize_batch(center_square(collate(items)), protocol.resolution))
    return batches


def load_probe_batches(
    *,
    checkpoint=None,
    cfg=None,
    data_cache=None,
    protocol: EvalProtocol | None = None,
    progress: bool = True,
):
    """``(batches, cfg)`` of the probe windows (``protocol.probe_split``, at most ``probe_clips``).

    The data config comes from ``cfg``, else from ``checkpoint``'s saved config, else from the
    default training config.
    """
    from omegaconf import OmegaConf

    if cfg is None and checkpoint is not None:
        state = torch.load(resolve_target(checkpoint), map_location="cpu", weights_only=True)
        cfg = OmegaConf.create(state["config"])
    if cfg is None:
        from singer.config import compose

        cfg = compose([])
    protocol = protocol or EvalProtocol()
    if not protocol.is_resolved:
        protocol = protocol.resolve(cfg)
    batches = load_batches(
        cfg,
        protocol,
        split=protocol.probe_split,
        count=protocol.probe_clips,
        data_cache=data_cache,
        progress=progress,
        warn_fewer=False,
    )
    return batches, cfg


# -- generation and metrics -------------------------------------------------------------------------
def generate_batch(
    loaded,
    batch: dict,
    protocol: EvalProtocol,
    *,
    seed: int,
    batch_index: int,
    audio: torch.Tensor | None = None,
) -> torch.Tensor:
    """Video ``B×3×F×H×W`` in [-1, 1] (CPU float) for one batch, from fixed noise.

    ``audio`` (``B×S``) replaces the batch's audio (the band ablation); the noise depends only on
    ``(seed, batch_index)``.
    """
    from singer.models.spec import Conditions

    device = loaded.device
    generator = torch.Generator(device=device if device.type == "cuda" else "cpu")
    generator.manual_seed(int(seed) * SEED_STRIDE + int(batch_index))
    wav = batch["audio"] if audio is None else audio
    conditions = Conditions(
        audio=wav.to(device),
        ref=batch["ref"].to(device),
        num_frames=batch["video"].shape[2],
        motion=batch["motion"].to(device),
    )
    video = loaded.spec.sample(
        loaded.model,
        conditions,
        steps=protocol.steps,
        guidance_scale=protocol.guidance_scale,
        generator=generator,
    )
    expected = tuple(batch["video"].shape)
    if tuple(video.shape) != expected:
        raise EvaluationError(
            f"model '{loaded.spec.name}' sampled a video of shape {tuple(video.shape)}; expected {expected} (B×3×F×H×W)"
        )
    return video.detach().float().cpu()


def build_metrics(protocol: EvalProtocol) -> dict:
    """``{name: Metric}`` built by name from ``METRICS`` with ``protocol.metric_kwargs``.

    Unknown names raise the registry's error (listing the known ones); metrics that need a
    missing weight file raise ``singer.weights.MissingWeightsError``.
    """
    from singer.evaluation.protocol import ProtocolError
    from singer.registry import METRICS
    from singer.weights import MissingWeightsError, WeightsChecksumError

    metrics = {}
    for name in protocol.metrics:
        kwargs = protocol.metric_kwargs.get(name) or {}
        METRICS.check(name)  # unknown names: the registry's message, listing the known ones
        try:
            metric = METRICS.build(name, **kwargs)
        except (MissingWeightsError, WeightsChecksumError):
            raise
        except (TypeError, ValueError) as err:  # a bad or unknown argument in metric_kwargs.<name>
            raise ProtocolError(
                f"metric '{name}' rejects metric_kwargs.{name}={kwargs}: {err}"
            ) from None
        metric.reset()
        metrics[name] = metric
    return metrics


def reads_video(metric) -> bool:
    """Whether ``metric`` scores the generated video (``Metric.reads_video``). The band ablation
    leaves the others out: scored against the same audio (see ``singer.evaluation.bands``), their
    change is 0 by construction."""
    return bool(getattr(metric, "reads_video", True))


def make_eval_batch(
    batch: dict, video: torch.Tensor, audio: torch.Tensor, *, sample_rate: int, fps: float
):
    from singer.metrics.base import EvalBatch

    return EvalBatch(
        generated=video,
        reference=batch["video"],
        audio=audio,
        sample_rate=sample_rate,
        fps=fps,
        cues=batch["cues"],
        has_cues=torch.as_tensor(batch["has_cues"], dtype=torch.bool),
        clip_ids=list(batch["clip_id"]),
    )


def _summarise(
    per_seed: dict[str, list[float]], per_clip: dict[str, list[list[float]]], protocol: EvalProtocol
) -> tuple[dict, dict]:
    """Point estimates (mean over seeds) and CIs (bootstrap over clips, else over seeds)."""
    metrics, ci = {}, {}
    for key, values in per_seed.items():
        values_arr = np.asarray(values, dtype=np.float64)
        finite = values_arr[np.isfinite(values_arr)]
        metrics[key] = float(finite.mean()) if finite.size else float("nan")
        if key in per_clip:
            clips = np.asarray(per_clip[key], dtype=np.float64)  # seeds × clips
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN clip → NaN, dropped below
                units = np.nanmean(clips, axis=0)
        else:
            units = values_arr if len(values_arr) > 1 else np.zeros(0)
        _, lo, hi = bootstrap_ci(units, n=protocol.bootstrap, alpha=protocol.alpha)
        ci[key] = (lo, hi)
    return metrics, ci


# -- the entry point --------------------------------------------------------------------------------
def default_out_dir(checkpoint: Path, protocol_hash: str) -> Path:
    """``<run dir>/eval/<protocol hash>`` for ``<run dir>/checkpoints/last.pt``."""
    run_dir = (
        checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    )
    return run_dir / "eval" / protocol_hash


def evaluate_loaded(
    loaded,
    *,
    protocol: EvalProtocol | None = None,
    split: str = "val",
    data_cache: str | Path | None = None,
    seeds: Sequence[int] | None = None,
    bands: bool = False,
    probes: bool = False,
    checkpoint: str | Path = "",
    run_id: str | None = None,
    progress: bool = True,
) -> EvalResult:
    """Evaluate an already loaded model (``singer.inference.LoadedModel``); writes nothing."""
    from tqdm.auto import tqdm

    if loaded.spec.sample is None:
        raise NotGenerativeError(
            f"model '{loaded.spec.name}' does not generate video ({loaded.spec.description or 'no sample()'}); "
            "the evaluator scores generated clips only"
        )
    protocol = protocol or load_protocol()
    if seeds is not None:
        protocol = EvalProtocol(**{**protocol.to_dict(), "seeds": [int(s) for s in seeds]})
    protocol = protocol.resolve(loaded.cfg)
    metric_set = build_metrics(protocol)  # fail fast: unknown names, missing weights
    batches = load_batches(
        loaded.cfg,
        protocol,
        split=split,
        count=protocol.num_clips,
        data_cache=data_cache,
        progress=progress,
    )
    clip_ids = [
        f"{cid}@{int(start)}" for b in batches for cid, start in zip(b["clip_id"], b["start"])
    ]
    sr, fps = loaded.sample_rate, loaded.fps

    def eval_batch(batch, video, audio):
        return make_eval_batch(batch, video, audio, sample_rate=sr, fps=fps)

    sensitivity = None
    if bands:
        from singer.data.dataset import face_cue_names

        def band_metrics() -> dict:
            return {name: m for name, m in build_metrics(protocol).items() if reads_video(m)}

        sensitivity = BandSensitivity(protocol.bands, face_cue_names(), band_metrics, eval_batch)

    per_seed: dict[str, list[float]] = {}
    per_clip: dict[str, list[list[float]]] = {}
    work = len(protocol.seeds) * len(batches) * (1 + (len(protocol.bands) if bands else 0))
    bar = tqdm(
        total=work, desc=f"evaluate {loaded.spec.name}", unit="clip-batch", disable=not progress
    )
    for s_index, seed in enumerate(protocol.seeds):
        metrics = metric_set if s_index == 0 else build_metrics(protocol)
        if sensitivity is not None:
            sensitivity.start_seed()
        for b, batch in enumerate(batches):
            video = generate_batch(loaded, batch, protocol, seed=seed, batch_index=b)
            bar.update(1)
            eb = eval_batch(batch, video, batch["audio"])
            for metric in metrics.values():
                metric.update(eb)
            if sensitivity is not None:
                sensitivity.add_full(batch, video, batch["audio"])
                for i, (lo, hi) in enumerate(protocol.bands):
                    stopped = bandstop(
                        batch["audio"],
                        lo,
                        hi,
                        sr,
                        method=protocol.band_filter,
                        order=protocol.band_filter_order,
                    )
                    band_video = generate_batch(
                        loaded, batch, protocol, seed=seed, batch_index=b, audio=stopped
                    )
                    # Metrics score the output against the clip's own (full-band) audio: the band
                    # stop is an intervention on the model's input, not on what it is judged by.
                    sensitivity.add_band(i, batch, band_video, batch["audio"])
                    bar.update(1)
        for metric in metrics.values():
            for key, value in metric.compute().items():
                per_seed.setdefault(key, []).append(float(value))
            for key, values in metric.per_clip().items():
                per_clip.setdefault(key, []).append([float(v) for v in values])
        if sensitivity is not None:
            sensitivity.end_seed()
    bar.close()
    values, ci = _summarise(per_seed, per_clip, protocol)

    result = EvalResult(
        metrics=values,
        ci=ci,
        protocol=protocol,
        model=loaded.spec.name,
        step=loaded.step,
        checkpoint=str(checkpoint),
        split=split,
        clip_ids=clip_ids,
        run_id=run_id,
        per_seed=per_seed,
    )
    if sensitivity is not None:
        result.bands = sensitivity.table(n_boot=protocol.bootstrap, alpha=protocol.alpha)
    if probes:
        result.probes, result.probe_errors = _run_probes(loaded, protocol, data_cache, progress)
    return result


def _run_probes(
    loaded, protocol: EvalProtocol, data_cache, progress: bool
) -> tuple[list[dict], dict[str, str]]:
    """Probe the checkpoint's own front-end, then ``protocol.probe_frontends`` at their init."""
    from singer.data.dataset import face_cue_names
    from singer.evaluation.probes import probe_frontend, probe_frontends

    frontend = getattr(loaded.model, "frontend", None)
    if not isinstance(frontend, torch.nn.Module):
        raise EvaluationError(
            f"model '{loaded.spec.name}' has no audio front-end (a `.frontend` module) to probe"
        )
    batches, _ = load_probe_batches(
        cfg=loaded.cfg, data_cache=data_cache, protocol=protocol, progress=progress
    )
    name = str(loaded.cfg.get("frontend", {}).get("name", "frontend"))
    common = dict(cue_names=face_cue_names(), sample_rate=loaded.sample_rate, progress=progress)
    rows = probe_frontend(
        [frontend],
        batches,
        name=f"{name}@step{loaded.step}",
        bands=protocol.bands,
        folds=protocol.probe_folds,
        alphas=protocol.probe_alphas,
        method=protocol.band_filter,
        order=protocol.band_filter_order,
        n_boot=protocol.bootstrap,
        alpha=protocol.alpha,
        device=loaded.device,
        **common,
    )
    errors: dict[str, str] = {}
    if protocol.probe_frontends:
        more, errors = probe_frontends(
            protocol.probe_frontends,
            batches=batches,
            protocol=protocol,
            fps=loaded.fps,
            on_error="skip",
            device=str(loaded.device),
            **common,
        )
        rows += more
    return rows, errors


def write_outputs(result: EvalResult, out_dir: Path) -> dict[str, Path]:
    """``metrics.json`` (+ band/probe tables as JSON records and heatmap PNGs) → ``{artifact name: path}``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    result.path = out_dir / "metrics.json"
    result.path.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    files["metrics.json"] = result.path
    if result.bands is not None:
        files["band_sensitivity.json"] = out_dir / "band_sensitivity.json"
        files["band_sensitivity.json"].write_text(
            json.dumps(result.to_dict()["bands"], indent=2) + "\n"
        )
        files.update(
            plot_sensitivity(result.bands, out_dir, title=f"{result.model} step {result.step}")
        )
    if result.probes is not None:
        files["probe_r2.json"] = out_dir / "probe_r2.json"
        files["probe_r2.json"].write_text(json.dumps(result.to_dict()["probes"], indent=2) + "\n")
        if result.probes:
            rows = [{**row, "input": f"{row['frontend']} | {row['band']}"} for row in result.probes]
            files["probe_r2.png"] = plot_heatmap(
                rows,
                out_dir / "probe_r2.png",
                value="r2",
                index="input",
                columns="cue",
                scale_by="none",
                note_missing="the cue does not vary",
                title="probe R² (grouped K-fold, held-out clips)",
            )
    return files


def log_to_mlflow(
    result: EvalResult, files: dict[str, Path], *, uri: str | None, experiment: str
) -> str:
    """Log into the checkpoint's own MLflow run (a new run when that one is not in this store)."""
    from singer import tracking

    run = None
    if result.run_id and tracking.find_run(result.run_id, uri) is not None:
        run = tracking.Run(result.run_id, uri)
    else:
        if result.run_id:
            warnings.warn(
                f"the checkpoint's MLflow run {result.run_id} is not in {tracking.tracking_uri(uri)}; "
                "logging the evaluation to a new run",
                stacklevel=2,
            )
        run = tracking.start_run(
            experiment,
            run_name=f"eval-{Path(result.checkpoint).parent.parent.name}",
            uri=uri,
            tags={"eval.checkpoint": result.checkpoint, "model": result.model},
        )
        run.end("FINISHED")
    run.log_metrics(result.mlflow_metrics(), step=result.step)
    tags = {"eval.protocol": result.protocol_hash, "eval.split": result.split}
    # Set, never unset: an earlier evaluation's band/probe artifacts stay in the run.
    tags.update({"eval.bands": "true"} if result.bands is not None else {})
    tags.update({"eval.probes": "true"} if result.probes is not None else {})
    run.set_tags(tags)
    run.log_artifact(files["metrics.json"], "eval")
    if result.bands is not None:
        tracking.log_table(run, result.bands, "eval/band_sensitivity.json")
        for name in ("band_sensitivity.png", "band_sensitivity_metrics.png"):
            if name in files:
                run.log_artifact(files[name], "eval")
    if result.probes is not None:
        tracking.log_table(run, result.probes, "eval/probe_r2.json")
        if "probe_r2.png" in files:
            run.log_artifact(files["probe_r2.png"], "eval")
    return run.run_id


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    protocol: EvalProtocol | None = None,
    split: str = "val",
    data_cache: str | Path | None = None,
    seeds: Sequence[int] | None = None,
    bands: bool = False,
    probes: bool = False,
    out_dir: str | Path | None = None,
    log_mlflow: bool = True,
    device: str = "auto",
    progress: bool = True,
) -> EvalResult:
    """Evaluate a checkpoint (file, run directory or MLflow run id) under a fixed protocol.

    Writes ``<out_dir>/metrics.json`` (default ``<run dir>/eval/<protocol hash>/``) and, with
    ``log_mlflow``, logs ``eval/*`` metrics, the ``eval.protocol`` tag and the artifacts into the
    checkpoint's MLflow run. Raises :class:`EvaluationError` (and the registry's / weights'
    errors) for problems with the request.
    """
    from singer.inference import load_model

    path = resolve_target(checkpoint)
    state = torch.load(path, map_location="cpu", weights_only=True)
    run_id = state.get("run_id")
    loaded = load_model(path, device=device)
    result = evaluate_loaded(
        loaded,
        protocol=protocol,
        split=split,
        data_cache=data_cache,
        seeds=seeds,
        bands=bands,
        probes=probes,
        checkpoint=path,
        run_id=run_id,
        progress=progress,
    )
    target = Path(out_dir) if out_dir is not None else default_out_dir(path, result.protocol_hash)
    files = write_outputs(result, target)
    if log_mlflow:
        tc = loaded.cfg.get("tracking") or {}
        logged = log_to_mlflow(
            result, files, uri=tc.get("uri"), experiment=tc.get("experiment") or "singer"
        )
        if logged != run_id:
            result.run_id = logged
            write_outputs(result, target)  # record where the evaluation was logged
    return result
