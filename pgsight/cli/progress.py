"""Progress on the terminal for `pgsight sql` and `pgsight load-images`: rich bars on stderr, or
nothing with --quiet / --json."""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from pgsight.cli import common
from pgsight.cli.common import state
from pgsight.tools.jobs import Reporter


class CliReporter(Reporter):
    """Progress bars on stderr (rich)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress: Progress | None = None
        self.task = TaskID(0)

    def _bar(self, label: str, unit: str) -> Progress:
        self.close()
        self.progress = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn(unit), TextColumn("{task.fields[rate]}"),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=False)
        self.progress.start()
        self.task = self.progress.add_task(label, total=None, rate="")
        return self.progress

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def info(self, message: str) -> None:
        self.console.print(Text(message), soft_wrap=True)

    def warn(self, message: str) -> None:
        self.console.print(Text(message, style="yellow"), soft_wrap=True)

    def job_started(self, job_id: int, label: str) -> None:
        self._bar(f"job {job_id} {label}", "")

    def job_progress(self, job_id: int, status: str, done: int, total: int | None, info: dict[str, Any]) -> None:
        if self.progress is not None:
            extra = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())
            self.progress.update(self.task, completed=done, total=total, rate=f"{status} {extra}".strip())

    def job_ended(self, job_id: int, status: str) -> None:
        self.close()

    def load_progress(self, phase: str, done: int, total: int | None) -> None:
        progress = self.progress
        if progress is None or progress.tasks[0].description != phase:
            progress = self._bar(phase, "files" if phase != "copy" else "")
        progress.update(self.task, completed=done, total=total)
        if phase == "insert":
            self.close()


class QuietReporter(Reporter):
    """--quiet / --json: no progress (the base Reporter prints nothing); warnings still on stderr."""

    def warn(self, message: str) -> None:
        common.warn(message)

    def close(self) -> None:
        pass


def reporter() -> CliReporter | QuietReporter:
    """Progress bars on stderr; none with --quiet or --json."""
    return QuietReporter() if (state.quiet or state.json) else CliReporter(common.err_console())
