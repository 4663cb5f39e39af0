"""The user's commands: `pgsight status`, `show`, `load-images` and `sql`."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import psycopg
import typer

from pgsight.cli import common
from pgsight.cli.app import DataDirOpt, DsnOpt, RootOpt, app
from pgsight.cli.common import command, emit, fail, info, state
from pgsight.cli.progress import reporter as make_reporter
from pgsight.tools.jobs import JobFailed


def worker_roots(conn: psycopg.Connection) -> list[Path]:
    """The image roots the live workers report (ml.workers), in order of first appearance."""
    try:
        rows = conn.execute("SELECT info -> 'roots' FROM ml.status_workers() WHERE alive ORDER BY id").fetchall()
    except psycopg.Error:
        return []
    roots: list[Path] = []
    for (value,) in rows:
        for r in value or []:
            if Path(r) not in roots:
                roots.append(Path(r))
    return roots


@app.command()
@command
def status(dsn: Optional[str] = DsnOpt, data_dir: Optional[Path] = DataDirOpt,
           watch: bool = typer.Option(False, "--watch", "-w", help="redraw until Ctrl-C"),
           interval: float = typer.Option(1.0, "--interval", min=0.1, help="seconds between redraws"),
           recent: str = typer.Option("10 minutes", "--recent", help="also show jobs that ended this recently"),
           as_json: bool = typer.Option(False, "--json", help="print the snapshot as JSON")) -> None:
    """Jobs with progress (done/total, rows/s, ETA), workers alive, backlog per column, errors."""
    from pgsight.cli import status as st

    if watch:
        t = common.target(dsn, data_dir)
        try:
            st.watch(t.dsn, common.out_console(), interval, recent)
        except RuntimeError as e:
            fail(str(e))
        return
    with common.connect(dsn, data_dir) as conn:
        try:
            snap = st.snapshot(conn, recent)
        except RuntimeError as e:
            fail(str(e))
    if as_json:
        emit(snap.as_json())
    else:
        common.out_console().print(st.render(snap, with_hints=not state.quiet))


@app.command()
@command
def show(query: str = typer.Argument(..., help="a SELECT whose rows hold images (paths, URLs or bytea)"),
         output: Path = typer.Option(Path("sheet.png"), "-o", "--output", help="where the PNG is written"),
         dsn: Optional[str] = DsnOpt, data_dir: Optional[Path] = DataDirOpt, image_root: list[Path] = RootOpt,
         image_col: Optional[str] = typer.Option(None, "--image-col", help="default: image_path, else a "
                                                 "bytea column, else the first"),
         thumb: int = typer.Option(128, "--thumb", min=16, help="thumbnail size in pixels"),
         allow_urls: bool = typer.Option(False, "--allow-urls", help="fetch http(s) image URLs")) -> None:
    """Draw a query's images as a contact sheet with the other columns as captions (PRINT IMAGE).
    Exits 1 when no image could be read."""
    from pgsight.tools import sheets

    with common.connect(dsn, data_dir) as conn:
        roots = list(image_root)
        if not roots:
            roots = worker_roots(conn)
            info(f"image roots: {', '.join(map(str, roots))} (from the live workers; --image-root to choose)"
                 if roots else f"image roots: {Path.cwd()} (no live worker reports any; --image-root to choose)")
            roots = roots or [Path.cwd()]
        failures: list[str] = []
        try:
            got = sheets.query_rows(conn, query, image_col)
            image = sheets.contact_sheet(got.rows, got.columns, got.image_col,
                                         sheets.ImageLoader(roots, allow_urls=allow_urls), thumb=thumb,
                                         failures=failures)
        except ValueError as e:
            fail(str(e))
    if failures and len(failures) == len(got.rows):
        fail(f"none of the {len(got.rows)} image(s) in column {got.image_col} could be read (first: {failures[0]}); "
             f"searched under {', '.join(map(str, roots))}: give the directory they are under with --image-root")
    image.save(output)
    if state.json:
        emit({"output": str(output), "images": len(got.rows), "unreadable": len(failures), "image_col": got.image_col,
              "width": image.width, "height": image.height})
    else:
        info(f"wrote {output} ({len(got.rows)} image(s) from column {got.image_col}, {image.width}x{image.height})")
        if failures:
            common.warn(f"{len(failures)} of {len(got.rows)} image(s) could not be read (first: {failures[0]}); "
                        "they are grey cells")


@app.command("load-images")
@command
def load_images_cmd(directory: Path = typer.Argument(..., help="a folder of images (or a .csv file)"),
                    table: str = typer.Option(..., "--table", "-t", help="table to create or append to"),
                    recursive: bool = typer.Option(False, "--recursive", "-r", help="read subfolders too"),
                    label_from_folder: bool = typer.Option(False, "--label-from-folder",
                                                           help="label = the first folder under DIRECTORY"),
                    relative_to: Optional[Path] = typer.Option(None, "--relative-to", help="store paths "
                                                               "relative to this (the worker's --image-root)"),
                    overwrite: bool = typer.Option(False, "--overwrite", help="drop the table first"),
                    dsn: Optional[str] = DsnOpt, data_dir: Optional[Path] = DataDirOpt) -> None:
    """Load a folder of images into a table (id, image_path[, label]) with COPY (ThanoSQL's COPY)."""
    from pgsight.tools.load_images import LoadError, load_csv, load_images

    reporter = make_reporter()
    with common.connect(dsn, data_dir) as conn:
        try:
            if directory.is_file() and directory.suffix.lower() == ".csv":
                res = load_csv(conn, directory, table, overwrite=overwrite, progress=reporter.load_progress)
            else:
                res = load_images(conn, directory, table, recursive=recursive,
                                  label_from_folder=label_from_folder, relative_to=relative_to,
                                  overwrite=overwrite, progress=reporter.load_progress)
        except (LoadError, OSError) as e:
            reporter.close()
            fail(str(e))
        except psycopg.Error as e:
            reporter.close()
            fail(common.db_message(e))
    reporter.close()
    if state.json:
        emit({"table": res.table, "added": res.added, "skipped": res.skipped})
        return
    info(f"{res.added} row(s) added to {res.table}" + (f", {res.skipped} already there" if res.skipped else ""))
    if relative_to is None and res.added:
        info(f"image_path holds absolute paths: run the worker with --image-root {directory.resolve()}")


@app.command()
@command
def sql(text: str = typer.Argument(..., help="SQL and/or ThanoSQL statements ('-' reads stdin)"),
        dsn: Optional[str] = DsnOpt, data_dir: Optional[Path] = DataDirOpt,
        dry_run: bool = typer.Option(False, "--dry-run", help="print the translation, run nothing"),
        image_root: list[Path] = RootOpt,
        output: Path = typer.Option(Path("sheet.png"), "-o", "--output", help="PRINT IMAGE writes this PNG"),
        max_rows: int = typer.Option(50, "--max-rows", min=1, help="rows printed per result"),
        csv_out: bool = typer.Option(False, "--csv", help="rows as CSV (header line first)"),
        vectors: bool = typer.Option(False, "--vectors", help="print vector values (default: <vector N>)")) -> None:
    """Run SQL or ThanoSQL (GET THANOSQL MODEL, BUILD MODEL, CONVERT, SEARCH IMAGE, PREDICT, PRINT IMAGE,
    COPY); with --dry-run, print the ml.* SQL it translates to. --json / --csv: rows for scripts."""
    from pgsight import thanosql
    from pgsight.cli import tables
    from pgsight.thanosql.runner import Runner

    fmt = "json" if state.json else "csv" if csv_out else "table"
    if text == "-":
        text = sys.stdin.read()
    try:
        translations = thanosql.translate_script(text)
    except thanosql.ThanoSQLError as e:
        fail(str(e))
    if dry_run:
        print("\n\n".join(t.script() for t in translations))
        return
    reporter = make_reporter()
    sheets_written = 0
    with common.connect(dsn, data_dir) as conn:
        try:
            from pgvector.psycopg import register_vector

            register_vector(conn)  # vectors arrive as vectors, so they can be elided
        except (psycopg.ProgrammingError, ImportError):
            pass  # no vector extension in this database
        roots = list(image_root) or worker_roots(conn) or [Path.cwd()]
        runner = Runner(conn, reporter, roots)
        for t in translations:
            try:
                results = runner.run_translation(t)
            except (thanosql.ThanoSQLError, JobFailed, ValueError) as e:
                reporter.close()
                fail(str(e))
            except KeyboardInterrupt:
                reporter.close()
                raise typer.Exit(130) from None
            except psycopg.Error as e:
                reporter.close()
                fail(common.db_message(e))
            for r in results:
                if r.kind == "rows":
                    tables.print_rows(r.columns, r.rows, max_rows, fmt, vectors)
                elif r.kind == "sheet" and r.image is not None:
                    sheets_written += 1
                    path = output if sheets_written == 1 else output.with_stem(f"{output.stem}-{sheets_written}")
                    r.image.save(path)
                    info(f"wrote {path}: {r.message}")
                else:
                    info(r.message)
