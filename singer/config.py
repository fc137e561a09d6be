"""Config composition and validation shared by every entry point.

Configs live in ``singer/conf`` as Hydra config groups. Components are named by their
registered names; a ``_target_`` key (an arbitrary import path) anywhere is rejected, so a
config or sweep file can only reach code the project registered.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

CONFIG_MODULE = "singer.conf"
# Config group → registry kind, for the name checks below.
REGISTERED_GROUPS = {
    "frontend": "frontend",
    "backbone": "backbone",
    "codec": "codec",
    "model": "model",
}


class ConfigError(ValueError):
    """A config that names something unknown or unsafe."""


def _out_dir(out_dir: str | None, kind: str) -> str:
    if out_dir not in (None, "", "None", "null"):
        return str(out_dir)
    return f"{kind}/{_dt.datetime.now():%Y-%m-%d_%H-%M-%S}"


if not OmegaConf.has_resolver("singer_out_dir"):
    OmegaConf.register_new_resolver("singer_out_dir", _out_dir)


def _find_targets(node: Any, path: str = "") -> list[str]:
    found: list[str] = []
    if isinstance(node, (DictConfig, Mapping)):
        items = node.items_ex(resolve=False) if isinstance(node, DictConfig) else node.items()
        for key, value in items:
            where = f"{path}.{key}" if path else str(key)
            if key in ("_target_", "_partial_", "_recursive_", "_args_"):
                found.append(where)
            found += _find_targets(value, where)
    elif isinstance(node, (ListConfig, list, tuple)):
        for i, value in enumerate(node):
            found += _find_targets(value, f"{path}[{i}]")
    return found


def validate(cfg: DictConfig) -> DictConfig:
    """Reject import paths and unknown registry names, with the key and the allowed names."""
    from singer.registry import all_registries

    cfg_without_hydra = {k: v for k, v in cfg.items_ex(resolve=False) if k != "hydra"}
    targets = _find_targets(cfg_without_hydra)
    if targets:
        raise ConfigError(
            f"config keys {targets} are Hydra import targets; configs name registered components only "
            "(see `python -m singer.registry`)"
        )
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
            raise ConfigError(f"{group}.name: unknown {kind} '{name}'. Known {kind} names: {known}")
    data = cfg.get("data")
    separator = data.get("separator") if isinstance(data, DictConfig) else None
    if separator is not None and separator not in registries["separator"]:
        known = ", ".join(registries["separator"].names())
        raise ConfigError(f"data.separator: unknown separator '{separator}'. Known: {known}")
    return cfg


def compose(
    overrides: Sequence[str] | Iterable[str] = (), config_name: str = "train"
) -> DictConfig:
    """Compose ``singer/conf/<config_name>.yaml`` with Hydra override strings, then validate."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    overrides = list(overrides)
    if GlobalHydra.instance().is_initialized():
        cfg = hydra_compose(config_name=config_name, overrides=overrides)
    else:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=overrides)
    return validate(cfg)


def to_container(cfg: DictConfig) -> dict:
    """Resolved plain dict of a config, without Hydra's own section."""
    data = OmegaConf.to_container(cfg, resolve=True)
    data.pop("hydra", None)
    return data


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
