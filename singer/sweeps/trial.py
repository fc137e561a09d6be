"""The job that trains one (trial, seed) of a sweep, wherever submitit runs it.

The driver asks Optuna for a trial and submits one :class:`TrialJob` per seed. The job
re-opens the study from its storage (with the sweep's pruner: Optuna does not store the
pruner with the study, and ``load_study`` would silently use ``MedianPruner()``), attaches
to the driver's trial by its id (``optuna.trial.Trial(study, trial_id)``), and reports the
trainer's intermediate losses to it. When the pruner says so, training stops and the job
returns a ``PRUNED`` outcome; the driver then tells Optuna. Jobs never tell Optuna
themselves: a trial's value is the mean over its seeds, which only the driver sees.

Jobs survive preemption: :meth:`TrialJob.checkpoint` requeues the job with
``trainer.resume=true``, so it continues from ``<out_dir>/checkpoints/last.pt`` (and the
same MLflow run).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from singer import tracking
from singer.config import compose
from singer.launch import CheckpointableJob, export_torch_distributed_env

RESULT_FILE = "trial_result.json"  # the job's outcome, written last (a finished job is not rerun)
ERROR_FILE = "trial_error.json"  # why the job failed, for the driver's FAIL reason

COMPLETE, PRUNED, FAIL, SKIPPED = "COMPLETE", "PRUNED", "FAIL", "SKIPPED"


class MissingMetricError(RuntimeError):
    """A trial finished without producing one of the sweep's objective metrics."""


# -- Optuna pieces shared by the driver and the jobs -----------------------------------------
def open_storage(spec: str):
    """``journal:<path>`` → a journal file (local disk); anything with ``://`` → an RDB URL."""
    if spec.startswith("journal:"):
        path = Path(spec[len("journal:") :])
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if "://" in spec:
        return optuna.storages.RDBStorage(spec)
    raise ValueError(
        f"study storage {spec!r}: use 'journal:<path>' or an RDB URL such as "
        "postgresql+psycopg://user@host/db or sqlite:///optuna.db"
    )


def storage_spec(value: str) -> str:
    """A user's ``--storage``: an RDB URL stays as it is; a file path becomes a journal file."""
    if "://" in value or value.startswith("journal:"):
        return value
    return f"journal:{Path(value).resolve()}"


def make_sampler(kind: str, seed: int, startup_trials: int | None = None):
    """The sampler for ``sampler.type``. A grid sweep enqueues every configuration itself
    (``study.enqueue_trial``), so its sampler never samples: Optuna's GridSampler cannot hold
    named variants, and its ``after_trial`` calls ``study.stop()``, which raises outside
    ``optimize()``."""
    if kind == "tpe":
        kwargs = {} if startup_trials is None else {"n_startup_trials": startup_trials}
        return optuna.samplers.TPESampler(seed=seed, **kwargs)
    if kind in ("random", "grid"):
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {kind!r}; use grid | tpe | random")


def make_pruner(pruner: dict):
    kind = pruner.get("type", "none")
    if kind == "none":
        return optuna.pruners.NopPruner()
    if kind == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=pruner.get("startup_trials", 5),
            n_warmup_steps=pruner.get("warmup_steps", 0),
            interval_steps=pruner.get("interval_steps", 1),
        )
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=pruner.get("min_resource", 1),
            max_resource=pruner.get("max_resource", "auto"),
            reduction_factor=pruner.get("reduction_factor", 3),
        )
    raise ValueError(f"unknown pruner {kind!r}; use median | hyperband | none")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write, then rename: a kill mid-write leaves the old file (or none), never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


# -- the job ----------------------------------------------------------------------------------
@dataclasses.dataclass
class TrialJob(CheckpointableJob):
    """Train one seed of one Optuna trial; returns ``{"state": COMPLETE | PRUNED, ...}``, raises on failure.

    Plain attributes only: submitit pickles the object, and again when it requeues it.
    """

    study_name: str
    storage: str  # see open_storage()
    trial_id: int  # Optuna's storage id of the trial (not its number)
    trial_number: int
    seed: int
    overrides: list[str]  # everything but trainer.resume (added here)
    out_dir: str
    metrics: list[str]  # the objective metrics to return
    report_metric: str | None  # reported to Optuna at each validation; None: multi-objective
    pruner: dict
    sampler: dict
    tracking_uri: str
    experiment: str
    resume: bool = False
    evaluate: dict | None = None  # SweepSpec.evaluate: evaluate the checkpoint after training

    def resumed(self) -> TrialJob:
        """Preempted or timed out: the requeued job continues from its checkpoint."""
        return dataclasses.replace(self, resume=True)

    def __call__(self) -> dict:
        out_dir = Path(self.out_dir)
        done = out_dir / RESULT_FILE
        if (
            done.exists()
        ):  # finished before the driver heard of it (driver restarted): report it again
            return json.loads(done.read_text())
        (out_dir / ERROR_FILE).unlink(missing_ok=True)

        # lazy: start-up: singer.trainer loads the model stack, and the driver imports this
        # module for TrialJob (also for --dry-run)
        from singer.trainer import Trainer

        export_torch_distributed_env()  # a multi-task job trains one DDP run
        started = time.time()
        trainer = None
        try:
            cfg = compose([*self.overrides, f"trainer.resume={'true' if self.resume else 'false'}"])
            trial = self._attach_trial()
            trainer = Trainer(cfg, out_dir, reporter=self._reporter(trial), progress=False)
            result = trainer.fit()
            evaluated = self._evaluate(out_dir, cfg)
            values = self._objective_values(result, evaluated)
        except Exception as err:
            run_id = trainer.state.run_id if trainer is not None else None
            if isinstance(err, optuna.TrialPruned):
                outcome = {
                    "state": PRUNED,
                    "reason": str(err),
                    "run_id": run_id,
                    "step": trainer.state.step,
                    "seconds": time.time() - started,
                }
                self._mark_pruned_run(run_id, str(err))
                write_json_atomic(done, outcome)
                return outcome
            write_json_atomic(
                out_dir / ERROR_FILE,
                {
                    "type": type(err).__name__,
                    "message": str(err)[:2000],
                    "run_id": run_id,
                    "time": time.time(),
                },
            )
            raise
        outcome = {
            "state": COMPLETE,
            "values": values,
            "run_id": result.run_id,
            "step": result.step,
            "seconds": time.time() - started,
        }
        write_json_atomic(done, outcome)
        return outcome

    # -- Optuna ---------------------------------------------------------------------------
    def _attach_trial(self):
        """The driver's trial, through the study storage (None when nothing is reported)."""
        if self.report_metric is None:
            return None
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(
            study_name=self.study_name,
            storage=open_storage(self.storage),
            pruner=make_pruner(self.pruner),
            sampler=make_sampler(self.sampler["type"], self.sampler.get("seed", 0)),
        )
        return optuna.trial.Trial(study, self.trial_id)

    def _reporter(self, trial):
        """The trainer calls this at every validation; raising TrialPruned stops training."""
        if trial is None:
            return None
        metric, pruning = self.report_metric, self.pruner.get("type", "none") != "none"

        def report(step: int, metrics: dict[str, float]) -> None:
            value = metrics.get(metric)
            if value is None or not math.isfinite(value):
                return  # a non-finite loss stops the trainer by itself
            # Several seeds report to the same trial: Optuna keeps the first value per step (and a
            # resumed job reports its steps again); the warning about it is expected here.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The reported value is ignored")
                trial.report(value, step)
            if pruning and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step}: {metric}={value:.4g}")

        return report

    # -- results --------------------------------------------------------------------------
    def _evaluate(self, out_dir: Path, cfg) -> dict[str, float]:
        """The sweep's evaluation of the trained checkpoint, logged into the trial's MLflow run."""
        if not self.evaluate:
            return {}
        # lazy: start-up: it loads the metrics stack, which only the jobs of a sweep with an
        # ``evaluate`` section need
        from singer.evaluation import evaluate_checkpoint, load_protocol

        result = evaluate_checkpoint(
            out_dir,
            protocol=load_protocol(overrides=self.evaluate["protocol"]),
            split=self.evaluate["split"],
            bands=self.evaluate["bands"],
            probes=self.evaluate["probes"],
            log_mlflow=True,
            device=cfg.device,
            progress=False,
        )
        return result.mlflow_metrics()

    def _objective_values(
        self, result, evaluated: dict[str, float] | None = None
    ) -> dict[str, float]:
        available: dict[str, float] = {
            k: float(v) for k, v in result.metrics.items() if v is not None
        }
        available.update(evaluated or {})
        if result.val_loss is not None:
            available["val/loss"] = float(result.val_loss)
        if "final/val_mse" in available:
            available["val/mse"] = available["final/val_mse"]
        missing = [m for m in self.metrics if m not in available]
        if missing and result.run_id:  # e.g. eval/... metrics logged into the run by an evaluator
            available.update(
                {k: v for k, v in self._run_metrics(result.run_id).items() if k not in available}
            )
            missing = [m for m in self.metrics if m not in available]
        if missing:
            hint = ""
            if any(m.startswith("val/") for m in missing) and result.val_loss is None:
                hint = (
                    " (validation had no batches: the val split is empty or trainer.val_batches=0)"
                )
            raise MissingMetricError(
                f"the trial produced no value for objective metric(s) {missing}{hint}; it "
                f"produced: {', '.join(sorted(available)) or 'nothing'}"
            )
        return {m: available[m] for m in self.metrics}

    def _run_metrics(self, run_id: str) -> dict[str, float]:
        runs = tracking.search_runs(
            self.experiment, self.tracking_uri, f"attributes.run_id = '{run_id}'"
        )
        if len(runs) == 0:
            return {}
        row = runs.iloc[0]
        # Columns of metrics the run does not have hold NaN; x == x drops them.
        return {
            c[len("metrics.") :]: float(row[c])
            for c in runs.columns
            if c.startswith("metrics.") and row[c] == row[c]
        }

    def _mark_pruned_run(self, run_id: str | None, reason: str) -> None:
        """The trainer ended the run FAILED (it saw an exception); a pruned run is KILLED."""
        if not run_id:
            return
        run = tracking.Run(run_id, self.tracking_uri)
        run.set_tags({"sweep.state": PRUNED, "sweep.pruned": reason})
        run.end("KILLED")
