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
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from singer import tracking
from singer.data.dataset import face_cue_names
from singer.evaluation.bands import BandSensitivity, bandstop, plot_heatmap, plot_sensitivity
from singer.evaluation.inputs import (
    EvaluationError,
    load_batches,
    load_probe_batches,
    resolve_target,
)
from singer.evaluation.probes import probe_frontend, probe_frontends
from singer.evaluation.protocol import EvalProtocol, ProtocolError, load_protocol
from singer.evaluation.units import (
    Interval,
    derangement,
    group_mean,
    to_units,
    unit_interval,
)
from singer.metrics.base import EvalBatch
from singer.metrics.motion import nanmean
from singer.registry import METRICS
from singer.weights import MissingWeightsError, WeightsChecksumError

SEED_STRIDE = 1_000_003  # batch seeds s·STRIDE + b never collide for < 1e6 batches


class NotGenerativeError(EvaluationError):
    """The checkpoint's ModelSpec has no ``sample`` (it does not generate video)."""


@dataclass
class EvalResult:
    """What one evaluation produced.

    metrics:  ``{key: value}``: per-clip keys are the mean over independent units (held-out
              speakers) of each unit's mean over its clips and the seeds; set-level keys (FID)
              the mean over seeds.
    ci:       ``{key: (lo, hi)}``, percentile bootstrap over units (set-level metrics: over
              seeds, ≥ 2); ``(nan, nan)`` when there is nothing to resample.
    n:        ``{key: number of units behind the interval}`` (printed beside every interval).
    units:    ``{key: {unit: value}}``: the unit values themselves, which sweeps pair between
              arms (same clips, same noise) for their paired differences.
    Keys include ``audio_effect/<cue>`` (motion r with the true audio minus r with another
    held-out speaker's audio) and ``audio_effect_vs_silence/<cue>``, and the controls'
    own values under ``control/<deranged|silence>/<key>``.
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
    n: dict[str, int] = field(default_factory=dict)
    units: dict[str, dict[str, float]] = field(default_factory=dict)
    unit_of_clip: dict[str, str] = field(default_factory=dict)
    unit_kind: dict[str, str] = field(default_factory=dict)  # key → "speakers" | "seeds"
    windows: int = 0
    bands: list[dict] | None = None
    probes: list[dict] | None = None
    probe_errors: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    source: str = "checkpoint"
    path: Path | None = None

    @property
    def protocol_hash(self) -> str:
        return self.protocol.hash()

    def interval(self, key: str) -> Interval:
        lo, hi = self.ci.get(key, (float("nan"), float("nan")))
        return Interval(
            self.metrics.get(key, float("nan")),
            lo,
            hi,
            self.n.get(key, 0),
            self.unit_kind.get(key, "speakers"),
        )

    def mlflow_metrics(self) -> dict[str, float]:
        """``eval/<key>``, ``eval/<key>_ci_lo``/``_ci_hi`` (when finite) and ``eval/<key>_n``."""
        out = {}
        for key, value in self.metrics.items():
            out[f"eval/{key}"] = float(value)
            lo, hi = self.ci.get(key, (float("nan"), float("nan")))
            if np.isfinite(lo) and np.isfinite(hi):
                out[f"eval/{key}_ci_lo"], out[f"eval/{key}_ci_hi"] = float(lo), float(hi)
            if key in self.n:
                out[f"eval/{key}_n"] = float(self.n[key])
        return out

    def to_dict(self) -> dict:
        def clean(value):  # JSON has no NaN: write null
            return None if isinstance(value, float) and not np.isfinite(value) else value

        return {
            "source": self.source,
            "model": self.model,
            "checkpoint": self.checkpoint,
            "step": self.step,
            "run_id": self.run_id,
            "split": self.split,
            "clips": self.clip_ids,
            "windows": self.windows,
            "unit": "speakers",
            "unit_of_clip": self.unit_of_clip,
            "protocol": self.protocol.to_dict(),
            "protocol_hash": self.protocol_hash,
            "git": tracking.git_commit(),
            "metrics": {k: clean(v) for k, v in self.metrics.items()},
            "ci": {k: [clean(lo), clean(hi)] for k, (lo, hi) in self.ci.items()},
            "n": dict(self.n),
            "unit_kind": dict(self.unit_kind),
            "units": {k: {u: clean(v) for u, v in us.items()} for k, us in self.units.items()},
            "per_seed": {k: [clean(v) for v in vs] for k, vs in self.per_seed.items()},
            "bands": [{k: clean(v) for k, v in row.items()} for row in self.bands]
            if self.bands is not None
            else None,
            "probes": [{k: clean(v) for k, v in row.items()} for row in self.probes]
            if self.probes is not None
            else None,
            "probe_errors": self.probe_errors,
            "notes": self.notes,
        }


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
    # lazy: start-up: a singer.models module loads every model (timm, diffusers: seconds),
    # which importing the evaluation package does without
    from singer.models.spec import Conditions

    device = loaded.device
    generator = torch.Generator(device=device if device.type == "cuda" else "cpu")
    generator.manual_seed(int(seed) * SEED_STRIDE + int(batch_index))
    conditions = Conditions.from_batch(batch, audio=audio, device=device)
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
    return EvalBatch(
        generated=video,
        reference=batch["video"],
        audio=audio,
        sample_rate=sample_rate,
        fps=fps,
        cues=batch["cues"],
        has_cues=torch.as_tensor(batch["has_cues"], dtype=torch.bool),
        clip_ids=list(batch["clip_id"]),
        starts=[int(s) for s in batch["start"]] if "start" in batch else None,
        causes=batch.get("causes"),
    )


def _clip_level(metric, clip_ids: list[str]) -> dict[str, dict[str, float]]:
    """``{key: {clip: value}}`` of one metric after a seed: its own clip values, or the mean of
    its per-item values over each clip's items."""
    own = metric.clip_values()
    if own is not None:
        return own
    return {
        key: group_mean(values, clip_ids)
        for key, values in metric.per_clip().items()
        if len(values) == len(clip_ids)
    }


def summarise_units(
    clip_values: dict[str, list[dict[str, float]]],
    unit_of_clip: dict[str, str],
    protocol: EvalProtocol,
) -> tuple[dict[str, dict[str, float]], dict[str, Interval]]:
    """Per key: ``{unit: value averaged over seeds}`` and the interval over units.

    ``clip_values[key]`` holds one ``{clip: value}`` per seed.
    """
    units: dict[str, dict[str, float]] = {}
    intervals: dict[str, Interval] = {}
    for key, per_seed in clip_values.items():
        seed_units = [to_units(values, unit_of_clip) for values in per_seed]
        names = sorted({u for su in seed_units for u in su})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            units[key] = {
                u: float(np.nanmean([su.get(u, np.nan) for su in seed_units])) for u in names
            }
        intervals[key] = unit_interval(units[key], n_boot=protocol.bootstrap, alpha=protocol.alpha)
    return units, intervals


def audio_effects(
    truth: dict[str, list[dict[str, float]]],
    control: dict[str, list[dict[str, float]]],
    prefix: str,
) -> dict[str, list[dict[str, float]]]:
    """``{prefix/<cue>: [{clip: r_true − r_control} per seed]}`` for each motion ``_r`` key,
    plus ``prefix/mean`` (per clip, the mean of its cue effects)."""
    out: dict[str, list[dict[str, float]]] = {}
    for key in truth:
        if not (key.startswith("motion/") and key.endswith("_r")) or key == "motion/r_mean":
            continue
        if key in control:
            out[f"{prefix}/{key[len('motion/') : -len('_r')]}"] = [
                {clip: value - c.get(clip, np.nan) for clip, value in t.items()}
                for t, c in zip(truth[key], control[key], strict=True)
            ]
    if out:
        cues = list(out.values())
        out[f"{prefix}/mean"] = [
            {clip: nanmean([cue[s].get(clip, np.nan) for cue in cues]) for clip in cues[0][s]}
            for s in range(len(cues[0]))
        ]
    return out


def control_audio(kind: str, batches: list[dict], derange: list[int]) -> list[torch.Tensor]:
    """Per batch, the audio ``B×S`` of a control: ``silence`` (zeros), or ``deranged`` (item
    ``i`` gets the audio of item ``derange[i]``, another speaker's clip)."""
    if kind == "silence":
        return [torch.zeros_like(b["audio"]) for b in batches]
    flat = torch.cat([b["audio"] for b in batches])
    out, start = [], 0
    for b in batches:
        n = b["audio"].shape[0]
        out.append(flat[torch.as_tensor(derange[start : start + n])])
        start += n
    return out


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
    """Evaluate an already loaded model (``singer.inference.LoadedModel``); writes nothing.

    Per protocol seed, every batch is generated with its true audio and, with the same noise,
    with each control's audio (``protocol.controls``); the audio-driven metrics (motion, sync)
    score every condition against the clip's truth. Values go item → clip → unit (speaker).
    """
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
        windows_per_clip=protocol.windows_per_clip,
    )
    item_clips = [str(c) for b in batches for c in b["clip_id"]]
    unit_of_clip = {
        str(c): str(u) for b in batches for c, u in zip(b["clip_id"], b["speaker_id"], strict=True)
    }
    sr, fps = loaded.sample_rate, loaded.fps
    notes: list[str] = []

    controls = list(protocol.controls)
    derange: list[int] = []
    if "deranged" in controls:
        try:
            derange = derangement(
                [unit_of_clip[c] for c in item_clips], seed=protocol.derangement_seed
            )
        except ValueError:
            controls.remove("deranged")
            notes.append("the deranged-audio control needs at least 2 evaluated windows; skipped")
        if derange and len(set(unit_of_clip.values())) < 2:
            notes.append("one speaker only: the deranged control uses another clip of that speaker")
    control_audios = {kind: control_audio(kind, batches, derange) for kind in controls}

    def eval_batch(batch, video, audio):
        return make_eval_batch(batch, video, audio, sample_rate=sr, fps=fps)

    sensitivity = None
    if bands:

        def band_metrics() -> dict:
            return {name: m for name, m in build_metrics(protocol).items() if reads_video(m)}

        sensitivity = BandSensitivity(protocol.bands, face_cue_names(), band_metrics, eval_batch)

    per_seed: dict[str, list[float]] = {}
    clip_values: dict[str, list[dict[str, float]]] = {}
    control_values: dict[str, dict[str, list[dict[str, float]]]] = {c: {} for c in controls}
    generations = 1 + len(controls) + (len(protocol.bands) if bands else 0)
    bar = tqdm(
        total=len(protocol.seeds) * len(batches) * generations,
        desc=f"evaluate {loaded.spec.name}",
        unit="batch",
        disable=not progress,
    )
    for s_index, seed in enumerate(protocol.seeds):
        metrics = metric_set if s_index == 0 else build_metrics(protocol)
        controlled = {
            kind: {
                n: m
                for n, m in build_metrics(protocol).items()
                if getattr(m, "audio_driven", False)
            }
            for kind in controls
        }
        if sensitivity is not None:
            sensitivity.start_seed()
        for b, batch in enumerate(batches):
            video = generate_batch(loaded, batch, protocol, seed=seed, batch_index=b)
            bar.update(1)
            eb = eval_batch(batch, video, batch["audio"])
            for metric in metrics.values():
                metric.update(eb)
            # Controls: the same noise, another audio; scored against the clip's own truth and
            # audio (the intervention is on the model's input only).
            for kind in controls:
                if controlled[kind]:
                    other = generate_batch(
                        loaded,
                        batch,
                        protocol,
                        seed=seed,
                        batch_index=b,
                        audio=control_audios[kind][b],
                    )
                    for metric in controlled[kind].values():
                        metric.update(eval_batch(batch, other, batch["audio"]))
                bar.update(1)
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
                    sensitivity.add_band(i, batch, band_video, batch["audio"])
                    bar.update(1)
        for metric in metrics.values():
            for key, value in metric.compute().items():
                per_seed.setdefault(key, []).append(float(value))
            for key, values in _clip_level(metric, item_clips).items():
                clip_values.setdefault(key, []).append(values)
        for kind in controls:
            for metric in controlled[kind].values():
                for key, values in _clip_level(metric, item_clips).items():
                    control_values[kind].setdefault(key, []).append(values)
        if sensitivity is not None:
            sensitivity.end_seed()
    bar.close()

    for kind, values in control_values.items():
        for key, per_seed_values in values.items():
            clip_values[f"control/{kind}/{key}"] = per_seed_values
        prefix = "audio_effect" if kind == "deranged" else f"audio_effect_vs_{kind}"
        clip_values.update(audio_effects(clip_values, values, prefix))
    units, intervals = summarise_units(clip_values, unit_of_clip, protocol)
    summary, ci, n, kind = {}, {}, {}, {}
    for key, interval in intervals.items():
        summary[key], ci[key], n[key] = interval.estimate, (interval.lo, interval.hi), interval.n
        kind[key] = "speakers"
    for key, values in per_seed.items():  # set-level metrics: over seeds
        if key in summary:
            continue
        interval = unit_interval(
            dict(enumerate(values)), n_boot=protocol.bootstrap, alpha=protocol.alpha, unit="seeds"
        )
        summary[key], ci[key], n[key] = nanmean(values), (interval.lo, interval.hi), interval.n
        kind[key] = "seeds"

    result = EvalResult(
        metrics=summary,
        ci=ci,
        protocol=protocol,
        model=loaded.spec.name,
        step=loaded.step,
        checkpoint=str(checkpoint),
        split=split,
        clip_ids=sorted(unit_of_clip),
        run_id=run_id,
        per_seed=per_seed,
        n=n,
        units=units,
        unit_of_clip=unit_of_clip,
        unit_kind=kind,
        windows=len(item_clips),
        notes=notes,
    )
    if sensitivity is not None:
        result.bands = sensitivity.table(
            n_boot=protocol.bootstrap,
            alpha=protocol.alpha,
            units=[unit_of_clip[c] for c in item_clips],
        )
    if probes:
        result.probes, result.probe_errors = _run_probes(loaded, protocol, data_cache, progress)
    return result


def _run_probes(
    loaded, protocol: EvalProtocol, data_cache, progress: bool
) -> tuple[list[dict], dict[str, str]]:
    """Probe the checkpoint's own front-end, then ``protocol.probe_frontends`` at their init."""
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
        name = (
            f"eval-videos-{Path(result.checkpoint).name}"
            if result.source == "videos"
            else f"eval-{Path(result.checkpoint).parent.parent.name}"
        )
        run = tracking.start_run(
            experiment,
            run_name=name,
            uri=uri,
            tags={
                "eval.checkpoint": result.checkpoint,
                "model": result.model,
                "eval.source": result.source,
            },
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
    # lazy: start-up: singer.inference imports every model package (seconds)
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
