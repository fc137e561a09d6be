"""A sweep's folder, and the state in it that lets a restarted driver carry on.

The folder (``--out``, by default ``sweeps_out/<name>``) holds a copy of the sweep file
(``sweep.yaml``), ``sweep_state.json``, the default Optuna storage (``optuna.journal``),
submitit's job folders (``jobs/session<N>/``), one folder per trained seed
(``trials/<NNNN>-seed<S>/``), and what the sweep ends with (``trials.csv``, ``trials.md``,
``report/``).

``sweep_state.json`` records the storage, the MLflow parent run, the sweep's identity (what
may not change on ``--resume``), how many driver sessions ran, and one record per submitted
job, written before the job is recorded in Optuna: a job is never submitted unrecorded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from singer.safe_io import check_private_tree
from singer.sweeps.spec import SweepSpec
from singer.sweeps.trial import write_json_atomic

STATE_FILE = "sweep_state.json"
DEFAULT_OUT_ROOT = Path("sweeps_out")


class SweepError(RuntimeError):
    """The sweep cannot start or continue (the message says what to do)."""


def trial_seed_dir(out_dir: Path, number: int, seed: int) -> Path:
    """Where the job of one (trial, seed) trains, evaluates and leaves its result."""
    return out_dir / "trials" / f"{number:04d}-seed{seed}"


class SweepState(dict):
    """The contents of ``sweep_state.json`` (a plain dict, as written) and the folder it is in."""

    def __init__(self, out_dir: Path, data: dict):
        super().__init__(data)
        self.out_dir = out_dir

    @property
    def path(self) -> Path:
        return self.out_dir / STATE_FILE

    def save(self) -> None:
        write_json_atomic(self.path, self)

    def job(self, number: int, seed: int) -> dict | None:
        """The record of the job last submitted for this (trial, seed), if any."""
        return self["jobs"].get(_job_key(number, seed))

    def record_job(self, number: int, seed: int, record: dict) -> None:
        self["jobs"][_job_key(number, seed)] = record
        self.save()

    def record_outcome(self, number: int, seed: int, state: str) -> None:
        self["jobs"].setdefault(_job_key(number, seed), {})["outcome"] = state
        self.save()


def _job_key(number: int, seed: int) -> str:
    return f"{number}-seed{seed}"


def open_sweep_folder(spec: SweepSpec, out_dir: Path, resume: bool) -> SweepState:
    """The state of a sweep to resume (its file must not have changed in ways that matter), or a
    fresh one in an empty folder. Either way the folder must be private: the driver unpickles
    the jobs' results from ``jobs/``."""
    state = _reopen(spec, out_dir) if resume else _begin(spec, out_dir)
    check_private_tree(out_dir, subfolders=("jobs",), what="sweep folder")
    return state


def _reopen(spec: SweepSpec, out_dir: Path) -> SweepState:
    path = out_dir / STATE_FILE
    if not path.exists():
        raise SweepError(
            f"nothing to resume: {path} does not exist (run without --resume "
            "to start the sweep, or pass the --out of the sweep to resume)"
        )
    state = SweepState(out_dir, json.loads(path.read_text()))
    before, now = state.get("identity"), spec.identity()
    if before != now:
        changed = sorted(
            k for k in set(before or {}) | set(now) if (before or {}).get(k) != now.get(k)
        )
        raise SweepError(
            f"{spec.path} changed since sweep {spec.name!r} began in {out_dir} "
            f"(keys: {', '.join(changed)}); only limits, launcher, timeout_min, max_requeue and "
            "pruner may change on --resume. Restore the file, or start a new sweep with --out"
        )
    return state


def _begin(spec: SweepSpec, out_dir: Path) -> SweepState:
    if out_dir.exists() and any(out_dir.iterdir()):
        raise SweepError(
            f"the sweep output dir {out_dir} exists already: pass --resume to continue that "
            "sweep, or --out DIR for a new one"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(spec.path, out_dir / "sweep.yaml")
    return SweepState(
        out_dir,
        {
            "version": 1,
            "name": spec.name,
            "identity": spec.identity(),
            "sessions": 0,
            "jobs": {},
        },
    )
