"""The one module that talks to MLflow.

Embedded default: ``sqlite:///mlflow.db`` in the working directory. On a cluster, point
``MLFLOW_TRACKING_URI`` (or ``tracking.uri``) at a shared ``mlflow server``.

Every run records the flattened config as params, the git commit and package versions as
tags, and tags for the front-end, backbone and model so runs group in the UI.
"""

from __future__ import annotations

import json
import os
import platform
import posixpath
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Mapping
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from singer.config import flatten, loggable_container

TRACKED_PACKAGES = (
    "torch",
    "torchaudio",
    "torchvision",
    "timm",
    "diffusers",
    "ptwt",
    "PyWavelets",
    "numpy",
    "optuna",
    "mlflow",
    "submitit",
    "hydra-core",
    "decord",
    "av",
    "scikit-learn",
    "singer-harness",
)
MAX_PARAM_LENGTH = 6000  # MLflow's limit on one param value


def tracking_uri(explicit: str | None = None) -> str:
    """``explicit`` → ``$MLFLOW_TRACKING_URI`` → ``sqlite:///<cwd>/mlflow.db``."""
    if explicit:
        return str(explicit)
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def client(uri: str | None = None):
    # lazy: start-up: MLflow takes seconds to import, and every module that can log imports
    # this one whether or not it logs
    import mlflow
    from mlflow.tracking import MlflowClient

    resolved = tracking_uri(uri)
    mlflow.set_tracking_uri(resolved)
    return MlflowClient(tracking_uri=resolved)


# MLflow 3's UI opens an experiment by its kind: without this tag it may guess "GenAI" and open
# on an empty traces overview instead of the runs table.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def get_or_create_experiment(name: str, uri: str | None = None) -> str:
    """Experiment id for ``name``, tagged as a model-training experiment. Create it in one
    process (the driver) before parallel jobs start: concurrent first writers race on the
    sqlite schema."""
    c = client(uri)
    experiment = c.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            c.restore_experiment(experiment.experiment_id)
        experiment_id = experiment.experiment_id
    else:
        try:
            experiment_id = c.create_experiment(name, tags=EXPERIMENT_KIND)
        except Exception:  # created by someone else in the meantime
            experiment = c.get_experiment_by_name(name)
            if experiment is None:
                raise
            experiment_id = experiment.experiment_id
    for key, value in EXPERIMENT_KIND.items():
        if experiment is None or experiment.tags.get(key) != value:
            c.set_experiment_tag(experiment_id, key, value)
    return experiment_id


@lru_cache(maxsize=1)
def git_commit() -> dict[str, str]:
    """Commit and dirty flag of the checkout this package runs from ("unknown" outside git)."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return {"git.commit": commit, "git.dirty": str(bool(dirty)).lower()}
    except (OSError, subprocess.SubprocessError):
        return {"git.commit": "unknown", "git.dirty": "unknown"}


@lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[f"version.{name}"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[f"version.{name}"] = "not installed"
    return versions


def environment_tags() -> dict[str, str]:
    """Tags that make a run reproducible: git commit, package versions, python, host."""
    return {
        **git_commit(),
        **package_versions(),
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
    }


class Run:
    """A handle on one MLflow run. Methods are safe to call from a single process only."""

    def __init__(self, run_id: str, uri: str | None = None):
        self.run_id = run_id
        self.uri = tracking_uri(uri)
        self._client = client(self.uri)

    @property
    def info(self):
        return self._client.get_run(self.run_id).info

    def log_params(self, params: Mapping[str, Any]) -> None:
        # lazy: start-up: MLflow takes seconds (see client)
        from mlflow.entities import Param

        existing = self._client.get_run(self.run_id).data.params
        items = []
        for key, value in params.items():
            text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
            text = text[:MAX_PARAM_LENGTH]
            if key in existing:  # params are immutable in MLflow: a resumed run logs each once
                continue
            items.append(Param(key, text))
        for start in range(0, len(items), 100):
            self._client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        # lazy: start-up: MLflow takes seconds (see client)
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step or 0)) for k, v in metrics.items()]
        for start in range(0, len(items), 500):
            self._client.log_batch(self.run_id, metrics=items[start : start + 500])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        # lazy: start-up: MLflow takes seconds (see client)
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        if items:
            self._client.log_batch(self.run_id, tags=items)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, data: dict, name: str) -> None:
        self._client.log_dict(self.run_id, data, name)

    def log_text(self, text: str, name: str) -> None:
        self._client.log_text(self.run_id, text, name)

    def end(self, status: str = "FINISHED") -> None:
        """status: FINISHED | FAILED | KILLED."""
        self._client.set_terminated(self.run_id, status=status)

    def mark_running(self) -> None:
        self._client.update_run(self.run_id, status="RUNNING")


def start_run(
    experiment: str,
    *,
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    parent_run_id: str | None = None,
    uri: str | None = None,
    experiment_id: str | None = None,
) -> Run:
    """Create a run (nested under ``parent_run_id`` when given) with the environment tags."""
    c = client(uri)
    exp_id = experiment_id or get_or_create_experiment(experiment, uri)
    all_tags = {**environment_tags(), **{k: str(v) for k, v in (tags or {}).items()}}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = c.create_run(exp_id, run_name=run_name, tags=all_tags)
    return Run(run.info.run_id, uri)


def resume_run(run_id: str, uri: str | None = None) -> Run:
    run = Run(run_id, uri)
    run.mark_running()
    return run


class NoRun:
    """Stands in for a :class:`Run` where nothing is logged (DDP ranks other than 0): every
    call does nothing."""

    run_id = None

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def training_run_tags(cfg) -> dict[str, str]:
    """A training run's tags: the model and its components by name, plus ``tracking.tags``."""
    tags = {"model": cfg.model.name, "trainer": cfg.trainer.get("name", "")}
    for group in ("frontend", "backbone", "codec"):
        if group in cfg and cfg[group] is not None:
            tags[group] = cfg[group].name
    if "backbone" in cfg and "bottleneck_filter" in cfg.backbone:
        tags["bottleneck_filter"] = cfg.backbone.bottleneck_filter
    tags.update({k: str(v) for k, v in (cfg.tracking.get("tags") or {}).items()})
    return tags


def open_training_run(
    cfg, out_dir: Path, run_id: str | None, params: Mapping[str, Any] | None = None
) -> Run:
    """The run ``run_id`` continued (a resumed training), or a new one for the composed config
    ``cfg``: the config as params and ``config.json``, ``params`` besides, and the out dir."""
    tc = cfg.tracking
    if run_id:
        return resume_run(run_id, tc.uri)
    run = start_run(
        tc.experiment,
        run_name=tc.run_name or out_dir.name,
        tags=training_run_tags(cfg),
        parent_run_id=tc.get("parent_run_id"),
        uri=tc.uri,
    )
    run.log_params(flatten(loggable_container(cfg)))  # env-read values stay unresolved
    run.log_params(dict(params or {}))
    run.log_dict(loggable_container(cfg), "config.json")
    run.set_tags({"out_dir": str(out_dir.resolve())})
    return run


def end_failed_run(run_id: str, uri: str | None, err: BaseException) -> None:
    """End a run still RUNNING as FAILED (KILLED on Ctrl-C), tagged with ``err``. A failure to
    reach the store is a warning: the original error matters more."""
    try:
        run = Run(run_id, uri)
        if run.info.status != "RUNNING":  # ended already
            return
        run.set_tags({"error": f"{type(err).__name__}: {err}"[:5000]})
        run.end("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
    except Exception as tracking_err:
        warnings.warn(
            f"could not end MLflow run {run_id}: {tracking_err}", RuntimeWarning, stacklevel=2
        )


def search_runs(experiment: str, uri: str | None = None, filter_string: str = ""):
    """DataFrame of the runs of an experiment (``mlflow.search_runs``)."""
    # lazy: start-up: MLflow takes seconds (see client)
    import mlflow

    client(uri)
    return mlflow.search_runs(experiment_names=[experiment], filter_string=filter_string)


# -- evaluation helpers ---------------------------------------------------------------------------
def store_exists(uri: str | None = None) -> bool:
    """False for a ``sqlite:///`` store whose file does not exist (opening it would create it)."""
    resolved = tracking_uri(uri)
    if resolved.startswith("sqlite:///"):
        return Path(resolved[len("sqlite:///") :]).is_file()
    return True


def find_run(run_id: str, uri: str | None = None):
    """The MLflow run with this id, or None when this store has no such run (or no such store:
    a missing sqlite file is not created)."""
    # lazy: start-up: MLflow takes seconds (see client)
    from mlflow.exceptions import MlflowException

    if not store_exists(uri):
        return None
    try:
        return client(uri).get_run(run_id)
    except MlflowException:
        return None


def run_out_dir(run_id: str, uri: str | None = None) -> Path:
    """The output directory a training run recorded in its ``out_dir`` tag.

    Raises ``LookupError`` when the run does not exist in the store or has no such tag.
    """
    if not store_exists(uri):
        raise LookupError(
            f"there is no MLflow store at {tracking_uri(uri)} "
            "(set MLFLOW_TRACKING_URI to the runs' store)"
        )
    run = find_run(run_id, uri)
    if run is None:
        raise LookupError(f"no MLflow run '{run_id}' in {tracking_uri(uri)}")
    out_dir = run.data.tags.get("out_dir")
    if not out_dir:
        raise LookupError(
            f"MLflow run '{run_id}' has no 'out_dir' tag (it was not started by the trainer)"
        )
    return Path(out_dir)


def log_table(run: Run, rows: list[dict], name: str) -> None:
    """Log a list of row dicts as the MLflow table artifact ``name`` (``dir/file.json``).

    The file is what ``mlflow.log_table`` writes (pandas ``orient="split"`` JSON, readable with
    ``mlflow.load_table`` and shown by the UI), but it *replaces* an earlier table of the same
    name: ``log_table`` itself appends, so re-evaluating a run would duplicate its rows.
    """
    # lazy: start-up: MLflow and pandas take seconds (see client)
    import pandas as pd
    from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

    directory, filename = posixpath.split(posixpath.normpath(name))
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / filename
        pd.DataFrame(rows).to_json(local, orient="split", index=False)
        run.log_artifact(local, directory or None)
    tags = run._client.get_run(run.run_id).data.tags
    logged = json.loads(tags.get(MLFLOW_LOGGED_ARTIFACTS, "[]"))
    entry = {"path": name, "type": "table"}
    if entry not in logged:
        run.set_tags({MLFLOW_LOGGED_ARTIFACTS: json.dumps([*logged, entry])})
