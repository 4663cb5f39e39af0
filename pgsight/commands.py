"""The user's commands: `pgsight status`, `show`, `load-images` and `sql` (registered on the CLI app)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import psycopg
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from pgsight.runner import JobFailed, Reporter, Result

console = Console(stderr=True)
out = Console()

DsnOpt = typer.Option(None, "--dsn", help="libpq DSN; default $PGSIGHT_DSN, else the running embedded server")
RootOpt = typer.Option([], "--image-root", help="directory relative image paths are read from (repeat; default: .)")


def _fail(message: str) -> None:
    console.print(Text.assemble(("error: ", "red"), message), soft_wrap=True)  # no markup: messages hold [..]
    raise typer.Exit(1)


def _dsn(dsn: str | None) -> str:
    from pgsight.db.dsn import resolve

    try:
        return resolve(dsn, start=False)
    except RuntimeError as e:
        _fail(f"{e}, or `pgsight up`")
    raise AssertionError  # unreachable


def _connect(dsn: str | None):
    target = _dsn(dsn)
    try:
        return psycopg.connect(target, autocommit=True)
    except psycopg.OperationalError as e:
        _fail(f"cannot connect to {target}: {str(e).strip()}\n  check --dsn / $PGSIGHT_DSN, or start the embedded "
              "server with `pgsight server start`")
    raise AssertionError


def _db_error(e: Exception) -> None:
    """A database error as the user should read it: the message, then PostgreSQL's hint."""
    if isinstance(e, psycopg.Error) and e.diag is not None:
        msg = e.diag.message_primary or str(e)
        hint = e.diag.message_hint
        _fail(msg + (f"\n  hint: {hint}" if hint else ""))
    _fail(str(e))


class CliReporter(Reporter):
    """Progress bars on stderr (rich)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress: Progress | None = None
        self.task = None

    def _bar(self, label: str, unit: str) -> None:
        self.close()
        self.progress = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn(unit), TextColumn("{task.fields[rate]}"),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=False)
        self.progress.start()
        self.task = self.progress.add_task(label, total=None, rate="")

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
        if self.progress is None or self.progress.tasks[0].description != phase:
            self._bar(phase, "files" if phase != "copy" else "")
        self.progress.update(self.task, completed=done, total=total)
        if phase == "insert":
            self.close()


def print_rows(result: Result, max_rows: int) -> None:
    table = Table(show_lines=False)
    for c in result.columns:
        table.add_column(c, overflow="ellipsis", max_width=60)
    for row in result.rows[:max_rows]:
        table.add_row(*[Text("NULL" if v is None else str(v)) for v in row])  # Text: values are not markup
    out.print(table)
    more = len(result.rows) - max_rows
    console.print(f"({len(result.rows)} row{'s' if len(result.rows) != 1 else ''}"
                  + (f", {more} not shown: --max-rows N" if more > 0 else "") + ")")


def register(app: typer.Typer) -> None:
    @app.command()
    def status(dsn: str | None = DsnOpt,
               watch: bool = typer.Option(False, "--watch", "-w", help="redraw until Ctrl-C"),
               interval: float = typer.Option(1.0, "--interval", min=0.1, help="seconds between redraws"),
               recent: str = typer.Option("10 minutes", "--recent", help="also show jobs that ended this recently"),
               as_json: bool = typer.Option(False, "--json", help="print the snapshot as JSON")) -> None:
        """Jobs with progress (done/total, rows/s, ETA), workers alive, backlog per column, errors."""
        from pgsight import status as st

        if watch:
            try:
                st.watch(_dsn(dsn), out, interval, recent)
            except RuntimeError as e:
                _fail(str(e))
            return
        with _connect(dsn) as conn:
            try:
                snap = st.snapshot(conn, recent)
            except RuntimeError as e:
                _fail(str(e))
        if as_json:
            print(json.dumps(snap.as_json(), default=str, indent=2))
        else:
            out.print(st.render(snap))

    @app.command()
    def show(query: str = typer.Argument(..., help="a SELECT whose rows hold images (paths, URLs or bytea)"),
             output: Path = typer.Option(Path("sheet.png"), "-o", "--output", help="where the PNG is written"),
             dsn: str | None = DsnOpt, image_root: list[Path] = RootOpt,
             image_col: str | None = typer.Option(None, "--image-col", help="default: image_path, else a "
                                                     "bytea column, else the first"),
             thumb: int = typer.Option(128, "--thumb", min=16, help="thumbnail size in pixels"),
             allow_urls: bool = typer.Option(False, "--allow-urls", help="fetch http(s) image URLs")) -> None:
        """Draw a query's images as a contact sheet with the other columns as captions (PRINT IMAGE)."""
        from pgsight import sheets

        roots = image_root or [Path.cwd()]
        with _connect(dsn) as conn:
            try:
                with console.status("reading images..."):
                    got = sheets.query_rows(conn, query, image_col)
                    image = sheets.contact_sheet(got.rows, got.columns, got.image_col,
                                                 sheets.ImageLoader(roots, allow_urls=allow_urls), thumb=thumb)
            except ValueError as e:
                _fail(str(e))
            except psycopg.Error as e:  # the server's message and hint
                _db_error(e)
        image.save(output)
        console.print(f"wrote {output} ({len(got.rows)} image(s) from column {got.image_col}, "
                      f"{image.width}x{image.height})")

    @app.command("load-images")
    def load_images_cmd(directory: Path = typer.Argument(..., help="a folder of images (or a .csv file)"),
                        table: str = typer.Option(..., "--table", "-t", help="table to create or append to"),
                        recursive: bool = typer.Option(False, "--recursive", "-r", help="read subfolders too"),
                        label_from_folder: bool = typer.Option(False, "--label-from-folder",
                                                               help="label = the first folder under DIRECTORY"),
                        relative_to: Path | None = typer.Option(None, "--relative-to", help="store paths "
                                                                   "relative to this (the worker's --image-root)"),
                        overwrite: bool = typer.Option(False, "--overwrite", help="drop the table first"),
                        dsn: str | None = DsnOpt) -> None:
        """Load a folder of images into a table (id, image_path[, label]) with COPY (ThanoSQL's COPY)."""
        from pgsight.load_images import LoadError, load_csv, load_images

        reporter = CliReporter(console)
        with _connect(dsn) as conn:
            try:
                if directory.is_file() and directory.suffix.lower() == ".csv":
                    res = load_csv(conn, directory, table, overwrite=overwrite, progress=reporter.load_progress)
                else:
                    res = load_images(conn, directory, table, recursive=recursive,
                                      label_from_folder=label_from_folder, relative_to=relative_to,
                                      overwrite=overwrite, progress=reporter.load_progress)
            except (LoadError, OSError) as e:
                reporter.close()
                _fail(str(e))
            except psycopg.Error as e:
                reporter.close()
                _db_error(e)
        reporter.close()
        console.print(f"{res.added} row(s) added to {res.table}" + (f", {res.skipped} already there" if res.skipped
                                                                     else ""))
        if relative_to is None and res.added:
            console.print(f"image_path holds absolute paths: run the worker with --image-root {directory.resolve()}")

    @app.command()
    def sql(text: str = typer.Argument(..., help="SQL and/or ThanoSQL statements ('-' reads stdin)"),
            dsn: str | None = DsnOpt, dry_run: bool = typer.Option(False, "--dry-run",
                                                                      help="print the translation, run nothing"),
            image_root: list[Path] = RootOpt,
            output: Path = typer.Option(Path("sheet.png"), "-o", "--output", help="PRINT IMAGE writes this PNG"),
            max_rows: int = typer.Option(50, "--max-rows", min=1, help="rows printed per result")) -> None:
        """Run SQL or ThanoSQL (GET THANOSQL MODEL, BUILD MODEL, CONVERT, SEARCH IMAGE, PREDICT, PRINT IMAGE,
        COPY); with --dry-run, print the ml.* SQL it translates to."""
        from pgsight import thanosql
        from pgsight.runner import Runner

        if text == "-":
            text = sys.stdin.read()
        try:
            translations = thanosql.translate_script(text)
        except thanosql.ThanoSQLError as e:
            _fail(str(e))
        if dry_run:
            print("\n\n".join(t.script() for t in translations))
            return
        reporter = CliReporter(console)
        sheets_written = 0
        with _connect(dsn) as conn:
            runner = Runner(conn, reporter, image_root or [Path.cwd()])
            for t in translations:
                try:
                    results = runner.run_translation(t)
                except (thanosql.ThanoSQLError, JobFailed, ValueError) as e:
                    reporter.close()
                    _fail(str(e))
                except KeyboardInterrupt:
                    reporter.close()
                    raise typer.Exit(130) from None
                except psycopg.Error as e:
                    reporter.close()
                    _db_error(e)
                for r in results:
                    if r.kind == "rows":
                        print_rows(r, max_rows)
                    elif r.kind == "sheet":
                        sheets_written += 1
                        path = output if sheets_written == 1 else output.with_stem(f"{output.stem}-{sheets_written}")
                        r.image.save(path)
                        console.print(f"wrote {path}: {r.message}")
                    else:
                        console.print(Text(r.message), soft_wrap=True)
