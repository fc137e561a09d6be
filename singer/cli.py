"""One error convention for every command line of the harness.

A problem with what the user asked for (a bad option, a missing file, a config that names
something unknown) ends the command with exit status 2 and one line on stderr::

    error: <what went wrong> — <what to do about it>

and no traceback. A traceback means a bug in the harness: any other exception is re-raised
as usual (exit status 1). ``--debug`` on any command line (or ``SINGER_DEBUG=1`` in the
environment, which also reaches ``python -m singer.train``) shows the traceback of a user
error too.

Entry points use it in one of two ways::

    @entry_point
    def main(argv: list[str] | None = None) -> int: ...     # argparse commands

    with user_errors():                                     # inside a Hydra task function
        ...

Errors the library raises for user mistakes are :class:`UserError` subclasses, or one of the
older project classes listed in :data:`USER_ERROR_CLASSES`, which are mapped onto the same
convention here rather than rewritten.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import traceback
from collections.abc import Callable, Iterator

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
DEBUG_FLAG = "--debug"
DEBUG_ENV = "SINGER_DEBUG"


class UserError(Exception):
    """A mistake in what the user asked for: ``what`` went wrong and ``todo``, what to do.

    ``str(err)`` is ``"what — todo"``, so these read well wherever they are printed.
    """

    def __init__(self, what: str, todo: str = ""):
        self.what = str(what)
        self.todo = str(todo)
        super().__init__(self.what + (f" — {self.todo}" if self.todo else ""))


# Error classes of the project that predate UserError and mean "the request is wrong",
# as "module:Class" → the advice printed when the message carries none of its own. They are
# looked up only in modules already imported: an exception of a class whose module was
# never imported cannot be in flight.
USER_ERROR_CLASSES: dict[str, str] = {
    "singer.config:ConfigError": "fix the config or override (python -m singer.registry lists the names)",
    "singer.sweeps.spec:SweepSpecError": "fix the sweep file (its format is in sweeps/README.md)",
    "singer.sweeps.state:SweepError": "see sweeps/README.md",
    "singer.registry:UnknownNameError": "use one of the known names (python -m singer.registry)",
    "singer.weights:MissingWeightsError": "put the weights file there, or fix the path",
    "singer.weights:WeightsChecksumError": "use the file the sha256 describes, or fix the sha256",
    "singer.evaluation.protocol:ProtocolError": "fix the protocol (docs/metrics.md)",
    "singer.evaluation.inputs:EvaluationError": "see docs/metrics.md",
    "singer.evaluation.probes:ProbeError": "see docs/metrics.md",
    "singer.launch:LaunchError": "see slurm/README.md",
    "singer.launch:ProfileError": "fix the profile (slurm/README.md)",
    "singer.data.media:MediaError": "give a readable media file",
}
# Errors from the operating system about a path the user gave.
_PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def _known_classes() -> list[tuple[type, str]]:
    found = []
    for name, todo in USER_ERROR_CLASSES.items():
        module_name, class_name = name.split(":")
        module = sys.modules.get(module_name)
        cls = getattr(module, class_name, None) if module is not None else None
        if isinstance(cls, type):
            found.append((cls, todo))
    return found


def as_user_error(err: BaseException) -> UserError | None:
    """The user-error form of ``err``, or None when ``err`` is a bug (or an interrupt)."""
    if isinstance(err, UserError):
        return err
    for cls, todo in _known_classes():
        if isinstance(err, cls):
            text = str(err)
            if " — " in text:  # the message already says what to do
                what, _, todo = text.partition(" — ")
                return UserError(what, todo)
            return UserError(text, todo)
    if isinstance(err, _PATH_ERRORS):  # a path the user gave that is not there, or not theirs
        if getattr(err, "filename", None):
            return UserError(
                f"{err.filename}: {err.strerror or type(err).__name__}", "check the path"
            )
        return UserError(str(err), "check the path")
    return None


def one_line(err: UserError) -> str:
    """``error: what — todo`` on a single line."""
    text = " ".join(str(err).split())
    return f"error: {text}"


def debug_enabled(argv: list[str] | None = None) -> bool:
    argv = sys.argv[1:] if argv is None else argv
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def strip_debug(argv: list[str]) -> list[str]:
    return [arg for arg in argv if arg != DEBUG_FLAG]


def fail(err: BaseException, *, debug: bool | None = None) -> int:
    """Print a user error the project's way and return its exit status; re-raise a bug.

    ``debug`` (default: ``--debug`` on the command line or ``SINGER_DEBUG=1``) prints the
    traceback above the line."""
    user = as_user_error(err)
    if user is None:
        raise err
    if debug is None:
        debug = debug_enabled()
    if debug:
        traceback.print_exception(err)
    print(one_line(user), file=sys.stderr, flush=True)
    return EXIT_USER_ERROR


def _argparse_error(self: argparse.ArgumentParser, message: str):
    raise UserError(f"{self.prog}: {message}", f"see {self.prog} --help")


@contextlib.contextmanager
def argparse_errors_as_user_errors() -> Iterator[None]:
    """argparse prints its usage and exits 2 on a bad option; raise a UserError instead, so
    that option errors follow the same one-line convention (and subcommand parsers too)."""
    original = argparse.ArgumentParser.error
    argparse.ArgumentParser.error = _argparse_error
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original


def entry_point(main: Callable[[list[str]], int | None]) -> Callable[[list[str] | None], int]:
    """Wrap an argparse command's ``main(argv)``: user errors become one line and exit 2.

    ``--debug`` is taken out of ``argv`` here, so commands need not declare it. A bug is
    re-raised (Python prints its traceback, exit status 1); Ctrl-C exits 130.
    """

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        argv = list(sys.argv[1:] if argv is None else argv)
        debug = debug_enabled(argv)
        try:
            with argparse_errors_as_user_errors():
                code = main(strip_debug(argv))
        except KeyboardInterrupt:
            print("error: interrupted — run the command again to continue", file=sys.stderr)
            return EXIT_INTERRUPTED
        except Exception as err:  # a user error is reported; anything else re-raised
            return fail(err, debug=debug)
        return 0 if code is None else int(code)

    return wrapper


@contextlib.contextmanager
def user_errors(debug: bool | None = None) -> Iterator[None]:
    """Inside a Hydra task function: a user error prints one line and exits 2
    (``SystemExit``, which Hydra passes through); a bug propagates to Hydra."""
    debug = debug_enabled() if debug is None else debug
    try:
        yield
    except Exception as err:
        if as_user_error(err) is None:
            raise
        sys.exit(fail(err, debug=debug))
