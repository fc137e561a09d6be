"""Name → component registries (timm-style).

Every swappable part of the harness (audio front-ends, video backbones, model specs,
codecs, metrics, vocal separators) is registered under a short name. Config and sweep files refer to
components only by these names; nothing in a user file is ever imported by path.

    from singer.registry import FRONTENDS

    @FRONTENDS.register("mel")
    class MelFrontend(nn.Module): ...

    FRONTENDS.build("mel", n_mels=80)

``python -m singer.registry`` lists everything that is registered, grouped by kind.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import pkgutil
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from singer.cli import entry_point

T = TypeVar("T")

# Packages whose import registers components. Listed here (not discovered by path)
# so that the set of code a config can reach is fixed by the project.
PLUGIN_MODULES = (
    "singer.audio",
    "singer.backbones",
    "singer.diffusion",
    "singer.codecs",
    "singer.models",
    "singer.metrics",
    "singer.separation",
    "baselines",
)


class UnknownNameError(KeyError):
    """A name that no component of this kind is registered under."""

    def __init__(self, kind: str, name: str, known: list[str]):
        self.kind, self.name, self.known = kind, name, known
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        known_text = ", ".join(known) if known else "(none registered)"
        super().__init__(f"unknown {kind} '{name}'. Known {kind} names: {known_text}.{hint}")

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return self.args[0]


class Registry(Generic[T]):
    """A mapping from names to builders (classes or factory functions) of one kind."""

    def __init__(self, kind: str, description: str = ""):
        self.kind = kind
        self.description = description
        self._entries: dict[str, T] = {}
        self._docs: dict[str, str] = {}
        _ALL[kind] = self

    def register(self, name: str, obj: T | None = None, *, doc: str | None = None):
        """Register ``obj`` under ``name``; usable as ``@REG.register("name")`` too."""

        def add(item: T) -> T:
            if name in self._entries and self._entries[name] is not item:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._entries[name] = item
            text = doc if doc is not None else (getattr(item, "__doc__", None) or "")
            self._docs[name] = text.strip().splitlines()[0] if text.strip() else ""
            return item

        return add(obj) if obj is not None else add

    def get(self, name: str) -> T:
        load_plugins()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self.names()) from None

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the builder registered under ``name`` with the given arguments."""
        builder = self.get(name)
        if not callable(builder):
            raise TypeError(f"{self.kind} '{name}' is not buildable")
        return builder(*args, **kwargs)

    def check(self, name: str) -> None:
        """Raise :class:`UnknownNameError` unless ``name`` is registered."""
        self.get(name)

    def names(self) -> list[str]:
        load_plugins()
        return sorted(self._entries)

    def describe(self) -> dict[str, str]:
        load_plugins()
        return {n: self._docs[n] for n in sorted(self._entries)}

    def __contains__(self, name: object) -> bool:
        load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


_ALL: dict[str, Registry] = {}
_plugins_loaded = False


def load_plugins() -> None:
    """Import the project's component packages once, so their registrations run."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for module in PLUGIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            # Only tolerate the plugin package itself being absent, never a broken import inside it.
            if err.name != module:
                raise


def import_submodules(package: str, path, skip: tuple[str, ...] = ()) -> None:
    """Import every module and sub-package of a plugin package (its ``__path__``), so that a
    new component is one new file (or folder) with a register call, and no list to edit.
    ``conf`` (a package's Hydra configs) holds no components; ``skip`` names modules that are
    command-line entry points (``python -m package.module``), which must not be imported before
    they run."""
    for info in sorted(pkgutil.iter_modules(path), key=lambda m: m.name):
        if not info.name.startswith("_") and info.name not in ("conf", *skip):
            importlib.import_module(f"{package}.{info.name}")


def all_registries() -> dict[str, Registry]:
    load_plugins()
    return dict(_ALL)


FRONTENDS: Registry = Registry("frontend", "audio front-ends: waveform B×S → tokens B×F×N×D")
BACKBONES: Registry = Registry("backbone", "video denoisers: x_t B×C×F×H×W → same shape")
CODECS: Registry = Registry("codec", "pixel ↔ latent codecs in front of the backbone")
MODELS: Registry = Registry("model", "ModelSpecs: SINGER and baselines (build, loss, sample)")
METRICS: Registry = Registry("metric", "evaluation metrics with update()/compute()")
SEPARATORS: Registry = Registry(
    "separator", "vocal separators: mixture waveform B×S → vocal estimate B×S (mono 16 kHz)"
)


def format_listing(registries: dict[str, Registry] | None = None) -> str:
    registries = registries if registries is not None else all_registries()
    lines: list[str] = []
    for kind, reg in registries.items():
        lines.append(f"{kind}  ({reg.description})" if reg.description else kind)
        entries = reg.describe()
        if not entries:
            lines.append("    (none registered)")
        width = max((len(n) for n in entries), default=0)
        for name, doc in entries.items():
            lines.append(f"    {name.ljust(width)}  {doc}".rstrip())
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m singer.registry",
        description="List every registered component, grouped by kind.",
    )
    parser.add_argument(
        "kind",
        nargs="?",
        help="only this kind (frontend, backbone, codec, model, metric, separator)",
    )
    args = parser.parse_args(argv)
    regs = all_registries()
    if args.kind:
        if args.kind not in regs:
            parser.error(f"unknown kind '{args.kind}'; known kinds: {', '.join(regs)}")
        regs = {args.kind: regs[args.kind]}
    print(format_listing(regs), end="")
    return 0


if __name__ == "__main__":
    # Run as ``-m``, this file is ``__main__``: use the importable module's registries, which
    # are the ones the plugins register into.
    from singer.registry import main as _main

    raise SystemExit(_main())
