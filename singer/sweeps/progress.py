"""The sweep's live display: one bar of finished trials with counts per state."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

STATES = ("queued", "running", "done", "pruned", "failed")
_STYLE = {"queued": "dim", "running": "cyan", "done": "green", "pruned": "yellow", "failed": "red"}


def format_counts(counts: dict[str, int]) -> str:
    return " · ".join(f"[{_STYLE[s]}]{s} {counts.get(s, 0)}[/]" for s in STATES)


class SweepProgress:
    """``with SweepProgress(name, total) as p: p.update(counts); p.log(text)``.

    On a terminal the bar redraws in place; elsewhere (logs, CI) only the logged lines and
    the final state are printed.
    """

    def __init__(
        self, name: str, total: int, *, console: Console | None = None, enabled: bool = True
    ):
        self.console = console or Console()
        self.enabled = enabled
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(),
            console=self.console,
            disable=not enabled,
        )
        self._task = self._progress.add_task(f"sweep {name}", total=total, counts=format_counts({}))

    def __enter__(self) -> SweepProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def update(self, counts: dict[str, int]) -> None:
        finished = counts.get("done", 0) + counts.get("pruned", 0) + counts.get("failed", 0)
        self._progress.update(self._task, completed=finished, counts=format_counts(counts))

    def log(self, text: str) -> None:
        self.console.print(text, soft_wrap=True, highlight=False)
