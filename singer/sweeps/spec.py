"""The sweep file format and its validation.

A sweep file is YAML (format in ``sweeps/README.md``). :func:`load_sweep` checks all of it
before anything is launched: unknown keys at any level, bad ranges, unknown metrics, a bad
launcher, and the overrides the sweep can produce are checked, so an unknown registry name,
a value of the wrong type or range, or a ``_target_`` fails here. Each error names the file,
the key and what is allowed.

Validation is bounded whatever the file holds: the file is read up to :data:`MAX_FILE_BYTES`,
YAML anchors and aliases are refused (so a "billion laughs" file never expands), the number
of choices, variants, overrides and grid points is capped, and each axis of the space is
checked value by value against the composed config (type and range, see
:func:`singer.config.check_value`) while only a few representative values are composed.
A sweep file may not reach Hydra's own section (``hydra.*``), nor use a resolver other than
plain interpolation (``${a.b}``): ``${oc.env:...}`` would copy the environment into MLflow.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from singer.cli import UserError

# Bounds on what validation reads and builds (a real sweep file is a few kB).
MAX_FILE_BYTES = 256 * 1024
MAX_CHOICES = 1_000  # values of one choice param
MAX_VARIANTS = 200
MAX_PARAMS = 50  # params of the space
MAX_OVERRIDES = 200  # in one override list
MAX_GRID_POINTS = 10_000  # configurations of a grid sweep (variants included)
MAX_SEED = 2**31 - 1  # as singer.config.SEED_MAX
MAX_SHOWN = 200  # characters of a value quoted in an error message

TOP_KEYS = (
    "name",
    "description",
    "overrides",
    "space",
    "variants",
    "sampler",
    "pruner",
    "objectives",
    "seeds",
    "limits",
    "launcher",
    "timeout_min",
    "max_requeue",
    "mlflow",
    "evaluate",
    "compare",
)
PARAM_TYPES = {
    "choice": ("type", "values"),
    "int": ("type", "low", "high", "step"),
    "float": ("type", "low", "high"),
    "logfloat": ("type", "low", "high"),
}
SAMPLERS = {
    "grid": ("type", "seed"),
    "tpe": ("type", "seed", "startup_trials"),
    "random": ("type", "seed"),
}
PRUNERS = {
    "none": ("type",),
    "median": ("type", "metric", "warmup_steps", "startup_trials", "interval_steps"),
    "hyperband": ("type", "metric", "min_resource", "max_resource", "reduction_factor"),
}
DIRECTIONS = ("minimize", "maximize")
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
LIMIT_KEYS = ("trials", "parallel")
EVALUATE_KEYS = ("protocol", "split", "bands", "probes")
COMPARE_KEYS = ("reference", "metrics", "plot", "bands")
EVAL_SPLITS = ("val", "train", "all")
MLFLOW_KEYS = ("experiment", "tracking_uri")
# Keys the sweep sets itself for every job; a sweep file may not set them.
RESERVED_KEYS = ("seed", "out_dir", "trainer.resume", "tracking")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
KEY_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
VARIANT_PARAM = "variant"  # the Optuna param that names a variant trial


class SweepSpecError(UserError, ValueError):
    """A sweep file that cannot run; the message names the file, the key and what is allowed."""

    def __init__(
        self, what: str, todo: str = "fix the sweep file (its format is in sweeps/README.md)"
    ):
        super().__init__(what, todo)


def _shown(value: Any) -> str:
    """``repr(value)``, cut to a readable length for an error message."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 5] + " ...'"


# ``${a.b}`` reads another config key; any other ``${...}`` (``${oc.env:X}``, ``${now:}``)
# calls a resolver.
_INTERPOLATION = re.compile(r"\$\{")
_PLAIN_INTERPOLATION = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_.]*\}")


def _resolver_in(text: str) -> bool:
    return len(_INTERPOLATION.findall(text)) != len(_PLAIN_INTERPOLATION.findall(text))


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


# -- Hydra override text ----------------------------------------------------------------------
_PLAIN_STRING = re.compile(r"^[A-Za-z_][A-Za-z0-9_./-]*$")
_HYDRA_WORDS = {"true", "false", "null", "nan", "inf", "-inf", "+inf"}


def hydra_value(value: Any) -> str:
    """A Python value as Hydra override text: ``[16,32,64]``, ``1e-05``, ``db2``, ``'a b'``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        if _PLAIN_STRING.match(value) and value.lower() not in _HYDRA_WORDS:
            return value
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"  # quoted: stays a string
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} ({type(value).__name__}) as a Hydra override value")


def override_key(override: str) -> str:
    """The config key an override string sets: ``+a.b=1`` → ``a.b``, ``frontend=mel`` → ``frontend``."""
    key = override.split("=", 1)[0].strip()
    return key.lstrip("+~")


def merge_overrides(*groups: Iterable[str]) -> list[str]:
    """Concatenate override lists; a later override of the same key replaces an earlier one
    (in the earlier one's place), so a variant's ``frontend=mel`` replaces the base ``frontend=msm``."""
    merged: dict[str, str] = {}  # a dict keeps a key where it was first inserted
    for group in groups:
        for override in group:
            merged[override_key(override)] = override
    return list(merged.values())


# -- the spec ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """One search-space dimension: a Hydra config key (``frontend.levels``, or a group: ``frontend``)."""

    key: str
    type: str  # choice | int | float | logfloat
    values: tuple = ()  # choice: the values as written in the sweep file
    low: float | int | None = None
    high: float | int | None = None
    step: int = 1

    def choices(self) -> list:
        """Choice values as Optuna stores them: lists/dicts become their Hydra text (Optuna
        categoricals hold only str/int/float/bool/None)."""
        return [hydra_value(v) if isinstance(v, (list, tuple, Mapping)) else v for v in self.values]

    def distribution(self):
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.type == "choice":
            return CategoricalDistribution(self.choices())
        if self.type == "int":
            return IntDistribution(int(self.low), int(self.high), step=int(self.step))
        return FloatDistribution(float(self.low), float(self.high), log=self.type == "logfloat")

    def grid_values(self) -> list:
        if self.type == "choice":
            return self.choices()
        if self.type == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step)))
        raise SweepSpecError(f"param {self.key!r} of type {self.type} has no grid")

    def grid_size(self) -> int:
        """``len(grid_values())``, without building the list."""
        if self.type == "choice":
            return len(self.values)
        if self.type == "int":
            return (int(self.high) - int(self.low)) // int(self.step) + 1
        raise SweepSpecError(f"param {self.key!r} of type {self.type} has no grid")

    def override(self, value: Any) -> str:
        """The override for an Optuna param value (choice text maps back to the written value)."""
        if self.type == "choice":
            for stored, written in zip(self.choices(), self.values):
                if stored == value and type(stored) is type(value):
                    return f"{self.key}={hydra_value(written)}"
            raise ValueError(f"{value!r} is not one of the choices of {self.key}: {self.choices()}")
        return f"{self.key}={hydra_value(int(value) if self.type == 'int' else float(value))}"

    def as_dict(self) -> dict:
        data: dict[str, Any] = {"type": self.type}
        if self.type == "choice":
            data["values"] = list(self.values)
        else:
            data.update(low=self.low, high=self.high)
            if self.type == "int":
                data["step"] = self.step
        return data


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str  # minimize | maximize


@dataclass(frozen=True)
class Configuration:
    """What one Optuna trial runs (once per seed)."""

    variant: str  # a name from ``variants``, or "" for a point of the search space
    params: dict  # as Optuna stores them
    overrides: tuple[str, ...]  # this configuration's own overrides (added to the base ones)

    def label(self) -> str:
        if self.variant:
            return (
                f"{self.variant} [{' '.join(self.overrides)}]" if self.overrides else self.variant
            )
        return " ".join(self.overrides) or "(the base overrides)"


@dataclass(frozen=True)
class SweepSpec:
    path: Path
    name: str
    description: str
    overrides: tuple[str, ...]
    space: tuple[Param, ...]
    variants: dict[str, tuple[str, ...]]
    sampler: str
    sampler_seed: int
    tpe_startup_trials: int | None
    pruner: dict  # {"type": ..., plus that pruner's options}; metric filled in
    objectives: tuple[Objective, ...]
    seeds: tuple[int, ...]
    trials: int | None  # number of configurations; None = the whole grid
    parallel: int
    launcher: str
    timeout_min: int
    max_requeue: int
    experiment: str
    tracking_uri: str | None
    evaluate: dict | None = (
        None  # {"protocol": [key=value ...], "split", "bands", "probes"}; None: no evaluation
    )
    # {"reference": variant, "metrics": [eval keys], "plot": {"x", "hue"} | None, "bands": bool}
    compare: dict | None = None
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    # -- derived ------------------------------------------------------------------------------
    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    def variant_configurations(self) -> list[Configuration]:
        return [
            Configuration(name, {VARIANT_PARAM: name}, tuple(ovr))
            for name, ovr in self.variants.items()
        ]

    def grid_configurations(self) -> list[Configuration]:
        """Variants first (references early make comparisons and pruning meaningful sooner),
        then the cartesian product of the search space in file order."""
        configs = self.variant_configurations()
        if self.space:
            for combo in itertools.product(*(p.grid_values() for p in self.space)):
                params = {p.key: v for p, v in zip(self.space, combo)}
                configs.append(
                    Configuration(
                        "", params, tuple(p.override(v) for p, v in zip(self.space, combo))
                    )
                )
        return configs

    def target_trials(self, max_trials: int | None = None) -> int:
        """How many configurations (Optuna trials) the sweep runs in total."""
        if self.sampler == "grid":
            total = len(self.grid_configurations())
            if self.trials is not None:
                total = min(total, self.trials)
        else:
            total = int(self.trials)
        return total if max_trials is None else min(total, max_trials)

    def planned_configurations(self, max_trials: int | None = None) -> list[Configuration]:
        """Configurations fixed before sampling: the grid (up to the trial limit), or the variants."""
        target = self.target_trials(max_trials)
        if self.sampler == "grid":
            return self.grid_configurations()[:target]
        return self.variant_configurations()[:target]

    def configuration_for(self, params: Mapping[str, Any]) -> Configuration:
        """Rebuild a trial's configuration from its Optuna params."""
        if VARIANT_PARAM in params and self.variants and params[VARIANT_PARAM] in self.variants:
            name = params[VARIANT_PARAM]
            return Configuration(name, dict(params), tuple(self.variants[name]))
        overrides = tuple(p.override(params[p.key]) for p in self.space if p.key in params)
        return Configuration(
            "", {p.key: params[p.key] for p in self.space if p.key in params}, overrides
        )

    def identity(self) -> dict:
        """What may not change when a sweep is resumed (trials already run depend on it)."""
        return {
            "name": self.name,
            "overrides": list(self.overrides),
            "space": {p.key: p.as_dict() for p in self.space},
            "variants": {k: list(v) for k, v in self.variants.items()},
            "sampler": self.sampler,
            "objectives": [[o.metric, o.direction] for o in self.objectives],
            "seeds": list(self.seeds),
            "experiment": self.experiment,
            "evaluate": self.evaluate,
        }

    def summary_params(self) -> dict[str, str]:
        """Flat description of the sweep, logged as params of the parent MLflow run."""
        return {
            "sweep.name": self.name,
            "sweep.sampler": self.sampler,
            "sweep.sampler_seed": str(self.sampler_seed),
            "sweep.pruner": json.dumps(self.pruner),
            "sweep.objectives": ", ".join(f"{o.direction} {o.metric}" for o in self.objectives),
            "sweep.seeds": json.dumps(list(self.seeds)),
            "sweep.trials": str(self.trials),
            "sweep.parallel": str(self.parallel),
            "sweep.launcher": self.launcher,
            "sweep.timeout_min": str(self.timeout_min),
            "sweep.max_requeue": str(self.max_requeue),
            "sweep.overrides": json.dumps(list(self.overrides)),
            "sweep.space": json.dumps({p.key: p.as_dict() for p in self.space}),
            "sweep.variants": json.dumps({k: list(v) for k, v in self.variants.items()}),
            "sweep.evaluate": json.dumps(self.evaluate),
            "sweep.compare": json.dumps(self.compare),
        }


# -- loading and validation -------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, where ``1e-3`` (no dot) is a string; sweep files are full of
    learning rates written that way, so read them as floats (as YAML 1.2 does).

    Anchors and aliases are refused as soon as the parser meets one: an alias shares a node,
    and a few hundred bytes of nested aliases ("billion laughs") expand to gigabytes wherever
    the data is walked, printed or composed.
    """

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise _AnchorRefused(
                f"line {event.start_mark.line + 1}: YAML anchors and aliases "
                f"(&{event.anchor} / *{event.anchor}) are not allowed in a sweep file"
            )
        return super().compose_node(parent, index)


class _AnchorRefused(yaml.YAMLError):
    pass


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


class _Checker:
    """Builds errors that name the file and the key."""

    def __init__(self, path: Path):
        self.path = path

    def error(self, key: str, problem: str, allowed: str | None = None) -> SweepSpecError:
        if len(problem) > 4 * MAX_SHOWN:
            problem = problem[: 4 * MAX_SHOWN] + " ..."
        text = f"{self.path}: key '{key}': {problem}"
        if allowed:
            text += f"; allowed: {allowed}"
        return SweepSpecError(text)

    def mapping(
        self, key: str, value: Any, allowed_keys: Sequence[str], required: Sequence[str] = ()
    ) -> dict:
        if not isinstance(value, Mapping):
            raise self.error(
                key,
                f"must be a mapping, got {type(value).__name__} {_shown(value)}",
                f"a mapping with keys {', '.join(allowed_keys[:20])}",
            )
        known = set(allowed_keys)  # a set: a mapping may have thousands of keys
        for k in value:
            if k not in known:
                raise self.error(
                    f"{key}.{k}" if key else str(k), "unknown key", ", ".join(allowed_keys)
                )
        for k in required:
            if k not in value:
                raise self.error(f"{key}.{k}" if key else k, "is required", ", ".join(allowed_keys))
        return dict(value)

    def integer(self, key: str, value: Any, low: int | None = None) -> int:
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or (low is not None and value < low)
        ):
            raise self.error(
                key,
                f"got {_shown(value)}",
                f"an integer >= {low}" if low is not None else "an integer",
            )
        return value

    def number(self, key: str, value: Any) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise self.error(key, f"got {_shown(value)}", "a finite number")
        return value

    def string(
        self, key: str, value: Any, pattern: re.Pattern | None = None, what: str = "a string"
    ) -> str:
        if (
            not isinstance(value, str)
            or not value.strip()
            or (pattern is not None and not pattern.match(value))
        ):
            raise self.error(key, f"got {_shown(value)}", what)
        return value.strip()

    def overrides(self, key: str, value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.error(
                key,
                f"must be a list of Hydra override strings, got {_shown(value)}",
                "a list such as [trainer=cpu_tiny, frontend.levels=2]",
            )
        if len(value) > MAX_OVERRIDES:
            raise self.error(key, f"has {len(value)} overrides", f"at most {MAX_OVERRIDES}")
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, str) or "=" not in item or not override_key(item):
                raise self.error(
                    f"{key}[{i}]", f"got {_shown(item)}", "a Hydra override string 'key=value'"
                )
            self.not_reserved(f"{key}[{i}]", override_key(item))
            self.plain_value(f"{key}[{i}]", item.split("=", 1)[1])
            out.append(item.strip())
        return tuple(out)

    def plain_value(self, key: str, value: Any) -> None:
        """No resolver calls: ``${oc.env:X}`` would read the environment (and log it)."""
        for text in _strings(value):
            if _resolver_in(text):
                raise self.error(
                    key,
                    f"{_shown(text)} calls a resolver",
                    "plain values, or ${a.b} to refer to another config key",
                )

    def not_reserved(self, key: str, config_key: str) -> None:
        if config_key == "hydra" or config_key.startswith(("hydra.", "hydra/")):
            raise self.error(
                key,
                f"sets '{config_key}', in Hydra's own section",
                "keys of singer/conf only (the sweep decides where and how jobs run)",
            )
        for reserved in RESERVED_KEYS:
            if config_key == reserved or config_key.startswith(reserved + "."):
                raise self.error(
                    key,
                    f"sets '{config_key}', which the sweep sets for every job",
                    "seeds go in 'seeds', the MLflow experiment in 'mlflow', output dirs are per trial",
                )


def _param(check: _Checker, key: str, value: Any) -> Param:
    where = f"space.{key}"
    if not KEY_PATTERN.match(str(key)):
        raise check.error(
            where, "is not a config key", "a dotted Hydra config key such as frontend.levels"
        )
    check.not_reserved(where, str(key))
    if not isinstance(value, Mapping) or "type" not in value:
        raise check.error(
            where,
            f"must be a mapping with a 'type', got {_shown(value)}",
            "type: " + " | ".join(PARAM_TYPES),
        )
    kind = value["type"]
    if kind not in PARAM_TYPES:
        raise check.error(f"{where}.type", f"unknown type {_shown(kind)}", " | ".join(PARAM_TYPES))
    required = ("type", "values") if kind == "choice" else ("type", "low", "high")
    check.mapping(where, value, PARAM_TYPES[kind], required=required)
    if kind == "choice":
        values = value["values"]
        if not isinstance(values, list) or not values:
            raise check.error(f"{where}.values", f"got {_shown(values)}", "a non-empty list")
        if len(values) > MAX_CHOICES:
            raise check.error(
                f"{where}.values", f"has {len(values)} values", f"at most {MAX_CHOICES}"
            )
        check.plain_value(f"{where}.values", values)
        stored = Param(key, kind, tuple(values)).choices()
        if len({json.dumps(v) for v in stored}) != len(stored):
            raise check.error(
                f"{where}.values", f"has duplicates: {_shown(values)}", "distinct values"
            )
        for v in values:
            hydra_value(v)  # unrepresentable values fail early
        return Param(key, kind, tuple(values))
    if kind == "int":
        low = check.integer(f"{where}.low", value["low"])
        high = check.integer(f"{where}.high", value["high"])
        step = check.integer(f"{where}.step", value.get("step", 1), low=1)
        if low >= high:
            raise check.error(where, f"low={low} >= high={high}", "low < high")
        if (high - low) % step:
            raise check.error(
                f"{where}.step",
                f"step={step} does not divide high - low = {high - low}",
                "a step that reaches high from low",
            )
        return Param(key, kind, low=low, high=high, step=step)
    low = check.number(f"{where}.low", value["low"])
    high = check.number(f"{where}.high", value["high"])
    if low >= high:
        raise check.error(where, f"low={low} >= high={high}", "low < high")
    if kind == "logfloat" and low <= 0:
        raise check.error(f"{where}.low", f"low={low} for a log scale", "low > 0")
    return Param(key, kind, low=float(low), high=float(high))


def _evaluate(check: _Checker, value: Any) -> dict | None:
    """The optional ``evaluate`` section: each trial's checkpoint is evaluated after training
    (``singer.evaluation``), and its ``eval/...`` metrics may be objectives."""
    if value is None:
        return None
    section = check.mapping("evaluate", value, EVALUATE_KEYS)
    protocol_raw = section.get("protocol") or {}
    protocol = check.mapping("evaluate.protocol", protocol_raw, list(protocol_raw))
    overrides = [f"{k}={json.dumps(v)}" for k, v in protocol.items()]
    from singer.evaluation import ProtocolError, load_protocol

    from singer.registry import METRICS, UnknownNameError

    try:
        protocol_obj = load_protocol(overrides=overrides)
        protocol_obj.validate()
    except ProtocolError as err:
        raise check.error("evaluate.protocol", str(err)) from None
    for i, metric in enumerate(protocol_obj.metrics):
        try:
            METRICS.check(metric)
        except UnknownNameError as err:
            raise check.error(f"evaluate.protocol.metrics[{i}]", str(err)) from None
    split = section.get("split", "val")
    if split not in EVAL_SPLITS:
        raise check.error("evaluate.split", f"got {split!r}", " | ".join(EVAL_SPLITS))
    flags = {}
    for key in ("bands", "probes"):
        flags[key] = section.get(key, False)
        if not isinstance(flags[key], bool):
            raise check.error(f"evaluate.{key}", f"got {flags[key]!r}", "true | false")
    return {"protocol": overrides, "split": split, **flags}


def _compare(check: _Checker, value: Any, spec_space, variants, evaluate) -> dict | None:
    """The optional ``compare`` section: the verdict, plots and videos a sweep ends with
    (``singer.sweeps.report``)."""
    if value is None:
        return None
    section = check.mapping("compare", value, COMPARE_KEYS, required=("reference", "metrics"))
    if evaluate is None:
        raise check.error("compare", "needs an 'evaluate' section (it compares evaluations)")
    reference = check.string("compare.reference", section["reference"])
    if reference not in variants:
        raise check.error(
            "compare.reference", f"{reference!r} is not a variant", ", ".join(variants) or "(none)"
        )
    metrics = section["metrics"]
    if not isinstance(metrics, list) or not metrics:
        raise check.error("compare.metrics", f"got {metrics!r}", "a list of evaluation keys")
    for i, metric in enumerate(metrics):
        name = check.string(f"compare.metrics[{i}]", metric)
        if name.startswith(EVAL_PREFIX):
            raise check.error(
                f"compare.metrics[{i}]",
                f"write {name[len(EVAL_PREFIX) :]!r}",
                "keys of metrics.json",
            )
    plot = section.get("plot")
    if plot is not None:
        plot = check.mapping("compare.plot", plot, ("x", "hue"), required=("x",))
        keys = [p.key for p in spec_space]
        for axis in ("x", "hue"):
            if axis in plot and plot[axis] not in keys:
                raise check.error(
                    f"compare.plot.{axis}", f"{plot[axis]!r} is not in the space", ", ".join(keys)
                )
    bands = section.get("bands", False)
    if not isinstance(bands, bool):
        raise check.error("compare.bands", f"got {bands!r}", "true | false")
    return {
        "reference": reference,
        "metrics": [str(m) for m in metrics],
        "plot": plot,
        "bands": bands,
    }


def _metric(
    check: _Checker, key: str, value: Any, allowed: Sequence[str], eval_prefix: bool
) -> str:
    allowed_text = ", ".join(allowed) + (
        f", or any '{EVAL_PREFIX}...' metric" if eval_prefix else ""
    )
    if not isinstance(value, str):
        raise check.error(key, f"got {value!r}", allowed_text)
    if value in allowed or (
        eval_prefix and value.startswith(EVAL_PREFIX) and len(value) > len(EVAL_PREFIX)
    ):
        return value
    raise check.error(key, f"unknown metric {value!r}", allowed_text)


def check_launcher(path: Path | str, key: str, launcher: Any, timeout_min: int) -> str:
    """Validate a launcher spec (and, for SLURM, that its profile exists and allows the timeout)."""
    from singer.launch import LaunchError, ProfileError, load_profile, parse_launcher

    check = _Checker(Path(path))
    allowed = "debug | local | slurm:<profile>"
    try:
        kind, profile = parse_launcher(launcher)
        if kind == "slurm":
            prof = load_profile(profile)
            if timeout_min > prof.time_min:
                raise check.error(
                    "timeout_min",
                    f"{timeout_min} exceeds time_min={prof.time_min} of SLURM "
                    f"profile {profile!r} ({prof.path})",
                    f"at most {prof.time_min}",
                )
    except (LaunchError, ProfileError) as err:
        raise check.error(key, str(err), allowed) from None
    return launcher.strip()


MAX_GROUP_CHOICES = 50  # a config group has a handful of options: each one is composed


def _kind(value: Any) -> str:
    """The kind of a config value, for comparing choice values with the config's own."""
    from omegaconf import DictConfig, ListConfig

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


def _check_composes(check: _Checker, spec: SweepSpec) -> None:
    """Check every override the sweep can produce, composing only a few.

    The base overrides and each variant are composed (variants are capped). Each axis of the
    space is checked value by value, without composing each: a config group (``frontend``)
    composes each of its few values; any other key checks every value's kind against the
    composed config's value there and its range (:func:`singer.config.check_value`), then
    composes a representative set (first, last, one of each kind; a range's two ends). So a
    grid of thousands of values validates in seconds.
    """
    from omegaconf import DictConfig, OmegaConf

    from singer.config import ConfigError, check_value, compose

    def attempt(key: str, overrides: Sequence[str], what: str):
        try:
            return compose(merge_overrides(spec.overrides, overrides))
        except Exception as err:  # Hydra and config errors alike; report them as the sweep's
            text = " ".join((err.what if isinstance(err, UserError) else str(err)).split())
            raise check.error(
                key, f"{what} does not compose: {type(err).__name__}: {text[:600]}"
            ) from None

    def value_fits(where: str, key: str, written: Any) -> None:
        try:
            check_value(key, written)
        except ConfigError as err:
            raise check.error(where, f"value {_shown(written)}: {err.what}", err.todo) from None

    base = attempt("overrides", [], "the base overrides")
    for param in spec.space:
        where = f"space.{param.key}"
        try:
            current = OmegaConf.select(base, param.key, default=None, throw_on_missing=False)
        except Exception:  # an interpolation that resolves only with the param set
            current = None
        if param.type != "choice":
            if _kind(current) not in ("null", "number"):
                raise check.error(
                    where,
                    f"a numeric range, but the config holds {_kind(current)} "
                    f"{_shown(OmegaConf.to_container(current) if isinstance(current, DictConfig) else current)} there",
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
                raise check.error(
                    f"{where}.values",
                    f"has {len(pairs)} values for a config group",
                    f"at most {MAX_GROUP_CHOICES}",
                )
            tests = pairs
        else:
            expected = _kind(current)
            for written, _ in pairs:
                if expected != "null" and _kind(written) != expected:
                    raise check.error(
                        where,
                        f"value {_shown(written)} is a {_kind(written)}, but the config holds "
                        f"a {expected} there ({_shown(current)})",
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
                f"value {_shown(written)} (override '{param.override(stored)}')",
            )
    for name, overrides in spec.variants.items():
        attempt(f"variants.{name}", overrides, f"variant {name!r} ({' '.join(overrides)})")


def parse_sweep(
    data: Any, path: Path | str = "<sweep>", *, compose_check: bool = True
) -> SweepSpec:
    """Validate the loaded YAML of a sweep file; see :func:`load_sweep`."""
    path = Path(path)
    check = _Checker(path)
    data = check.mapping(
        "", data if data is not None else {}, TOP_KEYS, required=("name", "objectives")
    )

    name = check.string(
        "name", data["name"], NAME_PATTERN, "letters, digits, '_' and '-' (it names a folder)"
    )
    description = str(data.get("description") or "")
    overrides = check.overrides("overrides", data.get("overrides"))

    space_raw = data.get("space") or {}
    check.mapping("space", space_raw, list(space_raw))  # a mapping; any keys
    if len(space_raw) > MAX_PARAMS:
        raise check.error("space", f"has {len(space_raw)} params", f"at most {MAX_PARAMS}")
    space = tuple(_param(check, str(k), v) for k, v in space_raw.items())

    variants_raw = data.get("variants") or {}
    check.mapping("variants", variants_raw, list(variants_raw))
    if len(variants_raw) > MAX_VARIANTS:
        raise check.error(
            "variants", f"has {len(variants_raw)} variants", f"at most {MAX_VARIANTS}"
        )
    variants: dict[str, tuple[str, ...]] = {}
    for vname, vover in variants_raw.items():
        check.string(
            f"variants.{vname}", str(vname), NAME_PATTERN, "a name of letters, digits, '_' and '-'"
        )
        variants[str(vname)] = check.overrides(f"variants.{vname}", vover)
    if not space and not variants:
        raise check.error(
            "space",
            "the sweep has neither a search space nor variants",
            "a 'space' mapping of params and/or a 'variants' mapping of override lists",
        )

    sampler_raw = data.get("sampler", "grid")
    short = not isinstance(
        sampler_raw, Mapping
    )  # `sampler: tpe` is short for `sampler: {type: tpe}`
    sampler_raw = {"type": sampler_raw} if short else sampler_raw
    if sampler_raw.get("type") not in SAMPLERS:
        raise check.error(
            "sampler" if short else "sampler.type",
            f"unknown sampler {sampler_raw.get('type')!r}",
            " | ".join(SAMPLERS),
        )
    sampler = sampler_raw["type"]
    check.mapping("sampler", sampler_raw, SAMPLERS[sampler])
    sampler_seed = check.integer("sampler.seed", sampler_raw.get("seed", 0), low=0)
    startup = sampler_raw.get("startup_trials")
    if startup is not None:
        startup = check.integer("sampler.startup_trials", startup, low=0)
    if sampler == "grid":
        for p in space:
            if p.type not in ("choice", "int"):
                raise check.error(
                    f"space.{p.key}.type",
                    f"{p.type} params have no grid",
                    "choice or int with the grid sampler (or use sampler: tpe | random)",
                )
        points = math.prod(p.grid_size() for p in space) if space else 0
        if points + len(variants) > MAX_GRID_POINTS:
            raise check.error(
                "space",
                f"the grid has {points + len(variants)} configurations "
                f"({' × '.join(str(p.grid_size()) for p in space)} + {len(variants)} variants)",
                f"at most {MAX_GRID_POINTS}: a coarser grid, or sampler: tpe | random "
                "with limits.trials",
            )

    objectives_raw = data["objectives"]
    if not isinstance(objectives_raw, list) or not objectives_raw:
        raise check.error(
            "objectives",
            f"got {objectives_raw!r}",
            "a non-empty list of {metric: ..., direction: minimize | maximize}",
        )
    objectives = []
    for i, item in enumerate(objectives_raw):
        where = f"objectives[{i}]"
        item = check.mapping(where, item, ("metric", "direction"), required=("metric",))
        metric = _metric(
            check, f"{where}.metric", item["metric"], OBJECTIVE_METRICS, eval_prefix=True
        )
        direction = item.get("direction", "minimize")
        if direction not in DIRECTIONS:
            raise check.error(f"{where}.direction", f"got {direction!r}", " | ".join(DIRECTIONS))
        objectives.append(Objective(metric, direction))
    if len({o.metric for o in objectives}) != len(objectives):
        raise check.error("objectives", "a metric is listed twice", "distinct metrics")

    pruner_raw = data.get("pruner", "none")
    short = not isinstance(
        pruner_raw, Mapping
    )  # `pruner: none` is short for `pruner: {type: none}`
    pruner_raw = {"type": pruner_raw} if short else pruner_raw
    if pruner_raw.get("type") not in PRUNERS:
        raise check.error(
            "pruner" if short else "pruner.type",
            f"unknown pruner {pruner_raw.get('type')!r}",
            " | ".join(PRUNERS),
        )
    pruner = check.mapping("pruner", pruner_raw, PRUNERS[pruner_raw["type"]])
    if pruner["type"] != "none":
        pruner["metric"] = _metric(
            check,
            "pruner.metric",
            pruner.get("metric", "val/loss"),
            REPORTED_METRICS,
            eval_prefix=False,
        )
        for k in (
            "warmup_steps",
            "startup_trials",
            "interval_steps",
            "min_resource",
            "reduction_factor",
        ):
            if k in pruner:
                pruner[k] = check.integer(
                    f"pruner.{k}", pruner[k], low=1 if k != "warmup_steps" else 0
                )
        if "max_resource" in pruner and pruner["max_resource"] != "auto":
            pruner["max_resource"] = check.integer(
                "pruner.max_resource", pruner["max_resource"], low=1
            )
        if len(objectives) > 1:
            raise check.error("pruner.type", "Optuna cannot prune multi-objective studies", "none")
        if objectives[0].direction != "minimize":
            raise check.error(
                "pruner",
                f"prunes on {pruner['metric']} (a loss, lower is better) while the "
                f"objective {objectives[0].metric} is maximized",
                "pruner: none, or a minimized objective",
            )

    seeds_raw = data.get("seeds", [0])
    if not isinstance(seeds_raw, list) or not seeds_raw:
        raise check.error("seeds", f"got {seeds_raw!r}", "a non-empty list of integers")
    if len(seeds_raw) > MAX_VARIANTS:
        raise check.error("seeds", f"has {len(seeds_raw)} seeds", f"at most {MAX_VARIANTS}")
    seeds = tuple(check.integer(f"seeds[{i}]", s, low=0) for i, s in enumerate(seeds_raw))
    for i, seed in enumerate(seeds):
        if seed > MAX_SEED:
            raise check.error(f"seeds[{i}]", f"got {seed}", f"an integer from 0 to {MAX_SEED}")
    if len(set(seeds)) != len(seeds):
        raise check.error("seeds", f"has duplicates: {_shown(seeds_raw)}", "distinct integers")

    limits = check.mapping("limits", data.get("limits") or {}, LIMIT_KEYS)
    trials = limits.get("trials")
    if trials is not None:
        trials = check.integer("limits.trials", trials, low=1)
    elif sampler != "grid":
        raise check.error("limits.trials", f"is required with sampler {sampler}", "an integer >= 1")
    parallel = check.integer("limits.parallel", limits.get("parallel", 1), low=1)

    timeout_min = check.integer("timeout_min", data.get("timeout_min", 60), low=1)
    max_requeue = check.integer("max_requeue", data.get("max_requeue", 3), low=0)
    launcher = check_launcher(path, "launcher", data.get("launcher", "local"), timeout_min)

    mlflow = check.mapping("mlflow", data.get("mlflow") or {}, MLFLOW_KEYS)
    experiment = check.string("mlflow.experiment", mlflow.get("experiment", name))
    tracking_uri = mlflow.get("tracking_uri")
    if tracking_uri is not None:
        tracking_uri = check.string("mlflow.tracking_uri", tracking_uri)

    evaluate = _evaluate(check, data.get("evaluate"))
    needs_eval = [o.metric for o in objectives if o.metric.startswith(EVAL_PREFIX)]
    if needs_eval and evaluate is None:
        raise check.error(
            "objectives",
            f"{', '.join(needs_eval)} come from the evaluator, but the sweep has "
            "no 'evaluate' section",
            "add evaluate: {protocol: {...}} or use a training "
            f"metric ({', '.join(OBJECTIVE_METRICS)})",
        )

    compare = _compare(check, data.get("compare"), space, variants, evaluate)

    spec = SweepSpec(
        path=path,
        name=name,
        description=description,
        overrides=overrides,
        space=space,
        variants=variants,
        sampler=sampler,
        sampler_seed=sampler_seed,
        tpe_startup_trials=startup,
        pruner=pruner,
        objectives=tuple(objectives),
        seeds=seeds,
        trials=trials,
        parallel=parallel,
        launcher=launcher,
        timeout_min=timeout_min,
        max_requeue=max_requeue,
        experiment=experiment,
        tracking_uri=tracking_uri,
        evaluate=evaluate,
        compare=compare,
        raw=dict(data),
    )
    if compose_check:
        _check_composes(check, spec)
    return spec


def load_sweep(path: str | Path, *, compose_check: bool = True) -> SweepSpec:
    """Read and validate a sweep file; raises :class:`SweepSpecError` naming the file and key."""
    path = Path(path)
    if not path.is_file():
        raise SweepSpecError(f"{path}: no such sweep file", "check the path")
    with open(path, "rb") as handle:
        raw = handle.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise SweepSpecError(
            f"{path}: larger than {MAX_FILE_BYTES // 1024} KiB",
            "a sweep file describes a space, it does not list it: use int ranges, "
            "fewer choices, or sampler: tpe | random",
        )
    try:
        if b"\0" in raw:
            raise UnicodeDecodeError("utf-8", raw, raw.index(b"\0"), raw.index(b"\0") + 1, "NUL")
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SweepSpecError(
            f"{path}: not a text file (byte {err.start} is not UTF-8 text)",
            "give a YAML sweep file (its format is in sweeps/README.md)",
        ) from None
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise SweepSpecError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    except RecursionError:
        raise SweepSpecError(f"{path}: nested too deeply") from None
    return parse_sweep(data, path, compose_check=compose_check)
