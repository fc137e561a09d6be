"""Hydra override text: how the sweep writes a value, and which key an override sets."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

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


def stored_choices(values: Iterable[Any]) -> list:
    """Choice values as Optuna stores them: lists/dicts become their Hydra text (Optuna
    categoricals hold only str/int/float/bool/None)."""
    return [hydra_value(v) if isinstance(v, (list, tuple, Mapping)) else v for v in values]


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
