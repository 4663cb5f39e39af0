"""What every `pgsight` command shares.

- `--quiet` / `-q`: only errors and the command's result (no target line, no progress, no hints).
- `--json`: the result as JSON on stdout; an error as one JSON object on stderr.
- Messages go to stderr, one line each (never wrapped); results go to stdout.
- An expected failure (no server, wrong DSN, bad input) is one `error: ...` line saying what to do,
  exit status 1; never a traceback.
- A command that connects names its target on stderr first: `database: DSN (how it was chosen)`.
"""
from __future__ import annotations

import functools
import inspect
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text

if TYPE_CHECKING:
    import psycopg

    from pgsight.db.dsn import Target
    from pgsight.db.embedded import EmbeddedServer


class State:
    quiet = False
    json = False


state = State()


def err_console() -> Console:
    return Console(stderr=True, soft_wrap=True, highlight=False)


def out_console() -> Console:
    """stdout; when it is not a terminal nothing is cut to a width (pipes and files get full values)."""
    tty = sys.stdout.isatty()
    return Console(soft_wrap=True, highlight=False, width=None if tty else 100_000, force_terminal=None if tty else False)


def info(message: str, style: str = "") -> None:
    """A progress or context line on stderr (not with --quiet or --json)."""
    if not (state.quiet or state.json):
        err_console().print(Text(message, style=style))


def warn(message: str) -> None:
    if not state.json:
        err_console().print(Text.assemble(("warning: ", "yellow"), message))


def fail(message: str, code: int = 1) -> NoReturn:
    """One clear error (what is wrong, then what to do) and exit `code`."""
    if state.json:
        print(json.dumps({"error": message}), file=sys.stderr)
    else:
        err_console().print(Text.assemble(("error: ", "red"), message))  # Text: messages may hold [..]
    raise typer.Exit(code)


def emit(obj: Any) -> None:
    """The command's result as JSON on stdout."""
    print(json.dumps(obj, default=str, indent=2, ensure_ascii=False))


def db_message(e: BaseException) -> str:
    """A database error as the user should read it: the message, then PostgreSQL's hint."""
    import psycopg

    if isinstance(e, psycopg.Error) and e.diag is not None and e.diag.message_primary:
        hint = e.diag.message_hint
        return e.diag.message_primary + (f"\n  hint: {hint}" if hint else "")
    return str(e).strip()


def connect_message(target_dsn: str, e: BaseException) -> str:
    """Why a connection failed and what to do, in one line (the worker says the same)."""
    from pgsight.worker.startup import explain

    return explain(e, target_dsn)


_QUIET = inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                           default=typer.Option(False, "--quiet", "-q", help="only errors and the result"))
_JSON = inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                          default=typer.Option(False, "--json", help="the result as JSON on stdout"))


def command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command the shared `--quiet`/`--json` options and turn expected failures into one line."""
    sig = inspect.signature(fn)
    has_json = "as_json" in sig.parameters
    extra = [_QUIET] + ([] if has_json else [_JSON])

    @functools.wraps(fn)
    def wrapper(*args: Any, quiet: bool = False, as_json: bool = False, **kw: Any) -> Any:
        import psycopg

        from pgsight.db.dsn import TargetError

        state.quiet, state.json = quiet, as_json
        if has_json:
            kw["as_json"] = as_json
        try:
            return fn(*args, **kw)
        except TargetError as e:
            fail(str(e))
        except psycopg.Error as e:
            fail(db_message(e))

    params = [p for p in sig.parameters.values()] + [p for p in extra if p.name not in sig.parameters]
    wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]  # read by inspect/typer
    wrapper.__annotations__ = {**fn.__annotations__, "quiet": bool, "as_json": bool}
    return wrapper


def target(dsn: str | None, data_dir: Path | None, start: bool = False, dbname: str = "postgres") -> Target:
    """Pick the database (pgsight.db.dsn.find) and name it on stderr."""
    from pgsight.db.dsn import find

    t = find(dsn, data_dir, start=start, dbname=dbname)
    info(f"database: {t.describe()}", style="dim")
    return t


def connect(dsn: str | None, data_dir: Path | None = None) -> psycopg.Connection:
    """An autocommit connection to the chosen database, named on stderr."""
    import psycopg

    t = target(dsn, data_dir)
    try:
        return psycopg.connect(t.dsn, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as e:
        fail(connect_message(t.dsn, e))


def embedded_server(data_dir: Path | None) -> EmbeddedServer:
    from pgsight.db.embedded import EmbeddedServer

    return EmbeddedServer(data_dir) if data_dir else EmbeddedServer()


def start_server(server: EmbeddedServer) -> str:
    """Start the embedded server (a clean line when it cannot) and remember it for `pgsight server list`."""
    from pgsight.db.embedded import remember

    try:
        if not state.quiet and not state.json and sys.stderr.isatty():
            with err_console().status("starting PostgreSQL..."):
                dsn = server.start()
        else:
            dsn = server.start()
    except (RuntimeError, OSError) as e:
        fail(f"the embedded server in {server.data_dir} did not start: {str(e).strip().splitlines()[0]}; "
             f"its log: {server.log_file}")
    remember(server)
    return dsn
