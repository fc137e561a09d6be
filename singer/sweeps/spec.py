"""The sweep file format and its validation.

A sweep file is YAML (format in ``sweeps/README.md``). :func:`load_sweep` checks all of it
before anything is launched, and each error names the file, the key and what is allowed:

* the file's keys, their types and their defaults are the dataclasses :class:`SweepFile` and
  its sections, checked by the project's one schema mechanism (:mod:`singer.schema`): unknown
  keys at any level, missing keys, values of the wrong type;
* the domain rules are in :mod:`singer.sweeps.rules`: ranges that involve several keys,
  metrics, the launcher, and every override the sweep can produce (composed, so an unknown
  registry name, a value of the wrong type or range, or a ``_target_`` fails here).

Validation is bounded whatever the file holds: the file is read up to :data:`MAX_FILE_BYTES`,
YAML anchors and aliases are refused (so a "billion laughs" file never expands), the number
of choices, variants, overrides and grid points is capped, and each axis of the space is
checked value by value against the composed config while only a few representative values
are composed. A sweep file may not reach Hydra's own section (``hydra.*``), nor use a resolver
other than plain interpolation (``${a.b}``): ``${oc.env:...}`` would copy the environment
into MLflow.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from singer import schema
from singer.cli import UserError
from singer.schema import Rule, Tagged, rule
from singer.sweeps import rules
from singer.sweeps.overrides import hydra_value, merge_overrides, override_key, stored_choices
from singer.sweeps.rules import (
    MAX_CHOICES,
    MAX_GRID_POINTS,
    MAX_OVERRIDES,
    MAX_PARAMS,
    MAX_SEED,
    MAX_VARIANTS,
    NAME_PATTERN,
    OBJECTIVE_METRICS,
    REPORTED_METRICS,
)

__all__ = [
    "MAX_CHOICES",
    "MAX_FILE_BYTES",
    "MAX_GRID_POINTS",
    "MAX_OVERRIDES",
    "MAX_PARAMS",
    "MAX_SEED",
    "MAX_VARIANTS",
    "OBJECTIVE_METRICS",
    "REPORTED_METRICS",
    "VARIANT_PARAM",
    "Configuration",
    "Objective",
    "Param",
    "SweepFile",
    "SweepSpec",
    "SweepSpecError",
    "check_launcher",
    "hydra_value",
    "load_sweep",
    "merge_overrides",
    "override_key",
    "parse_sweep",
]

MAX_FILE_BYTES = 256 * 1024  # a real sweep file is a few kB
VARIANT_PARAM = "variant"  # the Optuna param that names a variant trial


class SweepSpecError(UserError, ValueError):
    """A sweep file that cannot run; the message names the file, the key and what is allowed."""

    def __init__(
        self, what: str, todo: str = "fix the sweep file (its format is in sweeps/README.md)"
    ):
        super().__init__(what, todo)


# -- the file: keys, types and defaults ---------------------------------------------------------
OVERRIDES = Rule(
    what="a list of Hydra override strings such as [trainer=cpu_tiny, frontend.levels=2]",
    max_items=MAX_OVERRIDES,
    noun="overrides",
    item=Rule(what="a Hydra override string 'key=value'"),
)


@dataclass(frozen=True)
class ChoiceParamFile:
    type: str
    values: list[Any] = field(
        metadata=rule(nonempty=True, what="a non-empty list", max_items=MAX_CHOICES, noun="values")
    )


@dataclass(frozen=True)
class IntParamFile:
    type: str
    low: int
    high: int
    step: int = field(default=1, metadata=rule(ge=1))


@dataclass(frozen=True)
class FloatParamFile:  # float | logfloat
    type: str
    low: float
    high: float


PARAMS = Tagged(
    {
        "choice": ChoiceParamFile,
        "int": IntParamFile,
        "float": FloatParamFile,
        "logfloat": FloatParamFile,
    }
)


@dataclass(frozen=True)
class GridSampler:
    type: str
    seed: int = field(default=0, metadata=rule(ge=0))


@dataclass(frozen=True)
class TpeSampler:
    type: str
    seed: int = field(default=0, metadata=rule(ge=0))
    startup_trials: int | None = field(default=None, metadata=rule(ge=0))


@dataclass(frozen=True)
class RandomSampler:
    type: str
    seed: int = field(default=0, metadata=rule(ge=0))


SAMPLERS = Tagged(
    {"grid": GridSampler, "tpe": TpeSampler, "random": RandomSampler}, kind="sampler", short=True
)


@dataclass(frozen=True)
class NonePruner:
    type: str


@dataclass(frozen=True)
class MedianPruner:
    type: str
    metric: Any = None  # rules.check_metric: one of REPORTED_METRICS (default val/loss)
    warmup_steps: int | None = field(default=None, metadata=rule(ge=0))
    startup_trials: int | None = field(default=None, metadata=rule(ge=1))
    interval_steps: int | None = field(default=None, metadata=rule(ge=1))


@dataclass(frozen=True)
class HyperbandPruner:
    type: str
    metric: Any = None
    min_resource: int | None = field(default=None, metadata=rule(ge=1))
    max_resource: Any = None  # an integer >= 1 or "auto" (rules.check_pruner)
    reduction_factor: int | None = field(default=None, metadata=rule(ge=1))


PRUNERS = Tagged(
    {"none": NonePruner, "median": MedianPruner, "hyperband": HyperbandPruner},
    kind="pruner",
    short=True,
)


@dataclass(frozen=True)
class ObjectiveFile:
    metric: Any  # rules.check_metric: a training metric or any eval/... metric
    direction: Literal["minimize", "maximize"] = "minimize"


@dataclass(frozen=True)
class LimitsFile:
    trials: int | None = field(default=None, metadata=rule(ge=1))
    parallel: int = field(default=1, metadata=rule(ge=1))


@dataclass(frozen=True)
class MlflowFile:
    experiment: str | None = field(default=None, metadata=rule(nonempty=True))  # None: the name
    tracking_uri: str | None = field(default=None, metadata=rule(nonempty=True))


@dataclass(frozen=True)
class EvaluateFile:
    protocol: dict[str, Any] | None = None  # any protocol key (checked by load_protocol)
    split: Literal["val", "train", "all"] = "val"
    bands: bool = False
    probes: bool = False


@dataclass(frozen=True)
class PlotFile:
    x: Any  # params of the space (rules.check_compare)
    hue: Any = None


@dataclass(frozen=True)
class CompareFile:
    reference: str = field(metadata=rule(nonempty=True))
    metrics: list[str] = field(
        metadata=rule(nonempty=True, what="a list of evaluation keys", item=Rule(nonempty=True))
    )
    plot: PlotFile | None = None
    bands: bool = False


@dataclass(frozen=True, kw_only=True)
class SweepFile:
    """A sweep file as written (the format: ``sweeps/README.md``). A key given as null is the
    same as a key left out."""

    name: str = field(
        metadata=rule(pattern=NAME_PATTERN, what="letters, digits, '_' and '-' (it names a folder)")
    )
    description: Any = ""
    overrides: list[str] | None = field(default_factory=list, metadata={"rule": OVERRIDES})
    space: dict[str, Any] | None = field(
        default_factory=dict,
        metadata=rule(max_items=MAX_PARAMS, noun="params", item=Rule(tagged=PARAMS)),
    )
    variants: dict[str, list[str] | None] | None = field(
        default_factory=dict,
        metadata=rule(max_items=MAX_VARIANTS, noun="variants", item=OVERRIDES),
    )
    sampler: Any = field(
        default_factory=lambda: GridSampler("grid"), metadata=rule(tagged=SAMPLERS)
    )
    pruner: Any = field(default_factory=lambda: NonePruner("none"), metadata=rule(tagged=PRUNERS))
    objectives: list[ObjectiveFile] = field(
        metadata=rule(
            nonempty=True,
            what="a non-empty list of {metric: ..., direction: minimize | maximize}",
        )
    )
    seeds: list[int] = field(
        default_factory=lambda: [0],
        metadata=rule(
            nonempty=True,
            what="a non-empty list of integers",
            max_items=MAX_VARIANTS,
            noun="seeds",
            item=Rule(ge=0),
        ),
    )
    limits: LimitsFile | None = field(default_factory=LimitsFile)
    launcher: Any = "local"  # rules.check_launcher: debug | local | slurm:<profile>
    timeout_min: int = field(default=60, metadata=rule(ge=1))
    max_requeue: int = field(default=3, metadata=rule(ge=0))
    mlflow: MlflowFile | None = field(default_factory=MlflowFile)
    evaluate: EvaluateFile | None = None
    compare: CompareFile | None = None


# -- the spec: what the sweep runs ------------------------------------------------------------
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
        return stored_choices(self.values)

    def distribution(self):
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


def _error(path: Path, err: schema.SchemaError) -> SweepSpecError:
    problem = err.problem
    if len(problem) > 4 * schema.MAX_SHOWN:
        problem = problem[: 4 * schema.MAX_SHOWN] + " ..."
    text = f"{path}: key '{err.key}': {problem}"
    return SweepSpecError(text + (f"; allowed: {err.allowed}" if err.allowed else ""))


def parse_sweep(
    data: Any, path: Path | str = "<sweep>", *, compose_check: bool = True
) -> SweepSpec:
    """Validate the loaded YAML of a sweep file; see :func:`load_sweep`."""
    path = Path(path)
    data = data if data is not None else {}
    try:
        fields = rules.resolve(schema.parse(SweepFile, data), data)
        spec = SweepSpec(
            path=path,
            **{
                **fields,
                "space": tuple(Param(**p) for p in fields["space"]),
                "objectives": tuple(Objective(*o) for o in fields["objectives"]),
            },
            raw=dict(data),
        )
        if compose_check:
            rules.check_composes(spec)
    except schema.SchemaError as err:
        raise _error(path, err) from None
    return spec


def check_launcher(path: Path | str, key: str, launcher: Any, timeout_min: int) -> str:
    """Validate a launcher spec (and, for SLURM, that its profile exists and allows the timeout)."""
    try:
        return rules.check_launcher(key, launcher, timeout_min)
    except schema.SchemaError as err:
        raise _error(Path(path), err) from None


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
