"""Load MLflow runs and the evaluator's table artifacts into tidy pandas frames.

Every loader goes through :mod:`singer.tracking` (the project's one door to MLflow), so the
tracking URI is resolved the same way as everywhere else: the explicit ``uri`` argument, else
``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the working directory.

Frames:

- :func:`load_runs`: one row per training run (sweep parents left out), the raw ``metrics.*``,
  ``params.*`` and ``tags.*`` columns of ``mlflow.search_runs`` plus the short, typed columns of
  :data:`ID_COLUMNS` (``frontend``, ``seed``, ``levels``, ``data_kind``, ...) that the plots
  group by;
- :func:`metrics_long`: one row per (run, metric), ``value`` plus the run's own CI when the
  evaluator logged ``<metric>_ci_lo`` / ``_ci_hi``;
- :func:`load_table`: the rows of an MLflow table artifact (``eval/band_sensitivity.json``,
  ``eval/probe_r2.json``) of every run that has it, joined with the run's id columns.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from singer import tracking

BAND_TABLE = "eval/band_sensitivity.json"
PROBE_TABLE = "eval/probe_r2.json"
BAND_COLUMNS = ("band", "lo_hz", "hi_hz", "target", "delta", "ci_lo", "ci_hi")
PROBE_COLUMNS = ("frontend", "band", "lo_hz", "hi_hz", "cue", "r2", "ci_lo", "ci_hi")

# Short columns added to every run frame; the plots group and label by these.
ID_COLUMNS = (
    "run_id",
    "run_name",
    "status",
    "experiment_id",
    "sweep",
    "trial",
    "seed",
    "variant",
    "config",
    "model",
    "frontend",
    "backbone",
    "bottleneck_filter",
    "levels",
    "wavelet",
    "data_kind",
)
CI_SUFFIXES = (
    "_ci_lo",
    "_ci_hi",
    "_n",
)  # companions of a metric: its interval and its number of units
SEARCH_VARIANT = "search"  # the sweep driver's variant tag for trials of the search space
# Metrics of the sweep parent run (counts, the best trial), not of a model.
PARENT_METRIC_PREFIXES = ("trials/", "best/")


class AnalysisError(ValueError):
    """The requested runs, columns or tables do not exist; the message says what does."""


def require_columns(frame: pd.DataFrame, columns: Iterable[str], what: str = "frame") -> None:
    """Raise :class:`AnalysisError` naming every missing column and the ones that exist."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise AnalysisError(
            f"{what} lacks column(s) {missing}; it has: {', '.join(map(str, frame.columns))}"
        )


# -- runs -------------------------------------------------------------------------------------
def _client(uri: str | None):
    return tracking.client(uri)


def _search(
    experiment_ids: list[str], filter_string: str, max_results: int = 100_000
) -> pd.DataFrame:
    import mlflow  # lazy: start-up: mlflow takes seconds; analysis.stats and plots need none

    frame = mlflow.search_runs(
        experiment_ids=experiment_ids,
        filter_string=filter_string,
        max_results=max_results,
        output_format="pandas",
    )
    return frame if isinstance(frame, pd.DataFrame) else pd.DataFrame()


def load_runs(
    experiment: str | None = None,
    *,
    sweep: str | None = None,
    uri: str | None = None,
    filter_string: str = "",
    statuses: Sequence[str] | None = ("FINISHED",),
    include_parents: bool = False,
) -> pd.DataFrame:
    """Runs of an MLflow ``experiment`` and/or a ``sweep`` (its child runs carry ``tags.sweep``).

    With only ``sweep`` every experiment is searched. ``statuses`` keeps finished runs by
    default (failed or killed runs have partial metrics); ``None`` keeps all. Sweep parent
    runs are left out unless ``include_parents``. Raises :class:`AnalysisError` when the
    experiment does not exist or nothing matches.
    """
    if not experiment and not sweep:
        raise AnalysisError("load_runs needs an experiment name or a sweep name")
    client = _client(uri)
    where = tracking.tracking_uri(uri)
    if experiment:
        found = client.get_experiment_by_name(experiment)
        if found is None and sweep is None and _sweep_exists(experiment):
            # A sweep logged into another experiment (``mlflow.experiment`` in its file): the
            # name is the sweep's, so search every experiment for its runs.
            experiment, sweep = None, experiment
        elif found is None:
            known = sorted(e.name for e in client.search_experiments())
            raise AnalysisError(
                f"no MLflow experiment (or sweep) {experiment!r} in {where}; experiments there: {known}"
            )
    if experiment:
        experiment_ids = [found.experiment_id]
    else:
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
    clauses = [filter_string] if filter_string else []
    if sweep:
        clauses.append(f"tags.sweep = '{sweep}'")
    frame = _search(experiment_ids, " and ".join(clauses))
    described = " ".join(
        filter(
            None,
            [
                f"experiment {experiment!r}" if experiment else "",
                f"sweep {sweep!r}" if sweep else "",
            ],
        )
    )
    if frame.empty:
        raise AnalysisError(
            f"no runs for {described} in {where}"
            + (f" matching {filter_string!r}" if filter_string else "")
        )
    if not include_parents and "tags.sweep.role" in frame.columns:
        frame = frame[frame["tags.sweep.role"].fillna("") != "parent"]
    if statuses is not None:
        frame = frame[frame["status"].isin(list(statuses))]
    if frame.empty:
        raise AnalysisError(
            f"no {'/'.join(statuses or [])} training runs for {described} in {where}"
        )
    return add_id_columns(frame.reset_index(drop=True))


def _sweep_exists(name: str) -> bool:
    """Whether any run of any experiment carries ``tags.sweep = name`` (``uri`` already set)."""
    import mlflow  # lazy: start-up: mlflow takes seconds; analysis.stats and plots need none

    ids = [e.experiment_id for e in mlflow.search_experiments()]
    return bool(ids) and not _search(ids, f"tags.sweep = '{name}'", max_results=1).empty


def _missing(value) -> bool:
    """``None``, NaN/NA, or the text MLflow logs for a null param (``"None"``, ``"null"``, ``""``)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return True
    return isinstance(value, str) and value in ("", "None", "null")


def _column(frame: pd.DataFrame, *names: str) -> pd.Series:
    """Per row, the first of ``names`` that has a value there (object dtype; ``None`` where none
    has one). Works on pandas' string columns too, whose missing value is NaN, not ``None``."""
    out = [None] * len(frame)
    for name in reversed(names):  # earlier names win: fill from the last to the first
        if name in frame.columns:
            values = frame[name].astype(object).tolist()
            out = [old if _missing(new) else new for new, old in zip(values, out)]
    return pd.Series(out, index=frame.index, dtype=object)


def _data_kind(kinds, synth_kind, data_name) -> str:
    """``singing`` / ``talking`` / ``mixed``: from ``data.kinds`` (a JSON list, ``None`` = all)
    or, for SynthSing, ``data.synth.kind``; other data without a kind filter is ``all``."""
    if not _missing(kinds):
        try:
            parsed = json.loads(kinds) if isinstance(kinds, str) else kinds
        except json.JSONDecodeError:
            parsed = [kinds]
        parsed = [parsed] if isinstance(parsed, str) else list(parsed or [])
        if parsed:
            return "+".join(sorted(map(str, parsed)))
    if not _missing(synth_kind) and (_missing(data_name) or data_name == "synthsing"):
        return str(synth_kind)
    return "all"


def _config_label(row: pd.Series) -> str:
    """A readable name of a run's configuration: the sweep variant, else (a run of the sweep's
    search space, tagged ``variant=search``, or no sweep) the front-end and its MSM settings, and
    a marker when the SFM bottleneck is off. Hyper-parameter searches differ in other keys:
    group those by ``trial``."""
    if isinstance(row["variant"], str) and row["variant"] not in ("", SEARCH_VARIANT):
        return row["variant"]
    label = str(row["frontend"] or row["model"] or row["run_name"] or row["run_id"])
    if pd.notna(row["levels"]):
        label += f" L{int(row['levels'])}"
        if row["wavelet"]:
            label += f" {row['wavelet']}"
    if row["bottleneck_filter"] == "none":
        label += " no-SFM"
    return label


def add_id_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` (a ``mlflow.search_runs`` result) with the :data:`ID_COLUMNS` in front."""
    frame = frame.copy()
    ids = pd.DataFrame(index=frame.index)
    ids["run_id"] = frame["run_id"]
    ids["run_name"] = _column(frame, "tags.mlflow.runName")
    ids["status"] = _column(frame, "status")
    ids["experiment_id"] = _column(frame, "experiment_id")
    ids["sweep"] = _column(frame, "tags.sweep")
    ids["trial"] = pd.to_numeric(_column(frame, "tags.trial"), errors="coerce").astype("Int64")
    ids["seed"] = pd.to_numeric(_column(frame, "tags.seed", "params.seed"), errors="coerce").astype(
        "Int64"
    )
    ids["variant"] = _column(frame, "tags.variant").fillna("")
    ids["model"] = _column(frame, "tags.model", "params.model.name")
    ids["frontend"] = _column(frame, "tags.frontend", "params.frontend.name")
    ids["backbone"] = _column(frame, "tags.backbone", "params.backbone.name")
    ids["bottleneck_filter"] = _column(
        frame, "tags.bottleneck_filter", "params.backbone.bottleneck_filter"
    )
    ids["levels"] = pd.to_numeric(_column(frame, "params.frontend.levels"), errors="coerce")
    ids["wavelet"] = _column(frame, "params.frontend.wavelet")
    kinds, synth, name = (
        _column(frame, c)
        for c in ("params.data.kinds", "params.data.synth.kind", "params.data.name")
    )
    ids["data_kind"] = [_data_kind(k, s, n) for k, s, n in zip(kinds, synth, name)]
    ids["config"] = ids.apply(_config_label, axis=1)
    rest = frame.drop(columns=[c for c in ID_COLUMNS if c in frame.columns])
    return pd.concat([ids[list(ID_COLUMNS)], rest], axis=1)


# -- metrics ----------------------------------------------------------------------------------
def metric_names(runs: pd.DataFrame, prefix: str = "") -> list[str]:
    """Model metric names in ``runs`` (without ``metrics.``), CI companions and sweep-parent
    metrics left out, only those with at least one finite value; sorted."""
    names = []
    for column in runs.columns:
        if not column.startswith("metrics."):
            continue
        name = column[len("metrics.") :]
        if (
            name.endswith(CI_SUFFIXES)
            or name.startswith(PARENT_METRIC_PREFIXES)
            or not name.startswith(prefix)
        ):
            continue
        if pd.to_numeric(runs[column], errors="coerce").notna().any():
            names.append(name)
    return sorted(names)


def pick_metrics(
    runs: pd.DataFrame, fallback: Sequence[str] = ("final/val_mse", "val/mse", "val/loss")
) -> list[str]:
    """The evaluator's ``eval/*`` metrics when any run has them, else the first of ``fallback``
    present (training-time validation error)."""
    evaluated = metric_names(runs, "eval/")
    if evaluated:
        return evaluated
    present = set(metric_names(runs))
    for name in fallback:
        if name in present:
            return [name]
    raise AnalysisError(
        f"runs have no eval/* metric and none of {list(fallback)}; metrics present: {sorted(present)}"
    )


def headline_metrics(
    runs: pd.DataFrame, validation: Sequence[str] = ("final/val_mse", "final/val_loss")
) -> list[str]:
    """What a comparison shows by default: the evaluator's ``eval/*`` metrics plus the final
    validation error(s) present; every model metric when a run has none of those."""
    present = metric_names(runs)
    chosen = [m for m in present if m.startswith("eval/")] + [m for m in validation if m in present]
    return chosen or present


def metrics_long(
    runs: pd.DataFrame, metrics: Sequence[str] | None = None, id_columns: Sequence[str] = ID_COLUMNS
) -> pd.DataFrame:
    """One row per (run, metric): the id columns, ``metric``, ``value`` and, where the run logged
    them, its own ``run_ci_lo`` / ``run_ci_hi`` (the evaluator's CI over clips). Runs without a
    value for a metric have no row for it."""
    metrics = list(metrics) if metrics is not None else metric_names(runs)
    require_columns(runs, [f"metrics.{m}" for m in metrics], "the runs frame")
    keep = [c for c in id_columns if c in runs.columns]
    parts = []
    for metric in metrics:
        part = runs[keep].copy()
        part["metric"] = metric
        part["value"] = pd.to_numeric(runs[f"metrics.{metric}"], errors="coerce")
        for suffix in CI_SUFFIXES:
            column = f"metrics.{metric}{suffix}"
            part[f"run{suffix}"] = (
                pd.to_numeric(runs[column], errors="coerce") if column in runs else math.nan
            )
        parts.append(part[part["value"].notna()])
    columns = [*keep, "metric", "value", "run_ci_lo", "run_ci_hi"]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


# -- table artifacts --------------------------------------------------------------------------
def table_from_json(data) -> pd.DataFrame:
    """An MLflow table artifact as a frame. ``mlflow.log_table`` writes
    ``{"columns": [...], "data": [[...], ...]}``; a list of records or a dict of columns is
    accepted too."""
    if isinstance(data, dict) and "columns" in data and "data" in data:
        return pd.DataFrame(data["data"], columns=data["columns"])
    if isinstance(data, list):
        return pd.DataFrame.from_records(data)
    if isinstance(data, dict):
        return pd.DataFrame(data)
    raise AnalysisError(f"not a table artifact: a {type(data).__name__}")


def read_table_artifact(run_id: str, artifact: str, uri: str | None = None) -> pd.DataFrame | None:
    """The table ``artifact`` of one run, or ``None`` when the run does not have it."""
    client = _client(uri)
    parent = str(Path(artifact).parent) if "/" in artifact else ""
    try:
        listed = {a.path for a in client.list_artifacts(run_id, parent or None)}
    except Exception:  # noqa: BLE001 - an unreachable artifact store reads as "not there"
        return None
    if artifact not in listed:
        return None
    with tempfile.TemporaryDirectory() as tmp, _quiet_downloads():
        local = client.download_artifacts(run_id, artifact, tmp)
        return table_from_json(json.loads(Path(local).read_text()))


@contextlib.contextmanager
def _quiet_downloads():
    """No MLflow download progress bar per table (a notebook reads one per run)."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def load_table(
    runs: pd.DataFrame,
    artifact: str,
    *,
    columns: Sequence[str] = (),
    uri: str | None = None,
    id_columns: Sequence[str] = ID_COLUMNS,
) -> pd.DataFrame:
    """The rows of table ``artifact`` of every run in ``runs`` that has it, each row joined with
    its run's id columns. An id column whose name the table already uses (the probe table's
    ``frontend``) comes in as ``run_<name>``.

    ``columns`` are required in every table read. Runs without the artifact are listed in
    ``frame.attrs["missing_runs"]``; when none has it the frame is empty (with the id and
    required columns), so callers can say so instead of failing.
    """
    require_columns(runs, ["run_id"], "the runs frame")
    keep = [c for c in id_columns if c in runs.columns]
    parts, missing = [], []
    for _, run in runs.iterrows():
        table = read_table_artifact(run["run_id"], artifact, uri)
        if table is None:
            missing.append(run["run_id"])
            continue
        require_columns(table, columns, f"{artifact} of run {run['run_id']}")
        for column in keep:
            table[f"run_{column}" if column in table.columns else column] = run[column]
        parts.append(table)
    if parts:
        frame = pd.concat(parts, ignore_index=True)
    else:
        frame = pd.DataFrame(columns=[*keep, *columns])
    frame.attrs["artifact"] = artifact
    frame.attrs["missing_runs"] = missing
    frame.attrs["runs"] = len(runs)
    return frame


def load_band_tables(runs: pd.DataFrame, uri: str | None = None) -> pd.DataFrame:
    """:data:`BAND_TABLE` of every run (see :func:`load_table`)."""
    return load_table(runs, BAND_TABLE, columns=BAND_COLUMNS, uri=uri)


def load_probe_tables(runs: pd.DataFrame, uri: str | None = None) -> pd.DataFrame:
    """:data:`PROBE_TABLE` of every run; the run's own front-end tag is ``run_frontend``.

    Adds ``series``, the name to compare probes by: the evaluator names the run's trained
    front-end ``<name>@step<N>``, which differs between runs of different lengths, so those rows
    become ``<name> (trained)``; front-ends probed at their init (``<name>@init``) keep their name.
    """
    table = load_table(runs, PROBE_TABLE, columns=PROBE_COLUMNS, uri=uri)
    table["series"] = (
        [probe_series(f) for f in table["frontend"]] if not table.empty else pd.Series(dtype=object)
    )
    return table


def probe_series(frontend: str) -> str:
    """``"msm@step50"`` → ``"msm (trained)"``; any other name (``"mel@init"``) unchanged."""
    name, _, where = str(frontend).partition("@")
    return f"{name} (trained)" if where.startswith("step") else str(frontend)


def missing_note(table: pd.DataFrame) -> str:
    """One line saying how many runs lacked the table (empty when all had it)."""
    missing = table.attrs.get("missing_runs") or []
    if not missing:
        return ""
    artifact = table.attrs.get("artifact", "the table")
    total = table.attrs.get("runs", len(missing))
    return (
        f"{len(missing)} of {total} runs have no {artifact}; evaluate them with "
        "python -m singer.evaluate --bands --probes RUN_DIR"
    )
