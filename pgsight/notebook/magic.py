"""The IPython magic: SQL and ThanoSQL in notebook cells, results inline.

    %load_ext pgsight
    %pgsight --dsn postgresql://... --image-root data/ --start-worker
    %%pgsight
    CONVERT USING px OPTIONS (image_col='image_path') AS SELECT * FROM digits

Rows come back as a pandas DataFrame when pandas is installed (else a small table that renders as
HTML), PRINT IMAGE as an inline contact sheet, jobs with a progress line. The last result is the
cell's value, so `df = %pgsight SELECT ...` works. Options (before the SQL on the magic's line):
--dsn, --image-root DIR (repeat), --dry-run (print the ml.* translation), --start-worker /
--stop-worker (a worker thread in this kernel, for trying things out; use `pgsight worker` for real).
"""
from __future__ import annotations

import atexit
import html
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psycopg
from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.display import Pretty, display

from pgsight import thanosql
from pgsight.thanosql.runner import Result, Runner
from pgsight.tools.jobs import JobFailed, Reporter

FLAGS = {"--dry-run", "--start-worker", "--stop-worker"}
VALUED = {"--dsn", "--image-root"}


class ResultTable:
    """Rows without pandas: an HTML table in Jupyter, aligned text elsewhere."""

    def __init__(self, columns: list[str], rows: list[tuple]) -> None:
        self.columns, self.rows = columns, rows

    def __len__(self) -> int:
        return len(self.rows)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>" for r in self.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def __repr__(self) -> str:
        cells = [[str(v) for v in r] for r in self.rows]
        widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(self.columns)]
        lines = [" | ".join(c.ljust(w) for c, w in zip(self.columns, widths)),
                 "-+-".join("-" * w for w in widths)]
        lines += [" | ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
        return "\n".join(lines + [f"({len(self.rows)} row{'s' if len(self.rows) != 1 else ''})"])


def prefixed(message: str) -> str:
    """One `pgsight: ` in front of a message (the database's own messages already carry it)."""
    return message if message.startswith("pgsight: ") else "pgsight: " + message


def as_table(result: Result) -> Any:
    try:
        import pandas as pd
    except ImportError:
        return ResultTable(result.columns, result.rows)
    return pd.DataFrame(result.rows, columns=result.columns)


class NotebookReporter(Reporter):
    """Job and load progress as one line that updates in place."""

    def __init__(self) -> None:
        self.handle = None
        self.last = 0.0

    def _show(self, text: str, force: bool = False) -> None:
        if self.handle is None:
            self.handle = display(Pretty(text), display_id=True)
        elif force or time.monotonic() - self.last > 0.25:
            self.handle.update(Pretty(text))
        self.last = time.monotonic()

    def info(self, message: str) -> None:
        print(message)

    def warn(self, message: str) -> None:
        print(prefixed(message))

    def job_started(self, job_id: int, label: str) -> None:
        self.handle, self.label = None, f"job {job_id} {label}"
        self._show(f"{self.label}: queued")

    def job_progress(self, job_id: int, status: str, done: int, total: int | None, info: dict[str, Any]) -> None:
        bar = ""
        if total:
            filled = int(30 * min(done, total) / total)
            bar = "[" + "#" * filled + "." * (30 - filled) + f"] {done}/{total} "
        extra = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())
        self._show(f"{self.label}: {bar}{status} {extra}".rstrip(), force=status in ("done", "failed", "cancelled"))

    def load_progress(self, phase: str, done: int, total: int | None) -> None:
        self._show(f"{phase}: {done}" + (f"/{total}" if total else ""), force=done == total)


def _word(text: str) -> tuple[str, str]:
    """The first word of text (a quoted one may hold spaces) and the rest."""
    text = text.lstrip()
    if text[:1] in ("'", '"'):
        close = text.find(text[0], 1)
        if close < 0:
            raise UsageError(f"unterminated quote in {text!r}")
        return text[1:close], text[close + 1:]
    cut = next((i for i, c in enumerate(text) if c.isspace()), len(text))
    return text[:cut], text[cut:]


def parse_line(line: str) -> tuple[dict[str, Any], str]:
    """Leading --options of the magic's line, and the SQL after them (left as written)."""
    opts: dict[str, Any] = {"image_root": []}
    rest = line.strip()
    while rest.startswith("--") and not rest.startswith("-- "):  # '-- ' starts an SQL comment
        word, rest = _word(rest)
        flag, _, value = word.partition("=")
        if flag in FLAGS:
            opts[flag[2:].replace("-", "_")] = True
        elif flag in VALUED:
            if not value:
                value, rest = _word(rest)
                if not value:
                    raise UsageError(f"{flag} needs a value")
            if flag == "--image-root":
                opts["image_root"].append(value)
            else:
                opts["dsn"] = value
        else:
            raise UsageError(f"unknown option {flag}; options: {', '.join(sorted(FLAGS | VALUED))}")
        rest = rest.strip()
    return opts, rest


@magics_class
class PgsightMagics(Magics):
    def __init__(self, shell) -> None:
        super().__init__(shell)
        self.dsn: str | None = None
        self.image_roots: list[Path] = []
        self.conn: psycopg.Connection | None = None
        self.workers = ExitStack()
        atexit.register(self.close)

    def close(self) -> None:
        self.workers.close()
        if self.conn is not None:
            self.conn.close()

    def _connection(self) -> psycopg.Connection:
        if self.conn is None or self.conn.closed or self.conn.broken:
            if self.dsn is None:
                from pgsight.db.dsn import resolve

                try:
                    self.dsn = resolve(None, start=False)
                except RuntimeError as e:
                    raise UsageError(f"pgsight: {e}; or give one: %pgsight --dsn postgresql://...") from None
            try:
                self.conn = psycopg.connect(self.dsn, autocommit=True)
            except psycopg.OperationalError as e:
                raise UsageError(f"pgsight: cannot connect to {self.dsn}: {str(e).strip()}") from None
        return self.conn

    @line_cell_magic
    def pgsight(self, line: str, cell: str | None = None) -> Any:
        opts, text = parse_line(line)
        if cell is not None:
            text = (text + "\n" + cell).strip()
        if opts.get("dsn") and opts["dsn"] != self.dsn:
            self.dsn = opts["dsn"]
            if self.conn is not None:
                self.conn.close()
                self.conn = None
        if opts["image_root"]:
            self.image_roots = [Path(r).expanduser().resolve() for r in opts["image_root"]]
        if opts.get("stop_worker"):
            self.workers.close()
            self.workers = ExitStack()
            print("pgsight: worker stopped")
        if opts.get("start_worker"):
            from pgsight.worker.inprocess import running_worker

            self._connection()
            assert self.dsn is not None  # _connection() found it
            self.workers.enter_context(running_worker(self.dsn, self.image_roots or [Path.cwd()]))
            print(f"pgsight: worker started in this kernel (image roots: "
                  f"{', '.join(map(str, self.image_roots or [Path.cwd()]))})")
        if not text:
            if opts.get("dsn"):
                self._connection()
                print(f"pgsight: connected to {self.dsn}")
            return None
        return self.run(text, dry_run=bool(opts.get("dry_run")))

    def run(self, text: str, dry_run: bool = False) -> Any:
        try:
            translations = thanosql.translate_script(text)
            if dry_run:
                print("\n\n".join(t.script() for t in translations))
                return None
            runner = Runner(self._connection(), NotebookReporter(), self.image_roots or [Path.cwd()])
            results: list[Result] = []
            for t in translations:
                results.extend(runner.run_translation(t))
        except (thanosql.ThanoSQLError, JobFailed, ValueError) as e:
            raise UsageError(prefixed(str(e))) from None
        except psycopg.Error as e:
            hint = e.diag.message_hint if e.diag is not None else None
            raise UsageError(prefixed(str((e.diag.message_primary if e.diag else None) or e))
                             + (f"\n  hint: {hint}" if hint else "")) from None
        shown = [self._value(r) for r in results]
        for value in shown[:-1]:
            if value is not None:
                display(value)
        return shown[-1] if shown else None

    @staticmethod
    def _value(result: Result) -> Any:
        if result.kind == "rows":
            return as_table(result)
        if result.kind == "sheet":
            return result.image
        print(result.message)
        return None


def load_ipython_extension(ipython) -> None:
    ipython.register_magics(PgsightMagics)
