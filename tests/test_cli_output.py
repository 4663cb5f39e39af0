"""Output for people and for scripts: full values when piped, --json/--csv, vectors elided unless asked,
`pgsight show` reading from the workers' roots and failing when nothing could be read, quiet mode,
model sources that fail fast offline, the notebook's single prefix, no progress bars in worker logs."""
from __future__ import annotations

import csv
import io
import json
import time

import psycopg
import pytest
from conftest import write_png
from typer.testing import CliRunner

from pgsight.cli import app

cli = CliRunner(env={"COLUMNS": "80"})   # CliRunner's stdout is not a terminal: what a pipe gets
LONG = "photos/" + "a-very-long-folder-name/" * 8 + "IMG_0001.jpg"


def test_piped_rows_are_whole_vectors_elided_csv_and_json(dsn):
    query = f"SELECT 1 AS id, '{LONG}' AS image_path, '[0.5,0.25,1,2,3,4,5,6]'::vector AS emb"
    res = cli.invoke(app, ["sql", "--dsn", dsn, query])
    assert res.exit_code == 0, res.output
    assert LONG in res.stdout and "<vector 8>" in res.stdout and "0.25" not in res.stdout
    assert res.stderr.startswith(f"database: {dsn} (--dsn)")

    res = cli.invoke(app, ["sql", "--dsn", dsn, "--csv", query])
    assert res.exit_code == 0, res.output
    assert list(csv.reader(io.StringIO(res.stdout))) == [["id", "image_path", "emb"], ["1", LONG, "<vector 8>"]]
    res = cli.invoke(app, ["sql", "--dsn", dsn, "--json", "--vectors", query])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == [{"id": 1, "image_path": LONG, "emb": [0.5, 0.25, 1, 2, 3, 4, 5, 6]}]
    assert res.stderr == ""  # --json: no target line, no row count
    res = cli.invoke(app, ["sql", "--dsn", dsn, "-q", query])
    assert res.exit_code == 0 and res.stderr == "" and LONG in res.stdout


def test_piped_status_is_not_cut(dsn):
    with psycopg.connect(dsn, autocommit=True) as conn:
        table = "a_table_with_a_rather_long_name_for_status"
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, image_path text)")
        conn.execute(f"INSERT INTO {table} VALUES (1, 'x.png')")
        conn.execute("SELECT ml.load_model('px', 'pixels', NULL, '{\"size\": 8}')")
        conn.execute(f"SELECT ml.create_embedding('{table}', 'px', 'image_path', 'a_long_result_column_name')")
    res = cli.invoke(app, ["status", "--dsn", dsn])
    assert res.exit_code == 0, res.output
    assert "…" not in res.stdout and "target" in res.stdout
    assert f"{table}.a_long_result_column_name" in res.stdout
    assert "no worker is alive and 1 row(s)" in res.stdout
    quiet = cli.invoke(app, ["status", "--dsn", dsn, "--quiet"])
    assert "no worker is alive" not in quiet.stdout and quiet.stderr == ""


def test_show_reads_from_the_live_workers_roots_and_fails_when_nothing_is_readable(dsn, tmp_path, monkeypatch):
    root = tmp_path / "root"
    root.mkdir()
    for i in range(3):
        write_png(root / f"{i}.png", seed=i)
    monkeypatch.chdir(tmp_path)  # the default `.` would find nothing
    out = tmp_path / "sheet.png"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE pics (id int, image_path text)")
        conn.execute("INSERT INTO pics VALUES (0, '0.png'), (1, '1.png'), (2, '2.png'), (3, 'gone.png')")
        res = cli.invoke(app, ["show", "SELECT image_path FROM pics ORDER BY id", "--dsn", dsn, "-o", str(out)])
        assert res.exit_code == 1 and not out.exists()  # no worker: roots = ., where none of them is
        assert f"image roots: {tmp_path} (no live worker reports any; --image-root to choose)" in res.stderr
        assert ("error: none of the 4 image(s) in column image_path could be read (first: " in res.stderr
                and f"searched under {tmp_path}: give the directory they are under with --image-root" in res.stderr)

        wid = conn.execute("SELECT ml_internal.worker_register('elsewhere', 1, 'cpu', %s)",
                           (json.dumps({"roots": [str(root)]}),)).fetchone()[0]
        try:
            res = cli.invoke(app, ["show", "SELECT image_path FROM pics ORDER BY id", "--dsn", dsn, "-o", str(out)])
        finally:
            conn.execute("SELECT ml_internal.worker_unregister(%s)", (wid,))
    assert res.exit_code == 0, res.output
    assert f"image roots: {root} (from the live workers; --image-root to choose)" in res.stderr
    assert f"wrote {out} (4 image(s)" in res.stderr and out.exists()
    assert "warning: 1 of 4 image(s) could not be read" in res.stderr
    res = cli.invoke(app, ["show", "SELECT image_path FROM pics WHERE id < 3", "--dsn", dsn, "-o", str(out),
                           "--image-root", str(root), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["unreadable"] == 0


def test_model_sources_fail_fast_offline_with_the_local_directory_hint(monkeypatch, tmp_path):
    from pgsight.worker import sources
    from pgsight.worker.registry import ModelCache, ModelLoadError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))  # nothing cached
    cache = ModelCache("cpu", tmp_path / "models")
    t0 = time.monotonic()
    with pytest.raises(ModelLoadError) as err:
        cache.from_source("clip", "openai/clip-vit-base-patch32", {})
    assert time.monotonic() - t0 < 2
    assert str(err.value) == (
        "cannot load clip model from 'openai/clip-vit-base-patch32': 'openai/clip-vit-base-patch32' is not a local "
        "directory and not in the hub cache, and the Hugging Face hub is not reachable from this worker "
        "(HF_HUB_OFFLINE is set): download the checkpoint where the hub is reachable (`hf download ID --local-dir "
        "DIR`) and give its directory: ml.load_model('name', 'kind', '/path/to/checkpoint')")

    # relative directories: against the worker's working directory, and the error names the path tried
    (tmp_path / "ckpt").mkdir()
    monkeypatch.chdir(tmp_path)
    assert sources.resolve("clip", "./ckpt") == str(tmp_path / "ckpt")
    assert sources.resolve("clip", "ckpt") == str(tmp_path / "ckpt")  # an existing directory
    with pytest.raises(sources.SourceError, match=f"model directory {tmp_path / 'nope'} does not exist on this "
                       f"worker .*relative paths are resolved against the worker's working directory {tmp_path}"):
        sources.resolve("clip", "./nope")
    assert sources.resolve("pixels", None) is None


def test_unreachable_hub_is_detected_without_hf_hub_offline(monkeypatch):
    from pgsight.worker import sources

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    sources._probe.clear()
    t0 = time.monotonic()
    reason = sources.offline_reason()
    assert reason is not None and reason.startswith("127.0.0.1:9 cannot be reached") and time.monotonic() - t0 < 4


def test_notebook_messages_have_one_prefix():
    from pgsight.notebook.magic import prefixed

    assert prefixed("pgsight: model 'x' is not registered") == "pgsight: model 'x' is not registered"
    assert prefixed("model 'x'") == "pgsight: model 'x'"


def test_worker_logs_have_no_progress_bars(monkeypatch):
    from pgsight.worker.logs import quiet_libraries
    from transformers.utils import logging as hf_logging

    for var in ("HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_DISABLE", "TRANSFORMERS_VERBOSITY"):
        monkeypatch.delenv(var, raising=False)
    hf_logging.enable_progress_bar()
    try:
        quiet_libraries()
        assert not hf_logging.is_progress_bar_enabled()
        import os

        assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    finally:
        hf_logging.enable_progress_bar()
