"""Guards for the files the harness writes and the folders it trusts.

- :func:`check_output` refuses an output path that would overwrite an input, or that is an
  existing folder, before any work is done.
- :func:`check_private_tree` refuses a folder that others could write to, for folders whose
  files the harness unpickles (the sweep folder: submitit's result pickles).
- :func:`file_lock` makes parallel jobs that would write the same file take turns.
"""

from __future__ import annotations

import fcntl
import os
import stat
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

from singer.cli import UserError


class OutputError(UserError):
    """An output path that cannot be written safely."""


class UnsafeFolderError(UserError):
    """A folder the harness reads pickles from is writable by someone else."""


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output(
    out: str | Path,
    *,
    inputs: Iterable[str | Path] = (),
    temp_suffixes: Iterable[str] = (),
    flag: str = "--out",
) -> Path:
    """The output file ``out``, made absolute, after checking that writing it is safe.

    Refused: an existing folder; a path (or its temporary ``out + suffix``) that is one of
    ``inputs`` by name or by inode (a hard link, a symlink); a parent that is not a folder
    or cannot be created or written to. Nothing is created here.
    """
    out = Path(out)
    target = Path(os.path.abspath(out))
    if target.is_dir():
        raise OutputError(
            f"{flag} {out} is an existing folder", f"give a file name, e.g. {out / 'out.mp4'}"
        )
    candidates = [target, *(Path(str(target) + suffix) for suffix in temp_suffixes)]
    for given in inputs:
        given_path = Path(given)
        resolved = Path(os.path.realpath(given_path))
        for candidate in candidates:
            if Path(os.path.realpath(candidate)) == resolved or _same_file(candidate, given_path):
                raise OutputError(
                    f"{flag} {out} would overwrite the input {given}",
                    "write the output to another path",
                )
    parent = target.parent
    probe = parent
    while not probe.exists():  # the nearest folder that exists must let us create the rest
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"{flag} {out}: {probe} is not a folder", "give a path inside a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {out}: cannot write in {probe}", "give a writable location")
    return target


def _writable_by_others(mode: int) -> bool:
    return bool(mode & (stat.S_IWGRP | stat.S_IWOTH))


def check_private_tree(folder: str | Path, *, subfolders: Iterable[str] = (), what: str) -> None:
    """Refuse ``folder`` (and everything under its ``subfolders``) when it is not owned by
    this user, or is writable by group or others.

    For folders whose files are unpickled: whoever can write there can make this process run
    their code. Symlinks inside are refused too (they could point anywhere).
    """
    folder = Path(folder)
    if not folder.exists():
        return
    uid = os.geteuid()
    entries = [folder]
    for name in subfolders:
        sub = folder / name
        if sub.is_symlink():
            entries.append(sub)
            continue
        if sub.is_dir():
            entries.append(sub)
            for root, dirs, files in os.walk(sub):
                entries.extend(Path(root) / d for d in dirs)
                entries.extend(Path(root) / f for f in files)
    for entry in entries:
        info = entry.lstat()
        problem = None
        if stat.S_ISLNK(info.st_mode):
            problem = "is a symbolic link"
        elif info.st_uid != uid:
            problem = f"is owned by uid {info.st_uid}, not by this user (uid {uid})"
        elif _writable_by_others(info.st_mode):
            problem = f"is writable by group or others (mode {stat.filemode(info.st_mode)})"
        if problem:
            raise UnsafeFolderError(
                f"{what} {folder}: {entry} {problem}; the harness loads pickled results from "
                "there, and anyone who can write them can run code as you",
                f"run `chmod -R go-w {folder}` (and make sure you own it), or use another --out",
            )


@contextmanager
def file_lock(path: Path):
    """An exclusive lock across processes (parallel sweep trials may start together)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
