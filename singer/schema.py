"""Dataclass schemas for the harness's own file formats (sweep files, SLURM profiles, the
evaluation protocol).

A format is a dataclass: its fields are the keys, their annotations the types, their defaults
what an absent key means (a field without a default is required), and ``field(metadata=rule(...))``
the bounds of one value and the words an error uses for it. :func:`parse` checks a loaded YAML
mapping against the dataclass key by key and builds it; :func:`type_problems` checks the fields
of an instance built in code. A format's keys, types and defaults are so written once, in its
dataclass; the rules that tie keys together stay with the format (``singer/sweeps/rules.py``,
``EvalProtocol.validate``).

Annotations: ``int``, ``float`` (a finite number; integers too), ``str``, ``bool``,
``Any``, ``Literal[...]`` (one of the given words), ``list[T]``, ``dict[str, T]``, ``T | None``
and another schema dataclass. ``rule(tagged=Tagged(...))`` makes a field one of several
dataclasses, chosen by the value's ``type`` key.

Why not ``OmegaConf.structured``: a sweep file's strings are Hydra text that must reach each job
as written (``${trainer.log_every}`` resolves in the job's config, not here); OmegaConf would
turn ``"4"`` into an integer where these checks refuse it; and it stops at the first bad value,
where :func:`type_problems` names every one, in this project's words.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence, Sized
from dataclasses import dataclass
from typing import Any, Literal, Union

MAX_SHOWN = 200  # characters of a value quoted in an error message


def shown(value: Any) -> str:
    """``repr(value)``, cut to a readable length for an error message."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 5] + " ...'"


@dataclass(frozen=True)
class Tagged:
    """One of several schema dataclasses, chosen by the value's ``tag`` key
    (``{type: tpe, seed: 0}``). ``kind`` names the choice in errors ("unknown sampler
    'annealing'"); with ``short``, a bare word stands for the mapping of its tag alone
    (``sampler: tpe``)."""

    options: Mapping[str, type]
    kind: str = "type"
    tag: str = "type"
    short: bool = False


@dataclass(frozen=True)
class Rule:
    """What a field's value must satisfy beyond its type, and how an error names it.

    ge:        smallest allowed number (inclusive).
    gt:        the number a value must exceed.
    pattern:   a regular expression a string must match.
    what:      the allowed value in words, in place of the one derived from the type.
    nonempty:  a list or mapping must hold an item; a string must not be blank.
    max_items: at most this many items; ``noun`` names them in the error ("has 1200 values").
    item:      the rule of each item of a list (each value of a mapping).
    tagged:    the value is one of these dataclasses (:class:`Tagged`).
    """

    ge: float | None = None
    gt: float | None = None
    pattern: re.Pattern | None = None
    what: str | None = None
    nonempty: bool = False
    max_items: int | None = None
    noun: str = "items"
    item: Rule | None = None
    tagged: Tagged | None = None


def rule(**kwargs: Any) -> dict:
    """``field(metadata=rule(ge=1))``: a field's :class:`Rule`."""
    return {"rule": Rule(**kwargs)}


class SchemaError(ValueError):
    """A value that does not fit: the key (dotted, ``[i]`` for list items), the problem, and
    what is allowed."""

    def __init__(self, key: str, problem: str, allowed: str | None = None):
        self.key, self.problem, self.allowed = key, problem, allowed
        super().__init__(f"key '{key}': {problem}" + (f"; allowed: {allowed}" if allowed else ""))


def join(key: str, name: Any) -> str:
    """``a.b`` + ``c`` → ``a.b.c``; the top level has no key."""
    return f"{key}.{name}" if key else str(name)


def _optional(annotation: Any) -> tuple[Any, bool]:
    """``(T, True)`` for ``T | None``, else ``(annotation, False)``."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = typing.get_args(annotation)
        rest = [a for a in args if a is not type(None)]
        if len(rest) < len(args):
            return (rest[0] if len(rest) == 1 else Union[tuple(rest)]), True
    return annotation, False


def _rule(f: dataclasses.Field) -> Rule:
    return f.metadata.get("rule") or Rule()


def fields_of(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    """The fields of a schema dataclass with their resolved annotations, in declaration order."""
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def describe(annotation: Any, r: Rule | None = None) -> str:
    """What a value of ``annotation`` may be, in words ("an integer >= 1", "a list of names")."""
    r = r or Rule()
    inner, optional = _optional(annotation)
    origin = typing.get_origin(inner)
    if r.what:
        text = r.what
    elif inner is int:
        text = "an integer" + (f" >= {r.ge:g}" if r.ge is not None else "")
    elif inner is float:
        text = "a finite number" if r.gt is None else f"a number > {r.gt:g}"
    elif inner is str:
        text = "a string"
    elif inner is bool:
        text = "true | false"
    elif origin is Literal:
        text = " | ".join(str(a) for a in typing.get_args(inner))
    elif origin is list:
        item = typing.get_args(inner)[0]
        words = r.item.what if r.item and r.item.what else _plural(item)
        text = f"a {'non-empty ' if r.nonempty else ''}list of {words}"
    elif origin is dict or dataclasses.is_dataclass(inner) or r.tagged:
        text = "a mapping"
    else:
        text = "any value"
    return text + (" or null" if optional else "")


def _plural(annotation: Any) -> str:
    inner, _ = _optional(annotation)
    return {int: "integers", float: "numbers", str: "names", bool: "booleans"}.get(inner, "values")


def check(key: str, value: Any, annotation: Any, r: Rule | None = None) -> Any:
    """``value`` checked against ``annotation`` and its rule and built where the schema says so
    (strings stripped, mappings of a dataclass built into it). Raises :class:`SchemaError`."""
    r = r or Rule()
    inner, optional = _optional(annotation)
    if value is None and optional:
        return None
    if r.tagged is not None:
        return parse_tagged(key, value, r.tagged)
    if dataclasses.is_dataclass(inner):
        return parse(inner, value, key)
    origin = typing.get_origin(inner)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise SchemaError(key, f"got {shown(value)}", describe(annotation, r))
        _check_size(key, value, annotation, r)
        item = typing.get_args(inner)[0]
        return [check(f"{key}[{i}]", v, item, r.item) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise SchemaError(
                key,
                f"must be a mapping, got {type(value).__name__} {shown(value)}",
                describe(annotation, r),
            )
        _check_size(key, value, annotation, r)
        item = typing.get_args(inner)[1]
        return {k: check(join(key, k), v, item, r.item) for k, v in value.items()}
    if not _fits(value, inner, r):
        raise SchemaError(key, f"got {shown(value)}", describe(annotation, r))
    return value.strip() if inner is str else value


def _fits(value: Any, inner: Any, r: Rule) -> bool:
    if inner is Any:
        return True
    if inner is bool:
        return isinstance(value, bool)
    if inner in (int, float):
        kinds = int if inner is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
            return False
        return (r.ge is None or value >= r.ge) and (r.gt is None or value > r.gt)
    if inner is str:
        if not isinstance(value, str) or (r.nonempty and not value.strip()):
            return False
        return r.pattern is None or bool(r.pattern.match(value))
    if typing.get_origin(inner) is Literal:
        return isinstance(value, str) and value in typing.get_args(inner)
    raise TypeError(f"unsupported schema annotation {inner!r}")


def _check_size(key: str, value: Sized, annotation: Any, r: Rule) -> None:
    if r.nonempty and not value:
        raise SchemaError(key, f"got {shown(value)}", describe(annotation, r))
    if r.max_items is not None and len(value) > r.max_items:
        raise SchemaError(key, f"has {len(value)} {r.noun}", f"at most {r.max_items}")


def check_keys(key: str, value: Any, allowed: Sequence[str], needed: Sequence[str] = ()) -> None:
    """A mapping whose keys are among ``allowed`` and include ``needed``."""
    if not isinstance(value, Mapping):
        raise SchemaError(
            key,
            f"must be a mapping, got {type(value).__name__} {shown(value)}",
            f"a mapping with keys {', '.join(allowed[:20])}",
        )
    known = set(allowed)  # a set: a mapping may have thousands of keys
    for k in value:
        if k not in known:
            raise SchemaError(join(key, k), "unknown key", ", ".join(allowed))
    for k in needed:
        if k not in value:
            raise SchemaError(join(key, k), "is required", ", ".join(allowed))


def parse(cls: type, value: Any, key: str = "") -> Any:
    """Check a loaded mapping against the schema dataclass ``cls`` and build it.

    Unknown and missing required keys are errors; an absent key takes the field's default, and
    so does a null one where the field may be null (YAML's ``key:`` with nothing after it).
    Fields are checked in declaration order: the first problem is the one reported.
    """
    spec = fields_of(cls)
    check_keys(key, value, [f.name for f, _ in spec], [f.name for f, _ in spec if _required(f)])
    values = {}
    for f, annotation in spec:
        if f.name not in value or (
            value[f.name] is None and _optional(annotation)[1] and not _required(f)
        ):
            continue
        values[f.name] = check(join(key, f.name), value[f.name], annotation, _rule(f))
    return cls(**values)


def parse_tagged(key: str, value: Any, tagged: Tagged) -> Any:
    """Build the option of ``tagged`` that the value's tag names."""
    words = " | ".join(tagged.options)
    short = tagged.short and not isinstance(value, Mapping)
    if short:
        value = {tagged.tag: value}
    elif not isinstance(value, Mapping) or (tagged.tag not in value and not tagged.short):
        raise SchemaError(
            key, f"must be a mapping with a '{tagged.tag}', got {shown(value)}", f"type: {words}"
        )
    chosen = value.get(tagged.tag)
    if not isinstance(chosen, str) or chosen not in tagged.options:
        where = key if short else join(key, tagged.tag)
        raise SchemaError(where, f"unknown {tagged.kind} {shown(chosen)}", words)
    return parse(tagged.options[chosen], value, key)


def type_problems(instance: Any) -> list[str]:
    """One message per field of a schema dataclass instance whose value does not fit its type
    ("steps must be an integer, got 'ten'")."""
    problems = []
    for f, annotation in fields_of(type(instance)):
        value = getattr(instance, f.name)
        try:
            check(f.name, value, annotation, _rule(f))
        except SchemaError:
            problems.append(f"{f.name} must be {describe(annotation, _rule(f))}, got {value!r}")
    return problems
