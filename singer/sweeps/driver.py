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
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from singer.safe_io import check_private_tree
from singer.sweeps.progress import SweepProgress
from singer.sweeps.spec import (
    Configuration,
    SweepSpec,
    VARIANT_PARAM,
    hydra_value,
    merge_overrides,
)
from singer.sweeps.trial import (
    COMPLETE,
    ERROR_FILE,
    FAIL,
    PRUNED,
    SKIPPED,
    TrialJob,
    make_pruner,
    make_sampler,
    open_storage,
    storage_spec,
    write_json_atomic,
)

STATE_FILE = "sweep_state.json"
DEFAULT_OUT_ROOT = Path("sweeps_out")


class SweepError(RuntimeError):
    """The sweep cannot start or continue (the message says what to do)."""


@dataclass
class TrialInFlight:
    """An Optuna trial the driver has asked (or adopted) and not yet told."""

    number: int
    trial: Any  # optuna.trial.Trial
    config: Configuration
    outcomes: dict[int, dict] = field(default_factory=dict)  # seed → outcome


@dataclass
class ActiveJob:
    trial_number: int
    seed: int
    job: Any  # submitit.Job
    kind: str  # debug | local | slurm
    pid: int | None = None  # a local job re-attached after a restart: watched through its pid
    submitted: float = field(default_factory=time.time)


@dataclass
class SweepSummary:
    name: str
    out_dir: Path
    storage: str
    tracking_uri: str
    experiment: str
    parent_run_id: str
    counts: dict[str, int]
    best: list[dict]  # best trial (single objective) or the Pareto front
    summary_csv: Path


# -- small helpers ----------------------------------------------------------------------------
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


def _reason(err: BaseException) -> str:
    """One line for a failed job: the last line of a remote traceback, else the message."""
    text = str(err).strip()
    lines = [
        ln.strip() for ln in text.splitlines() if ln.strip() and not set(ln.strip()) <= {"-", "="}
    ]
    if "Traceback" in text and lines:
        return lines[-1][:500]
    return f"{type(err).__name__}: {lines[0] if lines else text}"[:500]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _cell(value: Any) -> str:
    """A markdown table cell."""
    return f"{value:.4g}" if isinstance(value, float) else str(value).replace("|", "\\|")


def _ui_hint(uri: str) -> str:
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser"
    return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"


def _ui_base(uri: str) -> str:
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"


# -- the driver -------------------------------------------------------------------------------
class SweepDriver:
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

        self.state: dict = {}
        self.study = None
        self.parent = None  # tracking.Run
        self.executor = None
        self.in_flight: dict[int, TrialInFlight] = {}
        self.active: dict[tuple[int, int], ActiveJob] = {}
        self.pending: deque[tuple[int, int, bool]] = deque()  # (trial number, seed, resume)
        self.progress: SweepProgress | None = None

    # -- set-up -------------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.out_dir / STATE_FILE

    def _save_state(self) -> None:
        write_json_atomic(self.state_path, self.state)

    def _prepare_out_dir(self) -> None:
        if self.resume:
            if not self.state_path.exists():
                raise SweepError(
                    f"nothing to resume: {self.state_path} does not exist (run without --resume "
                    "to start the sweep, or pass the --out of the sweep to resume)"
                )
            self.state = json.loads(self.state_path.read_text())
            before, now = self.state.get("identity"), self.spec.identity()
            if before != now:
                changed = sorted(
                    k for k in set(before or {}) | set(now) if (before or {}).get(k) != now.get(k)
                )
                raise SweepError(
                    f"{self.spec.path} changed since sweep {self.spec.name!r} began in {self.out_dir} "
                    f"(keys: {', '.join(changed)}); only limits, launcher, timeout_min, max_requeue and "
                    "pruner may change on --resume. Restore the file, or start a new sweep with --out"
                )
            return
        if self.out_dir.exists() and any(self.out_dir.iterdir()):
            raise SweepError(
                f"the sweep output dir {self.out_dir} exists already: pass --resume to continue that "
                "sweep, or --out DIR for a new one"
            )
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.state = {
            "version": 1,
            "name": self.spec.name,
            "identity": self.spec.identity(),
            "sessions": 0,
            "jobs": {},
        }
        shutil.copyfile(self.spec.path, self.out_dir / "sweep.yaml")

    def _storage(self) -> str:
        recorded = self.state.get("storage")
        given = storage_spec(self.storage_arg) if self.storage_arg else None
        if recorded and given and recorded != given:
            raise SweepError(
                f"this sweep's study is in {recorded}, not {given}: drop --storage or pass that one"
            )
        return given or recorded or f"journal:{self.out_dir / 'optuna.journal'}"

    def _open_study(self) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        spec = self.spec
        self.state["storage"] = self._storage()
        storage = open_storage(self.state["storage"])
        pruner = make_pruner(spec.pruner)
        try:
            self.study = optuna.create_study(
                study_name=spec.name,
                storage=storage,
                directions=spec.directions,
                pruner=pruner,
                sampler=make_sampler(spec.sampler, spec.sampler_seed, spec.tpe_startup_trials),
                load_if_exists=self.resume,
            )
        except optuna.exceptions.DuplicatedStudyError:
            raise SweepError(
                f"a study named {spec.name!r} exists already in {self.state['storage']}: pass "
                "--resume to continue it, or rename the sweep"
            ) from None
        if self.study.directions != [
            optuna.study.StudyDirection[d.upper()] for d in spec.directions
        ]:
            raise SweepError(
                f"study {spec.name!r} in {self.state['storage']} has directions "
                f"{self.study.directions}, the sweep file {spec.directions}"
            )
        done = len(self.study.get_trials(deepcopy=False))
        if done:  # a sampler seeded as in the first session would replay its random draws
            self.study.sampler = make_sampler(
                spec.sampler, spec.sampler_seed + done, spec.tpe_startup_trials
            )
        self.study.set_user_attr("sweep.out_dir", str(self.out_dir))

    def _open_tracking(self) -> None:
        from singer import tracking

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
            self.study.set_user_attr("mlflow.parent_run_id", self.parent.run_id)
            self.study.set_user_attr("mlflow.tracking_uri", uri)
        self._save_state()

    def _prepare_data(self) -> None:
        """Generate the sweep's data once, with all its workers, before any job starts (jobs
        would otherwise wait on each other's lock while the first one generates it alone)."""
        from singer.config import compose
        from singer.trainer import data_cache

        configs = self.spec.planned_configurations() or [None]
        overrides = merge_overrides(self.spec.overrides, configs[0].overrides if configs[0] else [])
        try:
            cfg = compose(overrides)
            if not cfg.data.get("cache_dir"):
                self._log("preparing the sweep's data (once, before the jobs) ...")
                data_cache(cfg, workers=max(1, self.spec.parallel), progress=self.show_progress)
        except Exception as err:  # noqa: BLE001 - the jobs will report it, each with its own error
            self._log(f"[yellow]could not prepare the data up front: {escape(_reason(err))}[/]")

    def _make_executor(self) -> None:
        from singer.launch import make_executor

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

    def _enqueue_planned(self) -> None:
        """Put the fixed configurations (grid or variants) in the study's queue, once each:
        ``skip_if_exists`` also skips configurations that ran (or failed) in an earlier session."""
        target = self.spec.target_trials(self.max_trials)
        started = len(
            [t for t in self.study.get_trials(deepcopy=False) if t.state.name != "WAITING"]
        )
        for config in self.spec.planned_configurations(self.max_trials):
            self.study.enqueue_trial(
                config.params, user_attrs={"variant": config.variant}, skip_if_exists=True
            )
        self.target, self.started = target, started

    # -- trials -------------------------------------------------------------------------------
    def _describe(self, trial) -> Configuration:
        """Suggest this trial's params (fixed ones come back as enqueued; ones already suggested
        before a restart come back unchanged) and return its configuration."""
        variant = trial.user_attrs.get("variant", "")
        if variant:
            trial.suggest_categorical(VARIANT_PARAM, list(self.spec.variants))
        else:
            for p in self.spec.space:
                if p.type == "choice":
                    trial.suggest_categorical(p.key, p.choices())
                elif p.type == "int":
                    trial.suggest_int(p.key, int(p.low), int(p.high), step=int(p.step))
                else:
                    trial.suggest_float(
                        p.key, float(p.low), float(p.high), log=p.type == "logfloat"
                    )
        config = self.spec.configuration_for(trial.params)
        trial.set_user_attr("variant", config.variant)
        trial.set_user_attr("overrides", list(config.overrides))
        return config

    def _ask(self) -> TrialInFlight:
        trial = self.study.ask()
        config = self._describe(trial)
        self.started += 1
        flight = TrialInFlight(trial.number, trial, config)
        self.in_flight[trial.number] = flight
        self.pending.extend((trial.number, s, False) for s in self.spec.seeds)
        self._log(f"[dim]trial {trial.number} started:[/] {escape(config.label())}")
        return flight

    def _trial_dir(self, number: int, seed: int) -> Path:
        return self.out_dir / "trials" / f"{number:04d}-seed{seed}"

    def _job_overrides(self, flight: TrialInFlight, seed: int) -> list[str]:
        spec, number = self.spec, flight.number
        tags = {
            "sweep": spec.name,
            "trial": number,
            "seed": seed,
            "variant": flight.config.variant or "search",
        }
        return merge_overrides(
            spec.overrides,
            flight.config.overrides,
            [
                f"seed={seed}",
                f"out_dir={hydra_value(str(self._trial_dir(number, seed)))}",
                f"tracking.uri={hydra_value(self.state['tracking_uri'])}",
                f"tracking.experiment={hydra_value(spec.experiment)}",
                f"tracking.parent_run_id={hydra_value(self.state['parent_run_id'])}",
                f"tracking.run_name={hydra_value(f'{spec.name}-t{number}-s{seed}')}",
                *(f"++tracking.tags.{k}={hydra_value(v)}" for k, v in tags.items()),
            ],
        )

    def _submit(self, number: int, seed: int, resume: bool) -> None:
        flight, spec = self.in_flight[number], self.spec
        job_fn = TrialJob(
            study_name=spec.name,
            storage=self.state["storage"],
            trial_id=flight.trial._trial_id,
            trial_number=number,
            seed=seed,
            overrides=self._job_overrides(flight, seed),
            out_dir=str(self._trial_dir(number, seed)),
            metrics=[o.metric for o in spec.objectives],
            report_metric=None if spec.multi_objective else spec.pruner.get("metric", "val/loss"),
            pruner=dict(spec.pruner),
            sampler={"type": spec.sampler, "seed": spec.sampler_seed},
            tracking_uri=self.state["tracking_uri"],
            experiment=spec.experiment,
            resume=resume,
            evaluate=spec.evaluate,
        )
        self.executor.update_parameters(name=f"{spec.name}-t{number}-s{seed}")
        job = self.executor.submit(job_fn)
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
        self.state["jobs"][f"{number}-seed{seed}"] = (
            record  # the state file first: never an unrecorded job
        )
        self._save_state()
        flight.trial.set_user_attr(f"job.seed{seed}", record)
        self.active[(number, seed)] = ActiveJob(number, seed, job, self.kind)

    # -- adoption (--resume) ------------------------------------------------------------------
    def _reattach(self, record: dict) -> ActiveJob | None:
        """The recorded job, if it still runs or left a result; None when it must be resubmitted."""
        import submitit

        from singer.launch import job_state

        kind, folder, job_id = record.get("kind"), record.get("folder"), str(record.get("job_id"))
        number, seed = int(record["trial"]), int(record["seed"])
        submitted = float(record.get("submitted", time.time()))
        if kind == "local":
            job = submitit.LocalJob(folder, job_id)
            if job.paths.result_pickle.exists() or _pid_alive(int(job_id)):
                return ActiveJob(number, seed, job, kind, pid=int(job_id), submitted=submitted)
        elif kind == "slurm":
            job = submitit.SlurmJob(folder, job_id)
            if job_state(job) in ("queued", "running") or job.paths.result_pickle.exists():
                return ActiveJob(number, seed, job, kind, submitted=submitted)
        return None  # debug jobs ran inside the dead driver; anything else ended without a result

    def _adopt_running(self) -> None:
        from optuna.trial import Trial, TrialState

        for frozen in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            trial = Trial(self.study, frozen._trial_id)
            flight = TrialInFlight(frozen.number, trial, self._describe(trial))
            self.in_flight[frozen.number] = flight
            attrs = trial.user_attrs
            adopted = []
            for seed in self.spec.seeds:
                if f"result.seed{seed}" in attrs:
                    flight.outcomes[seed] = attrs[f"result.seed{seed}"]
                    continue
                record = self.state["jobs"].get(f"{frozen.number}-seed{seed}") or attrs.get(
                    f"job.seed{seed}"
                )
                active = self._reattach(record) if record else None
                if active is not None:
                    self.active[(frozen.number, seed)] = active
                    adopted.append(f"seed {seed}: job {record['job_id']} re-attached")
                else:  # never submitted, or its job is gone: run it again, continuing from its checkpoint
                    self.pending.appendleft((frozen.number, seed, True))
                    adopted.append(f"seed {seed}: resubmitted with trainer.resume=true")
            what = escape("; ".join(adopted)) or "results known"
            self._log(
                f"[cyan]trial {frozen.number} adopted[/] ({escape(flight.config.label())}): {what}"
            )
            self._maybe_finish(flight)

    # -- polling ------------------------------------------------------------------------------
    def _poll(self, active: ActiveJob) -> dict | None:
        """The job's outcome once it has ended, else None. Never raises for a failed job."""
        import submitit

        from singer.launch import job_state

        job = active.job
        if isinstance(job, submitit.DebugJob):
            # Runs the job here. exception() rather than result(): result() opens pdb on errors.
            error = job.exception()
            return self._outcome(active, None if error else job.result(), error)
        if active.pid is not None:  # re-attached local job: no process handle, watch the pid
            if not job.paths.result_pickle.exists():
                if _pid_alive(active.pid):
                    return None
                time.sleep(0.5)  # the result file may land just after the process ends
                if not job.paths.result_pickle.exists():
                    return self._outcome(
                        active, None, RuntimeError("the job's process ended without a result")
                    )
        elif job_state(job) in ("queued", "running"):
            return None
        try:
            return self._outcome(active, job.result(), None)
        except Exception as err:  # the job raised, timed out, or was killed
            return self._outcome(active, None, err)

    def _outcome(self, active: ActiveJob, result: Any, error: BaseException | None) -> dict:
        base = {
            "job_id": str(active.job.job_id),
            "seconds": round(time.time() - active.submitted, 1),
        }
        if error is None and isinstance(result, dict) and result.get("state") in (COMPLETE, PRUNED):
            return {**result, **base}
        reason = _reason(error) if error is not None else f"unexpected job result {result!r}"
        error_file = self._trial_dir(active.trial_number, active.seed) / ERROR_FILE
        run_id = None
        if (
            error_file.exists()
        ):  # written by the job: the exception itself, without submitit's wrapping
            info = json.loads(error_file.read_text())
            if info.get("time", 0) >= active.submitted - 1:
                reason, run_id = f"{info['type']}: {info['message']}"[:500], info.get("run_id")
        return {"state": FAIL, "error": reason, "run_id": run_id, **base}

    def _record(self, active: ActiveJob, outcome: dict) -> None:
        number, seed = active.trial_number, active.seed
        self.active.pop((number, seed), None)
        flight = self.in_flight[number]
        flight.outcomes[seed] = outcome
        self.state["jobs"].setdefault(f"{number}-seed{seed}", {})["outcome"] = outcome["state"]
        self._save_state()
        flight.trial.set_user_attr(f"result.seed{seed}", outcome)
        if outcome["state"] == FAIL:
            self._close_failed_run(number, seed, outcome)
        if outcome["state"] in (
            FAIL,
            PRUNED,
        ):  # the trial's fate is sealed: do not start its other seeds
            for item in [p for p in self.pending if p[0] == number]:
                self.pending.remove(item)
                skipped = {"state": SKIPPED, "reason": f"seed {seed} ended {outcome['state']}"}
                flight.outcomes[item[1]] = skipped
                flight.trial.set_user_attr(f"result.seed{item[1]}", skipped)
        self._maybe_finish(flight)

    def _close_failed_run(self, number: int, seed: int, outcome: dict) -> None:
        """The trainer ends its run FAILED on exceptions; a job killed from outside (timeout,
        scancel, OOM) leaves it RUNNING, so end it here."""
        from singer import tracking

        try:
            runs = tracking.search_runs(
                self.spec.experiment,
                self.state["tracking_uri"],
                f"tags.mlflow.parentRunId = '{self.state['parent_run_id']}' and tags.trial = '{number}' "
                f"and tags.seed = '{seed}'",
            )
        except Exception as err:  # tracking trouble must not stop the sweep
            self._log(
                f"[yellow]could not look up the MLflow run of trial {number} seed {seed}: {escape(str(err))}[/]"
            )
            return
        for _, row in runs.iterrows():
            outcome["run_id"] = outcome.get("run_id") or row["run_id"]
            if row["status"] == "RUNNING":
                run = tracking.Run(row["run_id"], self.state["tracking_uri"])
                run.set_tags({"error": outcome["error"]})
                run.end("FAILED")

    def _maybe_finish(self, flight: TrialInFlight) -> None:
        """Tell Optuna once every seed of the trial has an outcome."""
        from optuna.trial import TrialState

        if any(s not in flight.outcomes for s in self.spec.seeds):
            return
        outcomes = [flight.outcomes[s] for s in self.spec.seeds]
        states = [o["state"] for o in outcomes]
        trial, number = flight.trial, flight.number
        if FAIL in states:
            failed = [(s, o) for s, o in zip(self.spec.seeds, outcomes) if o["state"] == FAIL]
            reason = "; ".join(f"seed {s}: {o['error']}" for s, o in failed)
            trial.set_user_attr("fail_reason", reason)
            self.study.tell(trial, state=TrialState.FAIL)
            self._log(
                f"[red]trial {number} FAILED[/] ({escape(flight.config.label())}): {escape(reason)}"
            )
        elif PRUNED in states:
            self.study.tell(trial, state=TrialState.PRUNED)
            why = next(o.get("reason", "") for o in outcomes if o["state"] == PRUNED)
            self._log(
                f"[yellow]trial {number} pruned[/] ({escape(flight.config.label())}): {escape(why)}"
            )
        else:
            values = [
                _mean([o["values"][obj.metric] for o in outcomes]) for obj in self.spec.objectives
            ]
            bad = [o.metric for o, v in zip(self.spec.objectives, values) if not math.isfinite(v)]
            if bad:
                trial.set_user_attr("fail_reason", f"objective {', '.join(bad)} is not finite")
                self.study.tell(trial, state=TrialState.FAIL)
                self._log(
                    f"[red]trial {number} FAILED[/]: objective {', '.join(bad)} is not finite"
                )
            else:
                self.study.tell(trial, values if len(values) > 1 else values[0])
                shown = ", ".join(
                    f"{o.metric}={v:.4g}" for o, v in zip(self.spec.objectives, values)
                )
                self._log(
                    f"[green]trial {number} done[/] ({escape(flight.config.label())}): {shown}"
                )
        self.in_flight.pop(number, None)

    # -- the loop -----------------------------------------------------------------------------
    def _fill_slots(self) -> None:
        while len(self.active) < self.spec.parallel:
            if self.pending:
                number, seed, resume = self.pending.popleft()
                self._submit(number, seed, resume)
            elif self.started < self.target:
                self._ask()
            else:
                return

    def counts(self) -> dict[str, int]:
        """Trials per state: queued (not started, or waiting for a job slot), running, done, pruned, failed."""
        from optuna.trial import TrialState

        finished = {TrialState.COMPLETE: 0, TrialState.PRUNED: 0, TrialState.FAIL: 0}
        for t in self.study.get_trials(deepcopy=False, states=tuple(finished)):
            finished[t.state] += 1
        running = {n for n, _ in self.active}
        waiting = [n for n in self.in_flight if n not in running]
        return {
            "queued": max(0, self.target - self.started) + len(waiting),
            "running": len(running),
            "done": finished[TrialState.COMPLETE],
            "pruned": finished[TrialState.PRUNED],
            "failed": finished[TrialState.FAIL],
        }

    def _log(self, text: str) -> None:
        if self.progress is not None:
            self.progress.log(text)
        else:
            self.console.print(text, soft_wrap=True, highlight=False)

    def run(self) -> SweepSummary:
        """Run (or resume) the sweep to the end; returns where everything was recorded."""
        self._prepare_out_dir()
        # Job results are unpickled from jobs/: refuse a sweep folder others can write to.
        check_private_tree(self.out_dir, subfolders=("jobs",), what="sweep folder")
        self._open_study()
        self.state["sessions"] = int(self.state.get("sessions", 0)) + 1
        self._open_tracking()
        self._make_executor()
        self._enqueue_planned()
        self._prepare_data()
        spec = self.spec
        self._log(
            f"[bold]sweep {spec.name}[/]: {self.target} trials × {len(spec.seeds)} seeds on {self.launcher}, "
            f"{spec.parallel} job(s) at a time; output {self.out_dir}"
        )
        status = "FAILED"
        report = None
        try:
            with SweepProgress(
                spec.name, self.target, console=self.console, enabled=self.show_progress
            ) as progress:
                self.progress = progress
                self._adopt_running()
                while True:
                    self._fill_slots()
                    progress.update(self.counts())
                    if not self.active:
                        break
                    ended = 0
                    for active in list(self.active.values()):
                        outcome = self._poll(active)
                        if outcome is not None:
                            self._record(active, outcome)
                            ended += 1
                    progress.update(self.counts())
                    if not ended:
                        time.sleep(self.poll_s)
                self.progress = None
            status = "FINISHED"
            report = self._report()
        except KeyboardInterrupt:
            status = "KILLED"
            self._log(
                f"[yellow]interrupted[/]: {len(self.in_flight)} trial(s) unfinished. Continue with: "
                f"python -m singer.sweep {spec.path} --resume --out {self.out_dir}"
            )
            raise
        finally:
            self.progress = None
            summary = self._summarize()
            self.parent.end(status)
        self._print_summary(summary)
        if report is not None:
            self._print_report(report)
        return summary

    # -- the end ------------------------------------------------------------------------------
    def _arms(self) -> list:
        from singer.sweeps import report as R

        arms = []
        for t in self.study.get_trials(deepcopy=False):
            if t.state.name != "COMPLETE":
                continue
            params = {k: v for k, v in t.params.items() if k != VARIANT_PARAM}
            dirs = {s: self._trial_dir(t.number, s) for s in self.spec.seeds}
            arms.append(
                R.Arm(
                    R.arm_label(t.user_attrs.get("variant") or "", params),
                    t.number,
                    params,
                    dirs,
                    {s: R.read_eval(d) for s, d in dirs.items()},
                )
            )
        return arms

    def _report(self) -> dict | None:
        """The ``compare`` section's verdict, plots and videos (``singer.sweeps.report``).

        Nothing here can fail the sweep: a problem is logged and the trials table stands.
        """
        compare = self.spec.compare
        if compare is None:
            return None
        from singer.sweeps import report as R

        try:
            return R.build_report(
                arms=self._arms(),
                compare=compare,
                evaluate=self.spec.evaluate,
                best=self._best(),
                out_dir=self.out_dir / R.REPORT_DIR,
                parent=self.parent,
                title=f"{self.spec.name}: {self.spec.description or 'verdict'}",
                log=self._log,
            )
        except Exception as err:  # noqa: BLE001 - the sweep itself finished
            self._log(f"[yellow]could not build the report: {escape(_reason(err))}[/]")
            return None

    def _print_report(self, report: dict) -> None:
        from singer.sweeps import report as R

        for line in R.console_lines(report):
            self._log(line)

    def _rows(self) -> tuple[list[str], list[dict]]:
        """One row per trial: params, state, objective (mean) and per-seed values, runs, errors."""
        spec = self.spec
        metrics = [o.metric for o in spec.objectives]
        columns = ["trial", "state", "variant", *[p.key for p in spec.space], *metrics]
        columns += [f"{m} [seed {s}]" for m in metrics for s in spec.seeds]
        columns += ["seconds", "mlflow_runs", "fail_reason", "overrides"]
        rows = []
        for t in self.study.get_trials(deepcopy=False):
            if t.state.name == "WAITING":
                continue
            row: dict[str, Any] = {
                "trial": t.number,
                "state": t.state.name,
                "variant": t.user_attrs.get("variant") or "",
            }
            for p in spec.space:
                row[p.key] = t.params.get(p.key, "")
            values = t.values or []
            for m, v in zip(metrics, values if t.state.name == "COMPLETE" else []):
                row[m] = v
            runs = []
            for s in spec.seeds:
                result = t.user_attrs.get(f"result.seed{s}") or {}
                for m in metrics:
                    row[f"{m} [seed {s}]"] = (result.get("values") or {}).get(m, "")
                if result.get("run_id"):
                    runs.append(result["run_id"])
            row["seconds"] = round(t.duration.total_seconds(), 1) if t.duration else ""
            row["mlflow_runs"] = " ".join(runs)
            row["fail_reason"] = t.user_attrs.get("fail_reason", "")
            row["overrides"] = " ".join(t.user_attrs.get("overrides", []))
            rows.append(row)
        return columns, rows

    def _best(self) -> list[dict]:
        completed = [t for t in self.study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
        if not completed:
            return []
        best = [self.study.best_trial] if not self.spec.multi_objective else self.study.best_trials
        return [
            {
                "trial": t.number,
                "variant": t.user_attrs.get("variant") or "",
                "params": dict(t.params),
                "values": dict(zip([o.metric for o in self.spec.objectives], t.values)),
                "overrides": t.user_attrs.get("overrides", []),
            }
            for t in best
        ]

    def _summarize(self) -> SweepSummary:
        columns, rows = self._rows()
        csv_path, md_path = self.out_dir / "trials.csv", self.out_dir / "trials.md"
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        csv_path.write_text(buffer.getvalue())
        md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        md += ["| " + " | ".join(_cell(r.get(c, "")) for c in columns) + " |" for r in rows]
        md_path.write_text(f"# Sweep {self.spec.name}\n\n" + "\n".join(md) + "\n")
        best = self._best()
        counts = self.counts()
        try:
            self.parent.log_artifact(csv_path, "summary")
            self.parent.log_artifact(md_path, "summary")
            self.parent.log_metrics({f"trials/{k}": v for k, v in counts.items()})
            if best and not self.spec.multi_objective:
                b = best[0]
                self.parent.log_params({f"best.{k}": v for k, v in b["params"].items()})
                self.parent.log_metrics({f"best/{k}": v for k, v in b["values"].items()})
                self.parent.set_tags(
                    {
                        "best.trial": b["trial"],
                        "best.variant": b["variant"] or "search",
                        "best.overrides": " ".join(b["overrides"]),
                    }
                )
            elif best:
                self.parent.set_tags({"pareto.trials": " ".join(str(b["trial"]) for b in best)})
        except Exception as err:  # the summary files are on disk either way
            self._log(f"[yellow]could not log the summary to MLflow: {escape(str(err))}[/]")
        self._save_state()
        return SweepSummary(
            self.spec.name,
            self.out_dir,
            self.state["storage"],
            self.state["tracking_uri"],
            self.spec.experiment,
            self.state["parent_run_id"],
            counts,
            best,
            csv_path,
        )

    def _print_summary(self, summary: SweepSummary) -> None:
        c, say = summary.counts, self._log
        say(
            f"[bold]sweep {summary.name} finished[/]: {c['done']} done, {c['pruned']} pruned, {c['failed']} failed; "
            f"table {summary.summary_csv}"
        )
        if not summary.best:
            say("[yellow]no trial completed[/]")
        for b in summary.best:
            label = "Pareto-optimal" if len(b["values"]) > 1 else "best"
            values = ", ".join(f"{k}={v:.4g}" for k, v in b["values"].items())
            params = ", ".join(f"{k}={v}" for k, v in b["params"].items())
            say(
                f"[green]{label}: trial {b['trial']}[/] ({escape(b['variant'] or 'search space')}): {values}"
            )
            say(f"  params: {escape(params)}")
            say(f"  overrides: {escape(' '.join(b['overrides']) or '(the base overrides)')}")
        say(
            f"MLflow: {summary.tracking_uri}  experiment {summary.experiment!r}, parent run {summary.parent_run_id}"
        )
        say(f"  open the UI: {_ui_hint(summary.tracking_uri)}")
        say(
            f"  the answer: {_ui_base(summary.tracking_uri)}/#/experiments/{self.state.get('experiment_id')}"
            f"/runs/{summary.parent_run_id}?workflowType=machine_learning (the parent run; its "
            "description holds the verdict)"
        )
        say(f"Optuna study {summary.name!r}: {summary.storage}")
