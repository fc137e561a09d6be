"""The sweep's Optuna study: the driver's only way to Optuna (the jobs reach it in ``trial.py``).

One study per sweep, named after it, in real storage: a journal file in the sweep folder
unless ``--storage`` names another. The study is the source of truth about trials: each
trial's params and ``variant``, its ``overrides``, per seed the record of its job
(``job.seed<S>``) and the job's outcome (``result.seed<S>``), and ``fail_reason`` when it
failed. The driver alone asks and tells; a trial's objective is the mean over its seeds.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from singer.sweeps.spec import VARIANT_PARAM, Configuration, SweepSpec
from singer.sweeps.state import SweepError
from singer.sweeps.trial import (
    COMPLETE,
    FAIL,
    PRUNED,
    make_pruner,
    make_sampler,
    open_storage,
    storage_spec,
)


def storage_url(recorded: str | None, given: str | None, out_dir: Path) -> str:
    """Where the study is: ``--storage`` (which must agree with what the sweep recorded), else
    what the sweep recorded, else a journal file in the sweep folder."""
    given = storage_spec(given) if given else None
    if recorded and given and recorded != given:
        raise SweepError(
            f"this sweep's study is in {recorded}, not {given}: drop --storage or pass that one"
        )
    return given or recorded or f"journal:{out_dir / 'optuna.journal'}"


class SweepStudy:
    def __init__(self, spec: SweepSpec, study: optuna.Study):
        self.spec = spec
        self.study = study

    @classmethod
    def open(cls, spec: SweepSpec, storage: str, out_dir: Path, resume: bool) -> SweepStudy:
        """Create the sweep's study, or load it on ``--resume``; it must optimise what the
        sweep file says."""
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            study = optuna.create_study(
                study_name=spec.name,
                storage=open_storage(storage),
                directions=spec.directions,
                pruner=make_pruner(spec.pruner),
                sampler=make_sampler(spec.sampler, spec.sampler_seed, spec.tpe_startup_trials),
                load_if_exists=resume,
            )
        except optuna.exceptions.DuplicatedStudyError:
            raise SweepError(
                f"a study named {spec.name!r} exists already in {storage}: pass "
                "--resume to continue it, or rename the sweep"
            ) from None
        if study.directions != [optuna.study.StudyDirection[d.upper()] for d in spec.directions]:
            raise SweepError(
                f"study {spec.name!r} in {storage} has directions "
                f"{study.directions}, the sweep file {spec.directions}"
            )
        done = len(study.get_trials(deepcopy=False))
        if done:  # a sampler seeded as in the first session would replay its random draws
            study.sampler = make_sampler(
                spec.sampler, spec.sampler_seed + done, spec.tpe_startup_trials
            )
        study.set_user_attr("sweep.out_dir", str(out_dir))
        return cls(spec, study)

    def record_parent_run(self, run_id: str, tracking_uri: str) -> None:
        self.study.set_user_attr("mlflow.parent_run_id", run_id)
        self.study.set_user_attr("mlflow.tracking_uri", tracking_uri)

    def enqueue_planned(self, max_trials: int | None) -> int:
        """Put the fixed configurations (grid or variants) in the study's queue, once each:
        ``skip_if_exists`` also skips configurations that ran (or failed) in an earlier session.
        Returns how many trials have started, in this session or earlier ones."""
        started = len([t for t in self.trials() if t.state != TrialState.WAITING])
        for config in self.spec.planned_configurations(max_trials):
            self.study.enqueue_trial(
                config.params, user_attrs={"variant": config.variant}, skip_if_exists=True
            )
        return started

    # -- trials -------------------------------------------------------------------------------
    def ask(self) -> tuple[Trial, Configuration]:
        """A new trial: the next queued configuration, else one the sampler picks."""
        trial = self.study.ask()
        return trial, self._describe(trial)

    def running(self) -> Iterator[tuple[Trial, Configuration]]:
        """The trials an earlier session started and did not tell (for ``--resume`` to adopt)."""
        for frozen in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            trial = Trial(self.study, frozen._trial_id)
            yield trial, self._describe(trial)

    def _describe(self, trial: Trial) -> Configuration:
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

    def record_job(self, trial: Trial, seed: int, record: dict) -> None:
        trial.set_user_attr(f"job.seed{seed}", record)

    def record_outcome(self, trial: Trial, seed: int, outcome: dict) -> None:
        trial.set_user_attr(f"result.seed{seed}", outcome)

    def recorded(self, trial: Trial) -> tuple[dict[int, dict], dict[int, dict]]:
        """Per seed, the outcomes and the job records stored in the trial so far."""
        attrs = trial.user_attrs
        outcomes = {
            s: attrs[f"result.seed{s}"] for s in self.spec.seeds if f"result.seed{s}" in attrs
        }
        jobs = {s: attrs[f"job.seed{s}"] for s in self.spec.seeds if f"job.seed{s}" in attrs}
        return outcomes, jobs

    def finish(self, trial: Trial, outcomes: list[dict]) -> tuple[str, str]:
        """Tell Optuna how the trial ended, from its seeds' outcomes (in the order of the
        sweep's seeds): FAIL if a seed failed, PRUNED if one was pruned, else COMPLETE with the
        mean over seeds of each objective (FAIL if one is not finite). Returns that state, and
        the reason or the objective values."""
        seeds, objectives = self.spec.seeds, self.spec.objectives
        states = [o["state"] for o in outcomes]
        if FAIL in states:
            failed = [(s, o) for s, o in zip(seeds, outcomes) if o["state"] == FAIL]
            reason = "; ".join(f"seed {s}: {o['error']}" for s, o in failed)
            self._fail(trial, reason)
            return FAIL, reason
        if PRUNED in states:
            self.study.tell(trial, state=TrialState.PRUNED)
            return PRUNED, next(o.get("reason", "") for o in outcomes if o["state"] == PRUNED)
        values = [_mean([o["values"][obj.metric] for o in outcomes]) for obj in objectives]
        bad = [o.metric for o, v in zip(objectives, values) if not math.isfinite(v)]
        if bad:
            reason = f"objective {', '.join(bad)} is not finite"
            self._fail(trial, reason)
            return FAIL, reason
        self.study.tell(trial, values if len(values) > 1 else values[0])
        return COMPLETE, ", ".join(f"{o.metric}={v:.4g}" for o, v in zip(objectives, values))

    def _fail(self, trial: Trial, reason: str) -> None:
        trial.set_user_attr("fail_reason", reason)
        self.study.tell(trial, state=TrialState.FAIL)

    # -- what the study holds -----------------------------------------------------------------
    def trials(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False)

    def best(self) -> list[FrozenTrial]:
        """The best trial, or the Pareto front of a multi-objective sweep; none before a trial
        completes."""
        if not any(t.state == TrialState.COMPLETE for t in self.trials()):
            return []
        return self.study.best_trials if self.spec.multi_objective else [self.study.best_trial]

    def finished_counts(self) -> dict[str, int]:
        """Trials done, pruned and failed."""
        finished = {TrialState.COMPLETE: 0, TrialState.PRUNED: 0, TrialState.FAIL: 0}
        for t in self.study.get_trials(deepcopy=False, states=tuple(finished)):
            finished[t.state] += 1
        return {
            "done": finished[TrialState.COMPLETE],
            "pruned": finished[TrialState.PRUNED],
            "failed": finished[TrialState.FAIL],
        }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan
