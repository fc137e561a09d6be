"""The domain rules of a sweep file: what its schema dataclasses (``singer.sweeps.spec``) do not
say by type.

:func:`resolve` takes a file the schema has parsed and checks what involves values or several
keys: override strings (no ``hydra.*`` keys, no keys the sweep sets itself, no resolvers), the
search space (ranges, steps, duplicate choices, the grid's size), metric names, the pruner
against the objectives, seeds, the launcher, the evaluation protocol and the final comparison.
:func:`check_composes` then composes the overrides the sweep can produce. Every rule raises
:class:`singer.schema.SchemaError` with the key, the problem and what is allowed; the caller
adds the file's path.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from singer import schema
from singer.cli import UserError
from singer import config
from singer.config import ConfigError, check_value
from singer.launch import LaunchError, ProfileError, load_profile, parse_launcher
from singer.registry import METRICS, UnknownNameError
from singer.schema import SchemaError, shown
from singer.sweeps.overrides import hydra_value, merge_overrides, override_key, stored_choices

# Bounds on what validation reads and builds (a real sweep file is a few kB).
MAX_CHOICES = 1_000  # values of one choice param
MAX_VARIANTS = 200
MAX_PARAMS = 50  # params of the space
MAX_OVERRIDES = 200  # in one override list
MAX_GRID_POINTS = 10_000  # configurations of a grid sweep (variants included)
MAX_GROUP_CHOICES = 50  # a config group has a handful of options: each one is composed
MAX_SEED = 2**31 - 1  # as singer.config.SEED_MAX

# What a trial job can return: the trainer's result (singer.trainer.TrainResult) plus any
# ``eval/...`` metric logged into the trial's MLflow run.
OBJECTIVE_METRICS = (
    "val/loss",
    "val/mse",
    "train/loss",
    "final/train_loss",
    "final/val_loss",
    "final/val_mse",
    "final/first_loss",
)
EVAL_PREFIX = "eval/"
# What the trainer hands its reporter at every validation: the values pruning can look at.
REPORTED_METRICS = ("val/loss", "val/mse", "train/loss")
# Keys the sweep sets itself for every job; a sweep file may not set them.
RESERVED_KEYS = ("seed", "out_dir", "trainer.resume", "tracking")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
KEY_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
VARIANT_NAME = schema.Rule(pattern=NAME_PATTERN, what="a name of letters, digits, '_' and '-'")
LAUNCHERS = "debug | local | slurm:<profile>"

# ``${a.b}`` reads another config key; any other ``${...}`` (``${oc.env:X}``, ``${now:}``)
# calls a resolver.
_INTERPOLATION = re.compile(r"\$\{")
_PLAIN_INTERPOLATION = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_.]*\}")


# -- values -----------------------------------------------------------------------------------
def _strings(value: Any):
    if isinstance(value, str):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)


def plain_value(key: str, value: Any) -> None:
    """No resolver calls: ``${oc.env:X}`` would read the environment (and log it)."""
    for text in _strings(value):
        if len(_INTERPOLATION.findall(text)) != len(_PLAIN_INTERPOLATION.findall(text)):
            raise SchemaError(
                key,
                f"{shown(text)} calls a resolver",
                "plain values, or ${a.b} to refer to another config key",
            )


def not_reserved(key: str, config_key: str) -> None:
    """A config key the sweep file may set: not Hydra's own section, not one the sweep sets."""
    if config_key == "hydra" or config_key.startswith(("hydra.", "hydra/")):
        raise SchemaError(
            key,
            f"sets '{config_key}', in Hydra's own section",
            "keys of singer/conf only (the sweep decides where and how jobs run)",
        )
    for reserved in RESERVED_KEYS:
        if config_key == reserved or config_key.startswith(reserved + "."):
            raise SchemaError(
                key,
                f"sets '{config_key}', which the sweep sets for every job",
                "seeds go in 'seeds', the MLflow experiment in 'mlflow', output dirs are per trial",
            )


def check_overrides(key: str, items: Sequence[str] | None) -> tuple[str, ...]:
    """Override strings ``key=value`` of keys a sweep may set, without resolver calls."""
    out = []
    for i, item in enumerate(items or ()):
        if "=" not in item or not override_key(item):
            raise SchemaError(
                f"{key}[{i}]", f"got {shown(item)}", "a Hydra override string 'key=value'"
            )
        not_reserved(f"{key}[{i}]", override_key(item))
        plain_value(f"{key}[{i}]", item.split("=", 1)[1])
        out.append(item.strip())
    return tuple(out)


def check_metric(key: str, value: Any, allowed: Sequence[str], eval_prefix: bool) -> str:
    """One of ``allowed`` (or, with ``eval_prefix``, any ``eval/...`` metric)."""
    allowed_text = ", ".join(allowed) + (
        f", or any '{EVAL_PREFIX}...' metric" if eval_prefix else ""
    )
    if not isinstance(value, str):
        raise SchemaError(key, f"got {value!r}", allowed_text)
    if value in allowed or (
        eval_prefix and value.startswith(EVAL_PREFIX) and len(value) > len(EVAL_PREFIX)
    ):
        return value
    raise SchemaError(key, f"unknown metric {value!r}", allowed_text)


# -- the search space -------------------------------------------------------------------------
def check_param(key: str, written: Any) -> dict:
    """One parsed param of ``space`` → the fields of a ``Param``."""
    where = f"space.{key}"
    if not KEY_PATTERN.match(key):
        raise SchemaError(
            where, "is not a config key", "a dotted Hydra config key such as frontend.levels"
        )
    not_reserved(where, key)
    kind = written.type
    if kind == "choice":
        values = written.values
        plain_value(f"{where}.values", values)
        stored = stored_choices(values)
        if len({json.dumps(v) for v in stored}) != len(stored):
            raise SchemaError(
                f"{where}.values", f"has duplicates: {shown(values)}", "distinct values"
            )
        for v in values:
            hydra_value(v)  # unrepresentable values fail early
        return {"key": key, "type": kind, "values": tuple(values)}
    low, high = written.low, written.high
    if low >= high:
        raise SchemaError(where, f"low={low} >= high={high}", "low < high")
    if kind == "int":
        step = written.step
        if (high - low) % step:
            raise SchemaError(
                f"{where}.step",
                f"step={step} does not divide high - low = {high - low}",
                "a step that reaches high from low",
            )
        return {"key": key, "type": kind, "low": low, "high": high, "step": step}
    if kind == "logfloat" and low <= 0:
        raise SchemaError(f"{where}.low", f"low={low} for a log scale", "low > 0")
    return {"key": key, "type": kind, "low": float(low), "high": float(high)}


def check_grid(space: Sequence[dict], variants: Mapping) -> None:
    """A grid sweep: choice and int params only, and a grid of bounded size."""
    for p in space:
        if p["type"] not in ("choice", "int"):
            raise SchemaError(
                f"space.{p['key']}.type",
                f"{p['type']} params have no grid",
                "choice or int with the grid sampler (or use sampler: tpe | random)",
            )
    sizes = [
        len(p["values"]) if p["type"] == "choice" else (p["high"] - p["low"]) // p["step"] + 1
        for p in space
    ]
    points = math.prod(sizes) if space else 0
    if points + len(variants) > MAX_GRID_POINTS:
        raise SchemaError(
            "space",
            f"the grid has {points + len(variants)} configurations "
            f"({' × '.join(str(s) for s in sizes)} + {len(variants)} variants)",
            f"at most {MAX_GRID_POINTS}: a coarser grid, or sampler: tpe | random with limits.trials",
        )


# -- the study --------------------------------------------------------------------------------
def check_pruner(written: Any, raw: Any, objectives: Sequence[tuple[str, str]]) -> dict:
    """The pruner as a dict of the keys the file gives (in its order), its metric filled in."""
    order = list(raw) if isinstance(raw, Mapping) else ["type"]
    pruner = {k: getattr(written, k) for k in order if getattr(written, k) is not None}
    if pruner["type"] == "none":
        return pruner
    pruner["metric"] = check_metric(
        "pruner.metric", pruner.get("metric", "val/loss"), REPORTED_METRICS, eval_prefix=False
    )
    if pruner.get("max_resource", "auto") != "auto":
        pruner["max_resource"] = schema.check(
            "pruner.max_resource", pruner["max_resource"], int, schema.Rule(ge=1)
        )
    if len(objectives) > 1:
        raise SchemaError("pruner.type", "Optuna cannot prune multi-objective studies", "none")
    metric, direction = objectives[0]
    if direction != "minimize":
        raise SchemaError(
            "pruner",
            f"prunes on {pruner['metric']} (a loss, lower is better) while the "
            f"objective {metric} is maximized",
            "pruner: none, or a minimized objective",
        )
    return pruner


def check_seeds(seeds: Sequence[int]) -> tuple[int, ...]:
    for i, seed in enumerate(seeds):
        if seed > MAX_SEED:
            raise SchemaError(f"seeds[{i}]", f"got {seed}", f"an integer from 0 to {MAX_SEED}")
    if len(set(seeds)) != len(seeds):
        raise SchemaError("seeds", f"has duplicates: {shown(list(seeds))}", "distinct integers")
    return tuple(seeds)


def check_launcher(key: str, launcher: Any, timeout_min: int) -> str:
    """A launcher spec (and, for SLURM, that its profile exists and allows the timeout)."""
    try:
        kind, profile = parse_launcher(launcher)
        if kind == "slurm":
            prof = load_profile(profile)
            if timeout_min > prof.time_min:
                raise SchemaError(
                    "timeout_min",
                    f"{timeout_min} exceeds time_min={prof.time_min} of SLURM "
                    f"profile {profile!r} ({prof.path})",
                    f"at most {prof.time_min}",
                )
    except (LaunchError, ProfileError) as err:
        raise SchemaError(key, str(err), LAUNCHERS) from None
    return launcher.strip()


# -- evaluation and comparison ----------------------------------------------------------------
def check_evaluate(written: Any) -> dict | None:
    """The optional ``evaluate`` section: each trial's checkpoint is evaluated after training
    (``singer.evaluation``), and its ``eval/...`` metrics may be objectives."""
    if written is None:
        return None
    # lazy: start-up: singer.evaluation loads torch and the models, which a sweep file that
    # evaluates nothing never needs
    from singer.evaluation import ProtocolError, load_protocol

    overrides = [f"{k}={json.dumps(v)}" for k, v in (written.protocol or {}).items()]
    try:
        protocol = load_protocol(overrides=overrides)
        protocol.validate()
    except ProtocolError as err:
        raise SchemaError("evaluate.protocol", str(err)) from None
    for i, metric in enumerate(protocol.metrics):
        try:
            METRICS.check(metric)
        except UnknownNameError as err:
            raise SchemaError(f"evaluate.protocol.metrics[{i}]", str(err)) from None
    return {
        "protocol": overrides,
        "split": written.split,
        "bands": written.bands,
        "probes": written.probes,
    }


def check_compare(
    written: Any, space_keys: Sequence[str], variants: Mapping, evaluate: dict | None
) -> dict | None:
    """The optional ``compare`` section: the verdict, plots and videos a sweep ends with
    (``singer.sweeps.report``)."""
    if written is None:
        return None
    if evaluate is None:
        raise SchemaError("compare", "needs an 'evaluate' section (it compares evaluations)")
    if written.reference not in variants:
        raise SchemaError(
            "compare.reference",
            f"{written.reference!r} is not a variant",
            ", ".join(variants) or "(none)",
        )
    for i, name in enumerate(written.metrics):
        if name.startswith(EVAL_PREFIX):
            raise SchemaError(
                f"compare.metrics[{i}]",
                f"write {name[len(EVAL_PREFIX) :]!r}",
                "keys of metrics.json",
            )
    plot = None
    if written.plot is not None:
        plot = {"x": written.plot.x}
        if written.plot.hue is not None:
            plot["hue"] = written.plot.hue
        for axis, value in plot.items():
            if value not in space_keys:
                raise SchemaError(
                    f"compare.plot.{axis}", f"{value!r} is not in the space", ", ".join(space_keys)
                )
    return {
        "reference": written.reference,
        "metrics": list(written.metrics),
        "plot": plot,
        "bands": written.bands,
    }


# -- the whole file ---------------------------------------------------------------------------
def resolve(written: Any, raw: Mapping) -> dict:
    """A parsed sweep file (``spec.SweepFile``) → the fields of its ``SweepSpec`` (path and raw
    data aside), once every domain rule holds. ``raw`` is the file as loaded."""
    overrides = check_overrides("overrides", written.overrides)
    space = [check_param(str(key), param) for key, param in written.space.items()]
    variants = {}
    for name, items in written.variants.items():
        schema.check(f"variants.{name}", str(name), str, VARIANT_NAME)
        variants[str(name)] = check_overrides(f"variants.{name}", items)
    if not space and not variants:
        raise SchemaError(
            "space",
            "the sweep has neither a search space nor variants",
            "a 'space' mapping of params and/or a 'variants' mapping of override lists",
        )
    sampler = written.sampler
    if sampler.type == "grid":
        check_grid(space, variants)

    objectives = [
        (check_metric(f"objectives[{i}].metric", o.metric, OBJECTIVE_METRICS, True), o.direction)
        for i, o in enumerate(written.objectives)
    ]
    if len({metric for metric, _ in objectives}) != len(objectives):
        raise SchemaError("objectives", "a metric is listed twice", "distinct metrics")
    pruner = check_pruner(written.pruner, raw.get("pruner"), objectives)
    seeds = check_seeds(written.seeds)

    trials = written.limits.trials
    if trials is None and sampler.type != "grid":
        raise SchemaError(
            "limits.trials", f"is required with sampler {sampler.type}", "an integer >= 1"
        )
    launcher = check_launcher("launcher", written.launcher, written.timeout_min)

    evaluate = check_evaluate(written.evaluate)
    needs_eval = [metric for metric, _ in objectives if metric.startswith(EVAL_PREFIX)]
    if needs_eval and evaluate is None:
        raise SchemaError(
            "objectives",
            f"{', '.join(needs_eval)} come from the evaluator, but the sweep has "
            "no 'evaluate' section",
            "add evaluate: {protocol: {...}} or use a training "
            f"metric ({', '.join(OBJECTIVE_METRICS)})",
        )
    compare = check_compare(written.compare, [p["key"] for p in space], variants, evaluate)
    return {
        "name": written.name,
        "description": str(written.description or ""),
        "overrides": overrides,
        "space": space,
        "variants": variants,
        "sampler": sampler.type,
        "sampler_seed": sampler.seed,
        "tpe_startup_trials": getattr(sampler, "startup_trials", None),
        "pruner": pruner,
        "objectives": objectives,
        "seeds": seeds,
        "trials": trials,
        "parallel": written.limits.parallel,
        "launcher": launcher,
        "timeout_min": written.timeout_min,
        "max_requeue": written.max_requeue,
        "experiment": written.mlflow.experiment or written.name,
        "tracking_uri": written.mlflow.tracking_uri,
        "evaluate": evaluate,
        "compare": compare,
    }


# -- what the sweep composes ------------------------------------------------------------------
def _kind(value: Any) -> str:
    """The kind of a config value, for comparing choice values with the config's own."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple, ListConfig)):
        return "list"
    if isinstance(value, (Mapping, DictConfig)):
        return "mapping"
    return type(value).__name__


def check_composes(spec: Any) -> None:
    """Check every override the sweep can produce, composing only a few.

    The base overrides and each variant are composed (variants are capped). Each axis of the
    space is checked value by value, without composing each: a config group (``frontend``)
    composes each of its few values; any other key checks every value's kind against the
    composed config's value there and its range (:func:`singer.config.check_value`), then
    composes a representative set (first, last, one of each kind; a range's two ends). So a
    grid of thousands of values validates in seconds. ``spec`` is the ``SweepSpec``.
    """

    def attempt(key: str, overrides: Sequence[str], what: str):
        try:
            return config.compose(merge_overrides(spec.overrides, overrides))
        except Exception as err:  # Hydra and config errors alike; report them as the sweep's
            text = " ".join((err.what if isinstance(err, UserError) else str(err)).split())
            raise SchemaError(
                key, f"{what} does not compose: {type(err).__name__}: {text[:600]}"
            ) from None

    def value_fits(where: str, key: str, written: Any) -> None:
        try:
            check_value(key, written)
        except ConfigError as err:
            raise SchemaError(where, f"value {shown(written)}: {err.what}", err.todo) from None

    base = attempt("overrides", [], "the base overrides")
    for param in spec.space:
        where = f"space.{param.key}"
        try:
            current = OmegaConf.select(base, param.key, default=None, throw_on_missing=False)
        except Exception:  # an interpolation that resolves only with the param set
            current = None
        if param.type != "choice":
            if _kind(current) not in ("null", "number"):
                raise SchemaError(
                    where,
                    f"a numeric range, but the config holds {_kind(current)} "
                    f"{shown(OmegaConf.to_container(current) if isinstance(current, DictConfig) else current)} there",
                    "a choice param for non-numeric keys",
                )
            for end in (param.low, param.high):
                value_fits(where, param.key, end)
                attempt(
                    where,
                    [param.override(end)],
                    f"value {end!r} (override '{param.override(end)}')",
                )
            continue

        pairs = list(zip(param.values, param.choices()))
        if isinstance(current, DictConfig) or (
            "." not in param.key and all(isinstance(v, str) for v in param.values)
        ):
            # A config group: each value names a config file.
            if len(pairs) > MAX_GROUP_CHOICES:
                raise SchemaError(
                    f"{where}.values",
                    f"has {len(pairs)} values for a config group",
                    f"at most {MAX_GROUP_CHOICES}",
                )
            tests = pairs
        else:
            expected = _kind(current)
            for written, _ in pairs:
                if expected != "null" and _kind(written) != expected:
                    raise SchemaError(
                        where,
                        f"value {shown(written)} is a {_kind(written)}, but the config holds "
                        f"a {expected} there ({shown(current)})",
                        f"{expected} values",
                    )
                value_fits(where, param.key, written)
            chosen, kinds = {0, len(pairs) - 1}, set()
            for i, (written, _) in enumerate(pairs):
                if _kind(written) not in kinds:
                    kinds.add(_kind(written))
                    chosen.add(i)
            tests = [pairs[i] for i in sorted(chosen)]
        for written, stored in tests:
            attempt(
                where,
                [param.override(stored)],
                f"value {shown(written)} (override '{param.override(stored)}')",
            )
    for name, overrides in spec.variants.items():
        attempt(f"variants.{name}", overrides, f"variant {name!r} ({' '.join(overrides)})")
