"""The %pgsight magic's own behaviour: options, clear errors, results (the happy path runs in test_notebook)."""
from __future__ import annotations

import pytest
from IPython.core.error import UsageError

from pgsight.notebook.magic import PgsightMagics, ResultTable, parse_line


def test_parse_line_takes_leading_options_and_leaves_the_sql_as_written():
    opts, sql = parse_line('--dsn "host=/tmp dbname=x" --image-root=/data --image-root /more --dry-run '
                           "SELECT '--not an option', $$x$$")
    assert opts == {"dsn": "host=/tmp dbname=x", "image_root": ["/data", "/more"], "dry_run": True}
    assert sql == "SELECT '--not an option', $$x$$"
    assert parse_line("-- a comment\nSELECT 1") == ({"image_root": []}, "-- a comment\nSELECT 1")
    with pytest.raises(UsageError, match="unknown option --nope"):
        parse_line("--nope SELECT 1")
    with pytest.raises(UsageError, match="--dsn needs a value"):
        parse_line("--dsn")


def test_magic_runs_sql_and_reports_errors_with_their_hints(dsn, capsys):
    magic = PgsightMagics(shell=None)
    try:
        assert magic.pgsight(f'--dsn "{dsn}"') is None
        assert "connected to" in capsys.readouterr().out
        table = magic.pgsight("", "CREATE TABLE t (id int PRIMARY KEY, image_path text);\n"
                                  "INSERT INTO t VALUES (1, 'a.png'), (2, 'b.png');\nSELECT * FROM t ORDER BY id")
        assert [tuple(r) for r in (table.rows if isinstance(table, ResultTable) else table.itertuples(index=False))] \
            == [(1, "a.png"), (2, "b.png")]
        assert "INSERT 0 2" in capsys.readouterr().out

        assert magic.pgsight("--dry-run", "CONVERT USING m AS SELECT * FROM t") is None
        assert "CALL ml.create_embedding_and_wait('t', 'm', 'image_path', 'convert_result', 'image'" in capsys.readouterr().out
        with pytest.raises(UsageError) as err:
            magic.pgsight("", "CONVERT USING m OPTIONS (image_col=) AS SELECT * FROM t")
        assert "expected a value" in str(err.value) and "hint: write it as CONVERT USING" in str(err.value)
        with pytest.raises(UsageError) as err:
            magic.pgsight("", "CONVERT USING nosuch AS SELECT * FROM t")
        assert "no model named 'nosuch'" in str(err.value)
        assert "hint: register it first: SELECT ml.load_model(name, kind, source)" in str(err.value)
        # the connection survives an error
        assert magic.pgsight("SELECT 41 + 1 AS answer").rows == [(42,)]
    finally:
        magic.close()


def test_magic_without_a_dsn_says_how_to_give_one(monkeypatch, tmp_path):
    monkeypatch.delenv("PGSIGHT_DSN", raising=False)
    monkeypatch.setenv("PGSIGHT_DATA_DIR", str(tmp_path / "none"))
    magic = PgsightMagics(shell=None)
    with pytest.raises(UsageError, match=r"no embedded server is running.*%pgsight --dsn"):
        magic.pgsight("SELECT 1")
    with pytest.raises(UsageError, match="cannot connect to"):
        magic.pgsight(f'--dsn "host={tmp_path} port=1 connect_timeout=2" SELECT 1')


def test_result_table_renders_as_text_and_html():
    t = ResultTable(["id", "label"], [(1, "<b>"), (22, None)])
    assert repr(t).splitlines() == ["id | label", "---+------", "1  | <b>  ", "22 | None ", "(2 rows)"]
    assert "<td>&lt;b&gt;</td>" in t._repr_html_() and len(t) == 2
