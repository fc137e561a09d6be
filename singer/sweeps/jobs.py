"""The sweep's jobs, one per (trial, seed): what each one runs, watching it, finding it again
after a driver restart, and what its end means for its trial.

That meaning is an *outcome* (a dict, stored in Optuna as ``result.seed<S>``): the job's own
result (``state`` COMPLETE or PRUNED, its objective ``values``, its MLflow ``run_id``), or
``state`` FAIL with the ``error`` in one line; either way with the ``job_id`` and the
``seconds`` since it was submitted.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.markup import escape

from singer import tracking
from singer.launch import attach_job, job_state, runs_here
from singer.sweeps.spec import Configuration, SweepSpec, hydra_value, merge_overrides
from singer.sweeps.state import SweepState, trial_seed_dir
from singer.sweeps.trial import COMPLETE, ERROR_FILE, FAIL, PRUNED, TrialJob


def trial_job(
    spec: SweepSpec,
    state: SweepState,
    trial_id: int,
    number: int,
    config: Configuration,
    seed: int,
    resume: bool,
) -> TrialJob:
    """What the job of one seed of a trial runs."""
    return TrialJob(
        study_name=spec.name,
        storage=state["storage"],
        trial_id=trial_id,
        trial_number=number,
        seed=seed,
        overrides=_job_overrides(spec, state, number, config, seed),
        out_dir=str(trial_seed_dir(state.out_dir, number, seed)),
        metrics=[o.metric for o in spec.objectives],
        report_metric=None if spec.multi_objective else spec.pruner.get("metric", "val/loss"),
        pruner=dict(spec.pruner),
        sampler={"type": spec.sampler, "seed": spec.sampler_seed},
        tracking_uri=state["tracking_uri"],
        experiment=spec.experiment,
        resume=resume,
        evaluate=spec.evaluate,
    )


def _job_overrides(
    spec: SweepSpec, state: SweepState, number: int, config: Configuration, seed: int
) -> list[str]:
    """The base overrides, the trial's, then where the job writes and what it records."""
    tags = {
        "sweep": spec.name,
        "trial": number,
        "seed": seed,
        "variant": config.variant or "search",
    }
    return merge_overrides(
        spec.overrides,
        config.overrides,
        [
            f"seed={seed}",
            f"out_dir={hydra_value(str(trial_seed_dir(state.out_dir, number, seed)))}",
            f"tracking.uri={hydra_value(state['tracking_uri'])}",
            f"tracking.experiment={hydra_value(spec.experiment)}",
            f"tracking.parent_run_id={hydra_value(state['parent_run_id'])}",
            f"tracking.run_name={hydra_value(f'{spec.name}-t{number}-s{seed}')}",
            *(f"++tracking.tags.{k}={hydra_value(v)}" for k, v in tags.items()),
        ],
    )


@dataclass
class ActiveJob:
    trial_number: int
    seed: int
    job: Any  # a submitit job (singer.launch)
    kind: str  # debug | local | slurm
    pid: int | None = None  # a local job re-attached after a restart: watched through its pid
    submitted: float = field(default_factory=time.time)


def reattach(record: dict) -> ActiveJob | None:
    """The recorded job, if it still runs or left a result; None when it must be resubmitted."""
    kind, folder, job_id = record.get("kind"), record.get("folder"), str(record.get("job_id"))
    number, seed = int(record["trial"]), int(record["seed"])
    submitted = float(record.get("submitted", time.time()))
    if kind == "local":
        job = attach_job(kind, folder, job_id)
        if job.paths.result_pickle.exists() or _pid_alive(int(job_id)):
            return ActiveJob(number, seed, job, kind, pid=int(job_id), submitted=submitted)
    elif kind == "slurm":
        job = attach_job(kind, folder, job_id)
        if job_state(job) in ("queued", "running") or job.paths.result_pickle.exists():
            return ActiveJob(number, seed, job, kind, submitted=submitted)
    return None  # debug jobs ran inside the dead driver; anything else ended without a result


def poll(active: ActiveJob, trial_dir: Path) -> dict | None:
    """The job's outcome once it has ended, else None. Never raises for a failed job."""
    job = active.job
    if runs_here(job):
        # Runs the job here. exception() rather than result(): result() opens pdb on errors.
        error = job.exception()
        return _outcome(active, None if error else job.result(), error, trial_dir)
    if active.pid is not None:  # re-attached local job: no process handle, watch the pid
        if not job.paths.result_pickle.exists():
            if _pid_alive(active.pid):
                return None
            time.sleep(0.5)  # the result file may land just after the process ends
            if not job.paths.result_pickle.exists():
                error = RuntimeError("the job's process ended without a result")
                return _outcome(active, None, error, trial_dir)
    elif job_state(job) in ("queued", "running"):
        return None
    try:
        return _outcome(active, job.result(), None, trial_dir)
    except Exception as err:  # the job raised, timed out, or was killed
        return _outcome(active, None, err, trial_dir)


def _outcome(active: ActiveJob, result: Any, error: BaseException | None, trial_dir: Path) -> dict:
    base = {
        "job_id": str(active.job.job_id),
        "seconds": round(time.time() - active.submitted, 1),
    }
    if error is None and isinstance(result, dict) and result.get("state") in (COMPLETE, PRUNED):
        return {**result, **base}
    reason = failure_reason(error) if error is not None else f"unexpected job result {result!r}"
    run_id = None
    error_file = trial_dir / ERROR_FILE
    if error_file.exists():  # written by the job: the exception itself, without submitit's wrapping
        info = json.loads(error_file.read_text())
        if info.get("time", 0) >= active.submitted - 1:  # not left by an earlier job
            reason, run_id = f"{info['type']}: {info['message']}"[:500], info.get("run_id")
    return {"state": FAIL, "error": reason, "run_id": run_id, **base}


def close_failed_run(
    spec: SweepSpec, state: SweepState, number: int, seed: int, outcome: dict, log
) -> None:
    """End the MLflow run of a failed job, and note it in the outcome. The trainer ends its run
    FAILED on exceptions; a job killed from outside (timeout, scancel, OOM) leaves it RUNNING."""
    try:
        runs = tracking.search_runs(
            spec.experiment,
            state["tracking_uri"],
            f"tags.mlflow.parentRunId = '{state['parent_run_id']}' and tags.trial = '{number}' "
            f"and tags.seed = '{seed}'",
        )
    except Exception as err:  # tracking trouble must not stop the sweep
        log(
            f"[yellow]could not look up the MLflow run of trial {number} seed {seed}: {escape(str(err))}[/]"
        )
        return
    for _, row in runs.iterrows():
        outcome["run_id"] = outcome.get("run_id") or row["run_id"]
        if row["status"] == "RUNNING":
            run = tracking.Run(row["run_id"], state["tracking_uri"])
            run.set_tags({"error": outcome["error"]})
            run.end("FAILED")


def failure_reason(err: BaseException) -> str:
    """One line for a failed job: the last line of a remote traceback, else the message."""
    text = str(err).strip()
    lines = [
        ln.strip() for ln in text.splitlines() if ln.strip() and not set(ln.strip()) <= {"-", "="}
    ]
    if "Traceback" in text and lines:
        return lines[-1][:500]
    return f"{type(err).__name__}: {lines[0] if lines else text}"[:500]


def _pid_alive(pid: int) -> bool:
    """A live (not zombie) process that is a submitit job controller, so a reused pid does not count."""
    proc = Path(f"/proc/{pid}")
    try:
        stat = (proc / "stat").read_text()
        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0] if ")" in stat else "?"
    return state not in ("Z", "X") and "submitit" in cmdline
