"""The sweep driver: Optuna asks, submitit runs, MLflow records.

One Optuna study per sweep (name = sweep name) in real storage; one submitit job per
(trial, seed); a trial's objective is the mean over its seeds. The driver alone asks and
tells; jobs only report intermediate losses (for pruning) to the trial they were given.

Everything the driver needs to pick up after a crash lives in storage, not in memory:

- Optuna (the source of truth): each trial's params, its ``variant``, one user attr
  ``job.seed<S>`` per submitted job (launcher, folder, job id) and ``result.seed<S>`` per
  finished one;
- ``<out>/sweep_state.json``: the storage, the MLflow parent run, the sweep identity and the
  same job records, written before Optuna's (so a job is never submitted unrecorded twice).

``--resume`` re-opens the study. Finished trials stay finished; a RUNNING trial is adopted:
each of its seeds either has a result, or its job is re-attached (still queued or running,
or finished while the driver was down), or it is resubmitted under the same trial number
with ``trainer.resume=true`` (it continues from its checkpoint and its MLflow run).

This module holds the loop; the sweep folder and its state are in :mod:`~singer.sweeps.state`,
the study in :mod:`~singer.sweeps.study`, the submitted jobs in :mod:`~singer.sweeps.jobs`, and
what the sweep ends with (trials table, summary, verdict) in :mod:`~singer.sweeps.report`.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from singer import tracking
from singer.config import compose
from singer.data.cache import data_cache
from singer.launch import make_executor
from singer.sweeps import jobs, report
from singer.sweeps.jobs import ActiveJob
from singer.sweeps.progress import SweepProgress
from singer.sweeps.report import SweepSummary
from singer.sweeps.spec import Configuration, SweepSpec, merge_overrides
from singer.sweeps.state import (
    DEFAULT_OUT_ROOT,
    SweepError,
    SweepState,
    open_sweep_folder,
    trial_seed_dir,
)
from singer.sweeps.study import SweepStudy, storage_url
from singer.sweeps.trial import COMPLETE, FAIL, PRUNED, SKIPPED


@dataclass
class TrialInFlight:
    """An Optuna trial the driver has asked (or adopted) and not yet told."""

    number: int
    trial: Any  # optuna.trial.Trial
    config: Configuration
    outcomes: dict[int, dict] = field(default_factory=dict)  # seed → outcome


# -- the plan ---------------------------------------------------------------------------------
def plan_jobs(
    spec: SweepSpec, max_trials: int | None = None
) -> list[tuple[int, Configuration, int]]:
    """(planned trial index, configuration, seed) for every job fixed in advance: the whole grid
    for ``grid``; only the variants for ``tpe`` / ``random`` (the rest is sampled while running)."""
    return [
        (i, c, s) for i, c in enumerate(spec.planned_configurations(max_trials)) for s in spec.seeds
    ]


def describe_plan(
    spec: SweepSpec, launcher: str | None = None, max_trials: int | None = None
) -> list[str]:
    """What ``--dry-run`` prints: every job of a grid, or the space and counts of a sampled sweep."""
    launcher = launcher or spec.launcher
    target = spec.target_trials(max_trials)
    seeds = ", ".join(map(str, spec.seeds))
    lines = [
        f"sweep {spec.name}: {target} trials × {len(spec.seeds)} seeds ({seeds}) = {target * len(spec.seeds)} "
        f"jobs on {launcher}, {spec.parallel} at a time, timeout {spec.timeout_min} min, "
        f"up to {spec.max_requeue} requeues"
    ]
    lines.append(
        "objectives: "
        + ", ".join(f"{o.direction} {o.metric}" for o in spec.objectives)
        + " (mean over seeds); pruner: "
        + json.dumps(spec.pruner)
    )
    lines.append("base overrides: " + (" ".join(spec.overrides) or "(none)"))
    if spec.evaluate:
        extra = [k for k in ("bands", "probes") if spec.evaluate[k]]
        lines.append(
            f"then each trial is evaluated on split {spec.evaluate['split']}"
            + (f" with {' and '.join(extra)}" if extra else "")
            + ": protocol "
            + (" ".join(spec.evaluate["protocol"]) or "(defaults)")
        )
    if spec.sampler != "grid":
        lines.append(f"sampler {spec.sampler} (seed {spec.sampler_seed}) over:")
        for p in spec.space:
            lines.append(f"  {p.key}: " + json.dumps(p.as_dict()))
        fixed = spec.planned_configurations(max_trials)
        lines.append(
            f"{len(fixed)} variant trials first, then {target - len(fixed)} sampled trials"
        )
    for index, config, seed in plan_jobs(spec, max_trials):
        lines.append(f"  trial {index:>3}  seed {seed:<4} {config.label()}")
    return lines


# -- the driver -------------------------------------------------------------------------------
class SweepDriver:
    """Runs a sweep to the end, or resumes it: asks Optuna for trials, submits a job per
    (trial, seed), tells Optuna how each trial ended, and records the sweep in MLflow."""

    def __init__(
        self,
        spec: SweepSpec,
        *,
        out_dir: str | Path | None = None,
        storage: str | None = None,
        launcher: str | None = None,
        resume: bool = False,
        max_trials: int | None = None,
        poll_s: float = 1.0,
        console: Console | None = None,
        progress: bool = True,
    ):
        self.spec = spec
        self.out_dir = Path(out_dir) if out_dir else DEFAULT_OUT_ROOT / spec.name
        self.out_dir = self.out_dir.resolve()
        self.storage_arg = storage
        self.launcher = launcher or spec.launcher
        self.resume = resume
        self.max_trials = max_trials
        self.poll_s = poll_s
        self.console = console or Console()
        self.show_progress = progress
        self.kind = self.launcher.split(":", 1)[0]

        self.state: SweepState | None = None
        self.study: SweepStudy | None = None
        self.parent: tracking.Run | None = None
        self.executor = None
        self.target = 0  # trials the sweep runs in all
        self.started = 0  # trials asked so far, in this session and earlier ones
        self.in_flight: dict[int, TrialInFlight] = {}
        self.active: dict[tuple[int, int], ActiveJob] = {}
        self.pending: deque[tuple[int, int, bool]] = deque()  # (trial number, seed, resume)
        self.progress: SweepProgress | None = None

    def run(self) -> SweepSummary:
        """Run (or resume) the sweep to the end; returns where everything was recorded."""
        spec = self.spec
        self.state = open_sweep_folder(spec, self.out_dir, self.resume)
        self.state["storage"] = storage_url(
            self.state.get("storage"), self.storage_arg, self.out_dir
        )
        self.study = SweepStudy.open(spec, self.state["storage"], self.out_dir, self.resume)
        self.state["sessions"] = int(self.state.get("sessions", 0)) + 1
        self._open_tracking()
        self._make_executor()
        self.target = spec.target_trials(self.max_trials)
        self.started = self.study.enqueue_planned(self.max_trials)
        prepare_data(spec, progress=self.show_progress, log=self._log)
        self._log(
            f"[bold]sweep {spec.name}[/]: {self.target} trials × {len(spec.seeds)} seeds on {self.launcher}, "
            f"{spec.parallel} job(s) at a time; output {self.out_dir}"
        )
        status = "FAILED"
        verdict = None
        try:
            with SweepProgress(
                spec.name, self.target, console=self.console, enabled=self.show_progress
            ) as progress:
                self.progress = progress
                self._adopt_running()
                self._run_jobs()
                self.progress = None
            status = "FINISHED"
            verdict = report.compare_report(spec, self.study, self.parent, self.out_dir, self._log)
        except KeyboardInterrupt:
            status = "KILLED"
            self._log(
                f"[yellow]interrupted[/]: {len(self.in_flight)} trial(s) unfinished. Continue with: "
                f"python -m singer.sweep {spec.path} --resume --out {self.out_dir}"
            )
            raise
        finally:
            self.progress = None
            summary = report.summarize(
                spec, self.study, self.state, self.parent, self.counts(), self._log
            )
            self.state.save()
            self.parent.end(status)
        for line in report.summary_lines(summary, self.state.get("experiment_id")):
            self._log(line)
        if verdict is not None:
            for line in report.console_lines(verdict):
                self._log(line)
        return summary

    # -- set-up -------------------------------------------------------------------------------
    def _open_tracking(self) -> None:
        """The sweep's MLflow parent run: started by its first session, resumed by the others."""
        recorded = self.state.get("tracking_uri")
        if recorded and self.spec.tracking_uri and self.spec.tracking_uri != recorded:
            raise SweepError(
                f"this sweep records to MLflow at {recorded}, not {self.spec.tracking_uri}: "
                "restore mlflow.tracking_uri, or start a new sweep with --out"
            )
        # Recorded first: the parent run lives there, whatever $MLFLOW_TRACKING_URI says today.
        uri = recorded or self.spec.tracking_uri or tracking.tracking_uri(None)
        self.state["tracking_uri"] = uri
        # Created here, before any job starts: concurrent first writers race on the sqlite schema.
        self.state["experiment_id"] = tracking.get_or_create_experiment(self.spec.experiment, uri)
        parent_id = self.state.get("parent_run_id")
        if parent_id:
            self.parent = tracking.resume_run(parent_id, uri)
        else:
            self.parent = tracking.start_run(
                self.spec.experiment,
                run_name=self.spec.name,
                uri=uri,
                experiment_id=self.state["experiment_id"],
                tags={
                    "sweep": self.spec.name,
                    "sweep.role": "parent",
                    "sweep.out_dir": str(self.out_dir),
                    "sweep.storage": self.state["storage"],
                    "sweep.study": self.spec.name,
                },
            )
            self.state["parent_run_id"] = self.parent.run_id
            self.parent.log_params(self.spec.summary_params())
            self.parent.log_artifact(self.out_dir / "sweep.yaml")
            self.study.record_parent_run(self.parent.run_id, uri)
        self.state.save()

    def _make_executor(self) -> None:
        # A fresh job folder per driver session: SLURM job ids may restart after a cluster
        # rebuild, and a reused folder would then hand back stale results.
        folder = self.out_dir / "jobs" / f"session{self.state['sessions']}"
        self.executor = make_executor(
            self.launcher,
            folder,
            timeout_min=self.spec.timeout_min,
            name=self.spec.name,
            max_requeue=self.spec.max_requeue,
        )

    # -- adoption (--resume) ------------------------------------------------------------------
    def _adopt_running(self) -> None:
        """Take over the trials an earlier session left running: each seed keeps its result,
        has its job re-attached, or is queued again to continue from its checkpoint."""
        for trial, config in self.study.running():
            flight = TrialInFlight(trial.number, trial, config)
            self.in_flight[trial.number] = flight
            outcomes, records = self.study.recorded(trial)
            adopted = []
            for seed in self.spec.seeds:
                if seed in outcomes:
                    flight.outcomes[seed] = outcomes[seed]
                    continue
                record = self.state.job(trial.number, seed) or records.get(seed)
                active = jobs.reattach(record) if record else None
                if active is not None:
                    self.active[(trial.number, seed)] = active
                    adopted.append(f"seed {seed}: job {record['job_id']} re-attached")
                else:  # never submitted, or its job is gone: run it again, continuing from its checkpoint
                    self.pending.appendleft((trial.number, seed, True))
                    adopted.append(f"seed {seed}: resubmitted with trainer.resume=true")
            what = escape("; ".join(adopted)) or "results known"
            self._log(f"[cyan]trial {trial.number} adopted[/] ({escape(config.label())}): {what}")
            self._maybe_finish(flight)

    # -- the loop -----------------------------------------------------------------------------
    def _run_jobs(self) -> None:
        """Keep the job slots full and record each job's end, until every trial is told."""
        while True:
            self._fill_slots()
            self.progress.update(self.counts())
            if not self.active:
                return
            ended = 0
            for active in list(self.active.values()):
                trial_dir = trial_seed_dir(self.out_dir, active.trial_number, active.seed)
                outcome = jobs.poll(active, trial_dir)
                if outcome is not None:
                    self._record(active, outcome)
                    ended += 1
            self.progress.update(self.counts())
            if not ended:
                time.sleep(self.poll_s)

    def _fill_slots(self) -> None:
        while len(self.active) < self.spec.parallel:
            if self.pending:
                number, seed, resume = self.pending.popleft()
                self._submit(number, seed, resume)
            elif self.started < self.target:
                self._ask()
            else:
                return

    def _ask(self) -> None:
        trial, config = self.study.ask()
        self.started += 1
        self.in_flight[trial.number] = TrialInFlight(trial.number, trial, config)
        self.pending.extend((trial.number, s, False) for s in self.spec.seeds)
        self._log(f"[dim]trial {trial.number} started:[/] {escape(config.label())}")

    def _submit(self, number: int, seed: int, resume: bool) -> None:
        flight = self.in_flight[number]
        self.executor.update_parameters(name=f"{self.spec.name}-t{number}-s{seed}")
        job = self.executor.submit(
            jobs.trial_job(
                self.spec, self.state, flight.trial._trial_id, number, flight.config, seed, resume
            )
        )
        record = {
            "trial": number,
            "seed": seed,
            "kind": self.kind,
            "launcher": self.launcher,
            "folder": str(self.executor.folder),
            "job_id": str(job.job_id),
            "resume": resume,
            "submitted": time.time(),
        }
        self.state.record_job(number, seed, record)  # the state file first: never an unrecorded job
        self.study.record_job(flight.trial, seed, record)
        self.active[(number, seed)] = ActiveJob(number, seed, job, self.kind)

    def _record(self, active: ActiveJob, outcome: dict) -> None:
        number, seed = active.trial_number, active.seed
        self.active.pop((number, seed), None)
        flight = self.in_flight[number]
        flight.outcomes[seed] = outcome
        self.state.record_outcome(number, seed, outcome["state"])
        self.study.record_outcome(flight.trial, seed, outcome)
        if outcome["state"] == FAIL:
            jobs.close_failed_run(self.spec, self.state, number, seed, outcome, self._log)
        if outcome["state"] in (FAIL, PRUNED):
            # The trial's fate is sealed: do not start its other seeds.
            for item in [p for p in self.pending if p[0] == number]:
                self.pending.remove(item)
                skipped = {"state": SKIPPED, "reason": f"seed {seed} ended {outcome['state']}"}
                flight.outcomes[item[1]] = skipped
                self.study.record_outcome(flight.trial, item[1], skipped)
        self._maybe_finish(flight)

    def _maybe_finish(self, flight: TrialInFlight) -> None:
        """Tell Optuna once every seed of the trial has an outcome."""
        if any(s not in flight.outcomes for s in self.spec.seeds):
            return
        outcomes = [flight.outcomes[s] for s in self.spec.seeds]
        state, detail = self.study.finish(flight.trial, outcomes)
        number, label = flight.number, escape(flight.config.label())
        if state == COMPLETE:
            self._log(f"[green]trial {number} done[/] ({label}): {detail}")
        elif state == PRUNED:
            self._log(f"[yellow]trial {number} pruned[/] ({label}): {escape(detail)}")
        else:
            self._log(f"[red]trial {number} FAILED[/] ({label}): {escape(detail)}")
        self.in_flight.pop(number, None)

    # -- bookkeeping --------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Trials per state: queued (not started, or waiting for a job slot), running, done, pruned, failed."""
        running = {n for n, _ in self.active}
        waiting = [n for n in self.in_flight if n not in running]
        return {
            "queued": max(0, self.target - self.started) + len(waiting),
            "running": len(running),
            **self.study.finished_counts(),
        }

    def _log(self, text: str) -> None:
        if self.progress is not None:
            self.progress.log(text)
        else:
            self.console.print(text, soft_wrap=True, highlight=False)


def prepare_data(spec: SweepSpec, *, progress: bool, log) -> None:
    """Generate the sweep's data once, with all its workers, before any job starts (jobs
    would otherwise wait on each other's lock while the first one generates it alone)."""
    configs = spec.planned_configurations() or [None]
    overrides = merge_overrides(spec.overrides, configs[0].overrides if configs[0] else [])
    try:
        cfg = compose(overrides)
        if not cfg.data.get("cache_dir"):
            log("preparing the sweep's data (once, before the jobs) ...")
            data_cache(cfg, workers=max(1, spec.parallel), progress=progress)
    except Exception as err:  # noqa: BLE001 - the jobs will report it, each with its own error
        log(f"[yellow]could not prepare the data up front: {escape(jobs.failure_reason(err))}[/]")
