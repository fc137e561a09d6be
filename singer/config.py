"""Config composition and validation shared by every entry point.

Configs live in ``singer/conf`` as Hydra config groups. Components are named by their
registered names; a ``_target_`` key (an arbitrary import path) anywhere is rejected, so a
config or sweep file can only reach code the project registered. That includes Hydra's own
section, where the one import target allowed is the project's own tracking callback (and the
launcher and sweeper plugins Hydra itself restricts to its plugin packages); see
:func:`check_hydra_section` and :func:`check_hydra_overrides`.

Values are checked by type and range (:func:`check_values`), so ``trainer.steps=abc`` or
``seed=1e23`` fail here with the key and what is allowed, not later inside the loop. What
reaches MLflow never holds a value read from the environment (:func:`loggable_container`).
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from singer.cli import UserError
from singer.registry import MODELS, all_registries

if TYPE_CHECKING:
    from singer.models.spec import ModelSpec

CONFIG_MODULE = "singer.conf"
# Config group → registry kind, for the name checks below.
REGISTERED_GROUPS = {
    "frontend": "frontend",
    "backbone": "backbone",
    "codec": "codec",
    "model": "model",
}


class ConfigError(UserError, ValueError):
    """A config that names something unknown or unsafe, or holds a value out of range."""

    def __init__(
        self,
        what: str,
        todo: str = "fix the config or override (python -m singer.registry lists the names)",
    ):
        super().__init__(what, todo)


# Keys that make Hydra (or OmegaConf's instantiate) import and call code.
TARGET_KEYS = ("_target_", "_partial_", "_recursive_", "_args_", "_convert_")
# The one import target of the project's own config, allowed by value (singer/conf/train.yaml).
ALLOWED_TARGETS = {
    "hydra.callbacks.prepare_tracking_store._target_": "singer.train.PrepareTrackingStore"
}
# Hydra instantiates its launcher and sweeper only from its own plugin packages.
PLUGIN_TARGETS = {
    "hydra.launcher._target_": ("hydra._internal.core_plugins.", "hydra_plugins."),
    "hydra.sweeper._target_": ("hydra._internal.core_plugins.", "hydra_plugins."),
}
# What a command line may change in the ``hydra`` section: where runs go, and the launcher's
# settings. Everything else there (callbacks, logging handlers, job environment) can run code.
HYDRA_OVERRIDE_KEYS = (
    "hydra.run.dir",
    "hydra.sweep.dir",
    "hydra.sweep.subdir",
    "hydra.job.chdir",
    "hydra.job.name",
    "hydra.verbose",
    "hydra.output_subdir",
    "hydra.launcher.",  # a setting of the chosen launcher (never a _target_, checked below)
)
HYDRA_OVERRIDE_GROUPS = (
    "hydra/launcher",
    "hydra/sweeper",
    "hydra/job_logging",
    "hydra/hydra_logging",
)
SEED_MAX = 2**31 - 1  # seeds are combined with offsets and step counts into torch's 64-bit seeds


def _out_dir(out_dir: str | None, kind: str) -> str:
    if out_dir not in (None, "", "None", "null"):
        return str(out_dir)
    return f"{kind}/{_dt.datetime.now():%Y-%m-%d_%H-%M-%S}"


if not OmegaConf.has_resolver("singer_out_dir"):
    OmegaConf.register_new_resolver("singer_out_dir", _out_dir)


def _opaque(node: Any) -> bool:
    """A typed config node that is None, missing or an interpolation has no items to walk."""
    return isinstance(node, (DictConfig, ListConfig)) and (
        node._is_none() or node._is_missing() or node._is_interpolation()
    )


def _find_targets(node: Any, path: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every import-target key under ``node``."""
    found: list[tuple[str, Any]] = []
    if _opaque(node):
        return found
    if isinstance(node, (DictConfig, Mapping)):
        items = node.items_ex(resolve=False) if isinstance(node, DictConfig) else node.items()
        for key, value in items:
            where = f"{path}.{key}" if path else str(key)
            if key in TARGET_KEYS:
                found.append((where, value))
            found += _find_targets(value, where)
    elif isinstance(node, (ListConfig, list, tuple)):
        for i, value in enumerate(node):
            found += _find_targets(value, f"{path}[{i}]")
    return found


def _target_allowed(where: str, value: Any) -> bool:
    if ALLOWED_TARGETS.get(where) == value:
        return True
    prefixes = PLUGIN_TARGETS.get(where)
    return bool(prefixes) and isinstance(value, str) and value.startswith(prefixes)


def check_hydra_section(hydra: Any) -> None:
    """Reject what in a composed ``hydra`` section would run code beyond the project's own.

    That is any import target except the project's callback (by value) and Hydra's launcher and
    sweeper plugins, and logging configs that name a factory (``()``) or a handler class
    outside the standard ``logging`` package (``logging.config.dictConfig`` imports them).
    """
    if hydra is None:
        return
    bad = [
        where
        for where, value in _find_targets({"hydra": hydra})
        if not _target_allowed(where, value)
    ]
    if bad:
        raise ConfigError(
            f"config keys {bad} are import targets in Hydra's section",
            "remove them: the only target allowed there is the project's own "
            "hydra.callbacks.prepare_tracking_store",
        )
    for section in ("job_logging", "hydra_logging"):
        node = hydra.get(section) if isinstance(hydra, (DictConfig, Mapping)) else None
        for where, key, value in _walk_items(node, f"hydra.{section}"):
            if key == "()" or (
                key == "class" and not (isinstance(value, str) and value.startswith("logging."))
            ):
                raise ConfigError(
                    f"{where}: {value!r} would be imported by Python's logging set-up",
                    "use Hydra's logging configs (hydra/job_logging=default | disabled | none | stdout)",
                )


def _walk_items(node: Any, path: str):
    """(dotted key, key, value) of every mapping item under ``node``, unresolved."""
    if _opaque(node):
        return
    if isinstance(node, (DictConfig, Mapping)):
        items = node.items_ex(resolve=False) if isinstance(node, DictConfig) else node.items()
        for key, value in items:
            where = f"{path}.{key}"
            yield where, key, value
            yield from _walk_items(value, where)
    elif isinstance(node, (ListConfig, list, tuple)):
        for i, value in enumerate(node):
            yield from _walk_items(value, f"{path}[{i}]")


def check_hydra_overrides(overrides: Iterable[str]) -> None:
    """Command-line overrides of Hydra's own section: only where runs go and launcher settings.

    Callbacks, logging handlers and the job environment are out of reach of a command line
    (each can import or run code); so is any import-target key or value, everywhere.
    """
    for override in overrides:
        key, _, value = str(override).partition("=")
        key = key.strip().lstrip("+~")
        parts = re.split(r"[./]", key)
        if any(part in TARGET_KEYS for part in parts) or any(t in value for t in TARGET_KEYS):
            raise ConfigError(
                f"override '{override}' sets an import target",
                "configs name registered components only (python -m singer.registry)",
            )
        if not (key == "hydra" or key.startswith(("hydra.", "hydra/"))):
            continue
        if "/" in key:
            allowed = key in HYDRA_OVERRIDE_GROUPS
        else:
            allowed = any(
                key == k or (k.endswith(".") and key.startswith(k) and len(key) > len(k))
                for k in HYDRA_OVERRIDE_KEYS
            )
        if not allowed:
            shown = ", ".join(k + ("<key>" if k.endswith(".") else "") for k in HYDRA_OVERRIDE_KEYS)
            raise ConfigError(
                f"override '{override}' changes Hydra's section, where a command line may set only "
                f"{shown} and the groups {', '.join(HYDRA_OVERRIDE_GROUPS)}",
                "drop the override",
            )


# -- values -----------------------------------------------------------------------------------
# key → (kind, low, high): "int" values are integers (not bool) in [low, high]; "float" values
# are finite numbers with low < value (or low <= value when the bound is inclusive) and <= high.
_INT = "int"
_NUM = "number"
VALUE_RULES: dict[str, tuple[str, float | None, float | None, bool]] = {
    # key: (kind, low, high, low inclusive)
    "seed": (_INT, 0, SEED_MAX, True),
    "trainer.steps": (_INT, 1, None, True),
    "trainer.batch_size": (_INT, 1, None, True),
    "trainer.num_frames": (_INT, 1, None, True),
    "trainer.size": (_INT, 2, None, True),
    "trainer.log_every": (_INT, 1, None, True),
    "trainer.val_every": (_INT, 1, None, True),
    "trainer.ckpt_every": (_INT, 1, None, True),
    "trainer.val_batches": (_INT, 0, None, True),
    "trainer.warmup_steps": (_INT, 0, None, True),
    "trainer.num_workers": (_INT, 0, None, True),
    "trainer.sample_steps": (_INT, 1, None, True),
    "trainer.lr": (_NUM, 0, None, False),
    "trainer.weight_decay": (_NUM, 0, None, True),
    "trainer.grad_clip": (_NUM, 0, None, False),
    "trainer.ema_decay": (_NUM, 0, 1, True),
    "data.fps": (_NUM, 0, None, False),
    "data.sample_rate": (_INT, 1, None, True),
    "data.val_fraction": (_NUM, 0, 1, True),
    "data.synth.clips": (_INT, 1, None, True),
    "data.synth.seconds": (_NUM, 0, None, False),
    "data.synth.size": (_INT, 2, None, True),
    "data.synth.seed": (_INT, 0, SEED_MAX, True),
}
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _allowed_text(kind: str, low, high, inclusive: bool) -> str:
    what = "an integer" if kind == _INT else "a finite number"
    if low is not None and high is not None:
        return f"{what} from {low} to {high}" if inclusive else f"{what} in ({low}, {high}]"
    if low is not None:
        return f"{what} {'>=' if inclusive else '>'} {low}"
    return what


def check_value(key: str, value: Any) -> None:
    """Raise :class:`ConfigError` when ``value`` does not fit ``key`` (:data:`VALUE_RULES`,
    ``trainer.threads``, ``device``); keys without a rule take anything."""
    if key in VALUE_RULES and value is not None:
        kind, low, high, inclusive = VALUE_RULES[key]
        ok = not isinstance(value, bool) and (
            isinstance(value, int) if kind == _INT else isinstance(value, (int, float))
        )
        if ok and kind == _NUM:
            ok = math.isfinite(value)
        if ok and low is not None:
            ok = value >= low if inclusive else value > low
        if ok and high is not None:
            ok = value <= high
        if not ok:
            allowed = _allowed_text(kind, low, high, inclusive)
            raise ConfigError(f"{key}={value!r} is not {allowed}", f"set {key} to {allowed}")
    if key == "trainer.threads" and value is not None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(
                f"trainer.threads={value!r} is not an integer >= 1",
                "set trainer.threads to null or an integer >= 1",
            )
    if key == "device" and value is not None:
        if not (isinstance(value, str) and DEVICE_PATTERN.match(value)):
            raise ConfigError(
                f"device={value!r} is not a device", "set device to auto, cpu, cuda or cuda:N"
            )


CHECKED_KEYS = (*VALUE_RULES, "trainer.threads", "device")


def check_values(cfg: DictConfig) -> None:
    """:func:`check_value` for every checked key the config has."""
    for key in CHECKED_KEYS:
        try:
            value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        except OmegaConfBaseException as err:
            raise ConfigError(f"{key}: {' '.join(str(err).split())}") from None
        check_value(key, value)


def validate(cfg: DictConfig) -> DictConfig:
    """Reject import paths, unknown registry names and out-of-range values, naming the key
    and what is allowed."""
    cfg_without_hydra = {k: v for k, v in cfg.items_ex(resolve=False) if k != "hydra"}
    targets = [where for where, _ in _find_targets(cfg_without_hydra)]
    if targets:
        raise ConfigError(
            f"config keys {targets} are Hydra import targets",
            "configs name registered components only (see python -m singer.registry)",
        )
    if "hydra" in cfg:
        check_hydra_section(cfg.get("hydra"))
    registries = all_registries()
    for group, kind in REGISTERED_GROUPS.items():
        section = cfg.get(group)
        if section is None:
            continue
        name = section.get("name") if isinstance(section, DictConfig) else None
        if name is None:
            raise ConfigError(f"config group '{group}' has no 'name' key")
        if name not in registries[kind]:
            known = ", ".join(registries[kind].names())
            raise ConfigError(
                f"{group}.name: unknown {kind} '{name}'. Known {kind} names: {known}",
                f"use one of them (python -m singer.registry {kind})",
            )
    data = cfg.get("data")
    separator = data.get("separator") if isinstance(data, DictConfig) else None
    if separator is not None and separator not in registries["separator"]:
        known = ", ".join(registries["separator"].names())
        raise ConfigError(
            f"data.separator: unknown separator '{separator}'. Known: {known}",
            "use one of them (python -m singer.registry separator)",
        )
    check_values(cfg)
    return cfg


def model_for_config(entry: str) -> ModelSpec | None:
    """The ModelSpec that the ``model=<entry>`` config group entry selects (the one whose
    ``config`` is ``entry``), or None when no registered model has that entry. The registry
    lookup loads the models (and torch) only now, when a config names one."""
    found = [spec for spec in map(MODELS.get, MODELS.names()) if spec.config == entry]
    if len(found) > 1:
        raise ValueError(
            f"models {', '.join(s.name for s in found)} all give config='{entry}'; "
            "each model needs its own model/<config>.yaml"
        )
    return found[0] if found else None


def name_model(cfg: DictConfig, choice: str | None) -> DictConfig:
    """Set ``model.name`` from ``choice``, the ``model`` config group entry Hydra composed.

    A model's name is written once, in its ``register_model_spec`` call. Its config file
    ``model/<entry>.yaml`` does not repeat it: selecting ``model=<entry>`` selects the ModelSpec
    whose ``config`` is that entry (by default the spec's own name). A config file that sets
    ``name`` itself (a variant of a model under another file name) keeps it; :func:`validate`
    checks it.
    """
    model = cfg.get("model")
    if not isinstance(model, DictConfig) or model.get("name") is not None or choice is None:
        return cfg
    spec = model_for_config(str(choice))
    if spec is None:
        raise ConfigError(
            f"model={choice}: no registered model has the config entry '{choice}'",
            f"set model.name in model/{choice}.yaml to a registered model, or register a "
            f"ModelSpec whose config is '{choice}' (python -m singer.registry model lists them)",
        )
    with open_dict(model):
        model.name = spec.name
    return cfg


def compose(
    overrides: Sequence[str] | Iterable[str] = (), config_name: str = "train"
) -> DictConfig:
    """Compose ``singer/conf/<config_name>.yaml`` with Hydra override strings, then validate."""
    overrides = list(overrides)
    check_hydra_overrides(overrides)
    try:
        # With Hydra's section: its ``runtime.choices`` name the model (see name_model).
        if GlobalHydra.instance().is_initialized():
            cfg = hydra_compose(config_name, overrides, return_hydra_config=True)
        else:
            with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
                cfg = hydra_compose(config_name, overrides, return_hydra_config=True)
        name_model(cfg, cfg.hydra.runtime.choices.get("model"))
        with open_dict(cfg):
            del cfg["hydra"]
    except (HydraException, OmegaConfBaseException) as err:
        # Hydra's messages span lines ("Could not override ... Key 'x' is not in struct").
        raise ConfigError(
            " ".join(str(err).split()),
            "check the override against the config (python -m singer.train --cfg job prints it)",
        ) from err
    return validate(cfg)


def to_container(cfg: DictConfig) -> dict:
    """Resolved plain dict of a config, without Hydra's own section."""
    data = OmegaConf.to_container(cfg, resolve=True)
    data.pop("hydra", None)
    return data


_RESOLVER_CALL = re.compile(r"\$\{\s*([A-Za-z_][\w.]*)\s*:")
_PLAIN_REF = re.compile(r"\$\{\s*([A-Za-z_][\w.\[\]-]*)\s*\}")
# The project's own resolver: it only formats a timestamped folder name.
SAFE_RESOLVERS = ("singer_out_dir",)


def _reads_environment(text: str, raw: Mapping, depth: int = 0) -> bool:
    """Whether an interpolation string may resolve to something read outside the config: any
    resolver other than the project's own (``oc.env``, ``hydra:``, ...), or a plain
    ``${a.b}`` that leads to one. An unknown or relative reference counts as outside."""
    if depth > 20:
        return True
    if any(name not in SAFE_RESOLVERS for name in _RESOLVER_CALL.findall(text)):
        return True
    for ref in _PLAIN_REF.findall(text):
        node: Any = raw
        for part in re.split(r"\.|\[|\]", ref):
            if not part:
                continue
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return True
        if _any_env(node, raw, depth + 1):
            return True
    return False


def _any_env(node: Any, raw: Mapping, depth: int) -> bool:
    if isinstance(node, str):
        return "${" in node and _reads_environment(node, raw, depth)
    if isinstance(node, Mapping):
        return any(_any_env(v, raw, depth) for v in node.values())
    if isinstance(node, list):
        return any(_any_env(v, raw, depth) for v in node)
    return False


def loggable_container(cfg: DictConfig) -> dict:
    """:func:`to_container`, except that values read from the environment stay unresolved.

    What goes to MLflow (params, ``config.json``) comes from here: ``${oc.env:TOKEN}`` in an
    override is logged as that text, never as the secret it resolves to. The built-in
    ``data.root: ${oc.env:SINGER_CACHE,...}`` is logged the same way.
    """
    raw = OmegaConf.to_container(cfg, resolve=False)
    raw.pop("hydra", None)
    resolved = to_container(cfg)

    def merge(r: Any, v: Any) -> Any:
        if isinstance(r, str) and "${" in r and _reads_environment(r, raw):
            return r
        if isinstance(r, Mapping) and isinstance(v, Mapping):
            return {k: merge(r.get(k), v[k]) for k in v}
        if isinstance(r, list) and isinstance(v, list) and len(r) == len(v):
            return [merge(a, b) for a, b in zip(r, v)]
        return v

    return merge(raw, resolved)


def flatten(data: Mapping, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} → {"a.b": 1}; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat
