"""Who is speaking in each source video: the unit that splits and statistics are made of.

Held-out evaluation needs speakers (identities) that never appear in training, and confidence
intervals need independent units; clips of one speaker are neither. ``prepare`` therefore
records a ``speaker_id`` for every clip, taken from, in order:

1. a SynthSing ``meta.jsonl`` beside the videos (its speakers);
2. a sidecar file: ``speakers.csv`` (``path,speaker`` rows) or ``speakers.json``
   (``{"path": "speaker"}``) in the source folder, or any file given with ``--speakers``.
   ``path`` is the video's path relative to the source folder, or its file name, or its stem;
3. ``--speaker-pattern REGEX``: a regular expression searched in the relative path; the
   speaker is its group named ``speaker``, else its first group, else the whole match.

A video none of them names gets ``speaker_id: null``, and the split falls back to its source
video as the group (``singer.data.dataset.clip_group``): no two clips of one video are ever split
apart, but two videos of one person may be, so name speakers when you have them.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from singer.cli import UserError

SIDECAR_NAMES = ("speakers.csv", "speakers.json")


class SpeakerMapError(UserError, ValueError):
    """A sidecar file or pattern that cannot be used."""

    def __init__(self, what: str, todo: str = "fix the speaker file or --speaker-pattern"):
        super().__init__(what, todo)


def read_sidecar(path: str | Path) -> dict[str, str]:
    """``{path or name or stem: speaker}`` from a ``.csv`` (``path,speaker``) or ``.json`` file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SpeakerMapError(f"cannot read the speaker file {path}: {err}") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise SpeakerMapError(f"{path} is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise SpeakerMapError(f'{path} must hold one object {{"video path": "speaker"}}')
        return {str(k): str(v) for k, v in data.items() if v not in (None, "")}
    mapping = {}
    for number, row in enumerate(csv.reader(text.splitlines()), start=1):
        if (
            not row
            or row[0].startswith("#")
            or [c.strip().lower() for c in row] == ["path", "speaker"]
        ):
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise SpeakerMapError(f"{path}, line {number}: expected 'path,speaker', got {row}")
        mapping[row[0].strip()] = row[1].strip()
    return mapping


def compile_pattern(pattern: str | None) -> re.Pattern | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as err:
        raise SpeakerMapError(
            f"--speaker-pattern {pattern!r} is not a regular expression: {err}"
        ) from None


def speaker_of(rel: str, sidecar: dict[str, str], pattern: re.Pattern | None) -> str | None:
    """The speaker of the video at relative path ``rel``, or None when nothing names one."""
    name = Path(rel)
    for key in (rel, name.name, name.stem):
        if key in sidecar:
            return sidecar[key]
    if pattern is not None:
        match = pattern.search(rel)
        if match:
            if "speaker" in pattern.groupindex:
                return match.group("speaker")
            return match.group(1) if pattern.groups else match.group(0)
    return None


def speaker_map(
    src: str | Path,
    rels: list[str],
    *,
    sidecar: str | Path | None = None,
    pattern: str | None = None,
) -> dict[str, str | None]:
    """``{rel: speaker or None}`` for the videos ``rels`` under ``src`` (see the module docstring)."""
    src = Path(src)
    files = (
        [Path(sidecar)]
        if sidecar is not None
        else [src / n for n in SIDECAR_NAMES if (src / n).is_file()]
    )
    mapping: dict[str, str] = {}
    for file in files:
        mapping.update(read_sidecar(file))
    regex = compile_pattern(pattern)
    return {rel: speaker_of(rel, mapping, regex) for rel in rels}
