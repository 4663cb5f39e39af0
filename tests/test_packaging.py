"""The Python side's shape: what users import keeps working, production code never imports the test
helpers, every package ships, and a job is submitted one way (committed with its NOTIFY)."""
from __future__ import annotations

import ast
from importlib.metadata import entry_points
from pathlib import Path

import psycopg
import pytest

from pgsight.tools.jobs import JobFailed, run_job, submit_job, wait_job

ROOT = Path(__file__).resolve().parents[1]
PRODUCTION = ("pgsight", "worker", "db")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_no_production_module_imports_the_test_helpers():
    offenders = [str(p.relative_to(ROOT)) for top in PRODUCTION for p in sorted((ROOT / top).rglob("*.py"))
                 if p != ROOT / "pgsight" / "testing.py"
                 and any(n == "pgsight.testing" or n.startswith("pgsight.testing.") for n in _imports(p))]
    assert offenders == []


#: the only modules at the top of pgsight/: the package, the test helpers, and the old names of moved
#: modules kept for existing imports (each a re-export)
TOP_LEVEL = {"__init__.py", "testing.py", "magic.py", "sheets.py", "runner.py", "alembic_ops.py"}


def test_pgsight_is_grouped_by_what_it_serves():
    loose = sorted(p.name for p in (ROOT / "pgsight").glob("*.py"))
    assert set(loose) <= TOP_LEVEL, ("put new modules in the package they serve: cli/, thanosql/, notebook/, "
                                     "tools/ or demos/", sorted(set(loose) - TOP_LEVEL))


def test_jobs_are_submitted_and_waited_for_in_one_place():
    """pgsight/tools/jobs.py submits (committed with its NOTIFY) and waits (with progress); nothing
    else in pgsight/ calls ml.wait."""
    callers = []
    for path in sorted((ROOT / "pgsight").rglob("*.py")):
        if path == ROOT / "pgsight" / "tools" / "jobs.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "SELECT ml.wait(" in node.value:
                callers.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert callers == [], "use pgsight.tools.jobs.run_job (or submit_job + wait_job)"


def test_every_package_directory_is_installed():
    tomllib = pytest.importorskip("tomllib")
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = cfg["package-dir"]
    listed = set(cfg["packages"])

    def directory(package: str) -> Path:  # the longest mapped prefix decides
        for prefix in sorted(dirs, key=len, reverse=True):
            if package == prefix or package.startswith(prefix + "."):
                return ROOT / dirs[prefix] / Path(*package[len(prefix):].split(".")[1:])
        raise AssertionError(f"{package} has no package-dir")

    missing = []
    for package in sorted(listed):
        for init in directory(package).rglob("__init__.py"):
            sub = init.parent.relative_to(directory(package))
            name = ".".join([package, *sub.parts])
            if "__pycache__" not in sub.parts and name not in listed:
                missing.append(name)
    assert missing == [], "add them to [tool.setuptools] packages in pyproject.toml"


def test_the_console_script_and_the_documented_imports_work():
    import typer
    from alembic.operations import Operations

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "pgsight"]
    assert isinstance(script.load(), typer.Typer)

    import pgsight
    import pgsight.alembic_ops  # noqa: F401  (the old path registers the operations too)
    from pgsight import runner, sheets, thanosql
    from pgsight.notebook.magic import PgsightMagics
    from pgsight.thanosql.runner import Runner
    from pgsight.tools import sheets as tool_sheets

    assert hasattr(Operations, "create_embedding") and hasattr(Operations, "drop_prediction")
    assert runner.Runner is Runner and sheets.sheet is tool_sheets.sheet
    assert thanosql.translate("PRINT IMAGE AS SELECT image_path FROM t").kind == "PRINT IMAGE"

    class Shell:
        registered: list[type] = []

        def register_magics(self, magics: type) -> None:
            self.registered.append(magics)

    shell = Shell()
    pgsight.load_ipython_extension(shell)  # %load_ext pgsight
    from pgsight import magic

    magic.load_ipython_extension(shell)    # %load_ext pgsight.magic, in older notebooks
    assert shell.registered == [PgsightMagics, PgsightMagics]


def test_cli_help_lists_every_command():
    from typer.testing import CliRunner

    from pgsight.cli import app

    out = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["--help"]).stdout
    for name in ("server", "migrate", "worker", "up", "status", "show", "load-images", "sql", "demo", "psql", "doctor"):
        assert f" {name} " in out, name


@pytest.fixture
def pics(dsn: str, image_dir: Path) -> str:
    from conftest import write_png

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE pics (id int PRIMARY KEY, image_path text)")
        for i in range(3):
            write_png(image_dir / f"{i}.png", i)
            conn.execute("INSERT INTO pics VALUES (%s, %s)", (i, f"{i}.png"))
        conn.execute("SELECT ml.load_model('px', 'pixels', NULL, '{\"size\": 4}')")
    return "pics"


def test_a_job_is_submitted_in_its_own_transaction_with_its_notify(dsn, pics):
    query = "SELECT image_path FROM pics"
    with psycopg.connect(dsn) as conn, psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN ml_work")
        conn.execute("SELECT 1")  # a transaction is open: the job would not be visible to anyone
        with pytest.raises(JobFailed, match="in a transaction of its own"):
            submit_job(conn, "ml.build_model('m', 'simclr', %s)", (query,))
        conn.rollback()
        job_id = submit_job(conn, "ml.build_model('m', 'simclr', %s)", (query,))
        heard = [n.payload for n in listener.notifies(timeout=5, stop_after=1)]
        assert heard == ["job"]  # the worker hears of it at once, not at its next poll
        status, rows = conn.execute("SELECT status, params->'rows' FROM ml.jobs WHERE id = %s", (job_id,)).fetchone()
        conn.commit()
        assert (status, rows) == ("queued", 3)
        # no worker: waiting stops at the timeout, and run_job says so with where to look
        assert wait_job(conn, job_id, timeout=0.3).status == "queued"
        conn.rollback()
        with pytest.raises(JobFailed, match=r"BUILD: job \d+ queued\n  hint: SELECT \* FROM ml.jobs WHERE id"):
            run_job(conn, "ml.build_model('m2', 'simclr', %s)", (query,), label="BUILD", timeout=0.3)


def test_an_evaluation_job_notifies_from_its_own_commit(dsn, pics):
    with psycopg.connect(dsn, autocommit=True) as conn, psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN ml_work")
        with pytest.raises(psycopg.errors.RaiseException, match="still queued"):  # no worker to run it
            conn.execute("SELECT * FROM ml.evaluate_vqa('px', 'SELECT image_path FROM pics', '{\"timeout\": \"0.2 s\"}')")
        assert [n.payload for n in listener.notifies(timeout=5, stop_after=1)] == ["job"]

