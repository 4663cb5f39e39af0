"""The user's side against a real database: status, contact sheets, load-images, ThanoSQL run end to end."""
from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import psycopg
import pytest
from conftest import write_png
from pgsight.worker.images import ImageLoader
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from pgsight.cli import app, status
from pgsight.testing import running_worker
from pgsight.thanosql import translate
from pgsight.thanosql.runner import Runner
from pgsight.tools import jobs, sheets
from pgsight.tools.load_images import LoadError, load_csv, load_images

cli = CliRunner(env={"COLUMNS": "160"})


def solid(path: Path, color: tuple[int, int, int], size: int = 16) -> Path:
    Image.new("RGB", (size, size), color).save(path)
    return path


@pytest.fixture
def photos(dsn, image_dir):
    for i in range(12):
        write_png(image_dir / f"img{i}.png", seed=i)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE photos (id bigint PRIMARY KEY, image_path text, caption text)")
        conn.execute("INSERT INTO photos SELECT i, 'img' || i || '.png', 'photo ' || i FROM generate_series(0, 11) i")
        conn.execute("SELECT ml.load_model('px', 'pixels', NULL, '{\"size\": 8}')")
    return image_dir


def test_status_shows_backlog_jobs_workers_and_errors(dsn, photos):
    with psycopg.connect(dsn, autocommit=True) as conn:
        job = conn.execute("SELECT ml.create_embedding('photos', 'px', 'image_path')").fetchone()[0]
        conn.execute("INSERT INTO photos VALUES (99, 'missing.png', 'gone')")  # trigger path, will fail
        time.sleep(0.05)
        snap = status.snapshot(conn)
        [b] = snap.backlog
        assert (b["table_name"], b["result_col"], b["pending"], b["in_flight"], b["errors"]) == \
            ("public.photos", "embedding", 13, 0, 0)
        assert b["oldest_pending"].total_seconds() >= 0.05
        [j] = snap.jobs
        assert (j["id"], j["status"], j["done"], j["total"], j["eta"]) == (job, "queued", 0, 12, None)
        assert snap.workers == []
        assert any("no worker is alive and 13 row(s)" in h for h in status.hints(snap))

        with running_worker(dsn, [photos]):
            assert conn.execute("SELECT ml.wait(%s, '30 seconds')", (job,)).fetchone()[0] == "done"
            deadline = time.monotonic() + 20
            while conn.execute("SELECT count(*) FROM ml.queue").fetchone()[0] and time.monotonic() < deadline:
                time.sleep(0.05)
            snap = status.snapshot(conn)
            [w] = snap.workers
            assert w["alive"] and w["heartbeat_age"].total_seconds() < 5
        [j] = snap.jobs
        assert (j["status"], j["done"], j["total"], j["failed"]) == ("done", 12, 12, 0)
        assert j["rows_per_s"] > 0 and j["elapsed"].total_seconds() > 0
        [b] = snap.backlog
        assert (b["pending"], b["in_flight"], b["oldest_pending"], b["errors"]) == (0, 0, None, 1)
        [e] = snap.errors
        assert (e["table_name"], e["column_name"], e["errors"]) == ("public.photos", "embedding", 1)
        assert "file not found: missing.png" in e["last_error"]

    buf = io.StringIO()
    status.watch(dsn, Console(file=buf, width=160), interval=0.05, iterations=2)
    assert buf.getvalue().count("public.photos.embedding") >= 2  # drawn twice
    res = cli.invoke(app, ["status", "--dsn", dsn, "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["jobs"][0]["done"] == 12 and data["backlog"][0]["errors"] == 1
    res = cli.invoke(app, ["status", "--dsn", dsn])
    assert res.exit_code == 0, res.output
    for text in ("jobs", "backfill", "12/12", "photos.embedding", "per-row errors", "file not found: missing.png",
                 "workers: none registered"):
        assert text in res.stdout


def test_status_explains_a_database_without_pgsight(pgsight_server):
    with pgsight_server.database() as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("DROP SCHEMA ml CASCADE")
        res = cli.invoke(app, ["status", "--dsn", dsn])
        assert res.exit_code == 1
        assert "pgsight migrate" in res.stderr


def test_contact_sheet_draws_images_captions_and_failures(dsn, image_dir):
    solid(image_dir / "red.png", (255, 0, 0))
    solid(image_dir / "blue.png", (0, 0, 255), size=40)
    (image_dir / "broken.png").write_bytes(b"not a png")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE pics (id int PRIMARY KEY, image_path text, label text, raw bytea)")
        conn.execute("INSERT INTO pics VALUES (1, 'red.png', 'r', NULL), (2, 'blue.png', 'b', NULL), "
                     "(3, 'broken.png', 'x', NULL), (4, 'nowhere.png', 'y', NULL)")
        got = sheets.query_rows(conn, "SELECT image_path, label FROM pics ORDER BY id")
    img = sheets.contact_sheet(got.rows, got.columns, got.image_col, ImageLoader([image_dir]), thumb=64, ncols=4)
    cell_w = 64 + 12
    assert img.size == (4 * cell_w, 64 + 12 + (img.height - 64 - 12))
    arr = np.asarray(img)
    assert tuple(arr[6 + 32, 6 + 32]) == (255, 0, 0)                 # red, scaled up from 16 px
    assert tuple(arr[6 + 32, cell_w + 6 + 32]) == (0, 0, 255)        # blue, scaled from 40 px
    assert tuple(arr[6 + 60, 2 * cell_w + 6 + 60]) == sheets.MISSING  # corrupt: grey cell
    assert tuple(arr[6 + 60, 3 * cell_w + 6 + 60]) == sheets.MISSING  # missing file: grey cell
    # captions are drawn under the images (dark pixels in the caption band)
    assert (arr[6 + 64:, :cell_w] < 100).any()

    out = image_dir.parent / "sheet.png"
    res = cli.invoke(app, ["show", "SELECT image_path, label FROM pics ORDER BY id", "-o", str(out),
                           "--dsn", dsn, "--image-root", str(image_dir)])
    assert res.exit_code == 0, res.output
    assert "4 image(s) from column image_path" in res.stderr
    with Image.open(out) as written:
        assert written.width == 2 * (128 + 12)  # 4 images: 2 x 2 of 128-pixel thumbnails
    res = cli.invoke(app, ["show", "SELECT label FROM pics", "--image-col", "image_path", "--dsn", dsn])
    assert res.exit_code == 1 and "returns no column 'image_path'" in res.stderr
    res = cli.invoke(app, ["show", "SELECT nope FROM pics", "--dsn", dsn, "-o", str(out)])
    assert res.exit_code == 1 and 'column "nope" does not exist' in res.stderr


def test_load_images_creates_appends_and_feeds_existing_columns(dsn, tmp_path):
    root = tmp_path / "pets"
    for label, seeds in (("cat", (1, 2)), ("dog", (3,))):
        (root / label).mkdir(parents=True)
        for s in seeds:
            write_png(root / label / f"{s}.png", seed=s)
    (root / "notes.txt").write_text("not an image")
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(LoadError, match="add --recursive"):
            load_images(conn, root, "pets")
        seen = []
        res = load_images(conn, root, "pets", label_from_folder=True, progress=lambda *a: seen.append(a))
        assert (res.found, res.added, res.skipped) == (3, 3, 0)
        assert ("copy", 3, 3) in seen
        rows = conn.execute("SELECT id, image_path, label FROM pets ORDER BY id").fetchall()
        assert [(r[1].split("/")[-2:], r[2]) for r in rows] == [(["cat", "1.png"], "cat"), (["cat", "2.png"], "cat"),
                                                                  (["dog", "3.png"], "dog")]
        # a pgsight column on the table: appended rows are queued for it by the trigger
        conn.execute("SELECT ml.load_model('px', 'pixels', NULL, '{\"size\": 4}')")
        with running_worker(dsn, [root]):
            conn.execute("CALL ml.create_embedding_and_wait('pets', 'px', 'image_path')")
        write_png(root / "dog" / "4.png", seed=4)
        res = load_images(conn, root, "pets", label_from_folder=True)
        assert (res.added, res.skipped) == (1, 3)
        assert conn.execute("SELECT count(*) FROM ml.queue").fetchone()[0] == 1
        # overwrite drops the table and its pgsight column
        res = load_images(conn, root, "pets", recursive=True, overwrite=True, relative_to=root)
        assert res.added == 4
        assert conn.execute("SELECT count(*) FROM ml.tasks").fetchone()[0] == 0
        assert conn.execute("SELECT image_path FROM pets ORDER BY id LIMIT 1").fetchone()[0] == "cat/1.png"

        csv = tmp_path / "coco.csv"
        csv.write_text("image_path,category\ncat/1.png,person\n\"dog/3.png\",\"a, b\"\n")
        res = load_csv(conn, csv, "coco")
        assert res.added == 2
        assert conn.execute("SELECT id, image_path, category FROM coco ORDER BY id").fetchall() == \
            [(1, "cat/1.png", "person"), (2, "dog/3.png", "a, b")]

    res = cli.invoke(app, ["load-images", str(root), "--table", "pets2", "-r", "--dsn", dsn])
    assert res.exit_code == 0, res.output
    assert "4 row(s) added to pets2" in res.stderr and "--image-root" in res.stderr
    res = cli.invoke(app, ["load-images", str(tmp_path / "nope"), "--table", "x", "--dsn", dsn])
    assert res.exit_code == 1 and "does not exist" in res.stderr


def test_thanosql_runs_end_to_end_with_the_pixels_model(dsn, photos):
    with psycopg.connect(dsn) as conn, running_worker(dsn, [photos]):
        runner = Runner(conn, image_roots=[photos])
        [r] = runner.run("GET THANOSQL MODEL pixels OPTIONS (size=8) AS px8")
        assert r.kind == "rows" and r.rows == [("px8",)]
        [r] = runner.run("CONVERT USING px8 OPTIONS (image_col='image_path', result_col='convert_result') "
                         "AS SELECT * FROM photos")
        assert r.message.endswith("photos.convert_result, 12 of 12 rows computed")
        search = ("SEARCH IMAGE USING px8 OPTIONS (search_by='image', search_input='img3.png', "
                  "emb_col='convert_result', top_k=3) AS SELECT id, caption FROM photos")
        [r] = runner.run(search)
        assert r.columns == ["id", "caption", "search_result"]
        assert r.rows[0][:2] == (3, "photo 3") and r.rows[0][2] < 1e-6 and len(r.rows) == 3
        # the translated search is the index path
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(row[0] for row in conn.execute("EXPLAIN " + translate(search).steps[0].sql))
        assert "photos_convert_result_hnsw" in plan, plan
        conn.execute("RESET enable_seqscan")

        [r] = runner.run("PRINT IMAGE AS SELECT image_path, caption FROM photos ORDER BY id LIMIT 4")
        assert r.kind == "sheet" and r.image.width > 0 and len(r.rows) == 4
        # plain SQL in the same script, and the result of a job step that failed rows
        conn.execute("INSERT INTO photos VALUES (50, 'gone.png', 'x')")
        results = runner.run("SELECT count(*) FROM photos; CONVERT USING px8 OPTIONS (result_col='c2') "
                             "AS SELECT * FROM photos")
        assert results[0].rows == [(13,)]
        assert "12 of 13 rows computed; 1 failed: SELECT * FROM ml.errors WHERE job_id" in results[1].message
        # errors from the database keep their hint
        with pytest.raises(psycopg.errors.RaiseException) as err:
            runner.run("PREDICT USING px8 OPTIONS (question='how many?') AS SELECT image_path FROM photos")
        assert "makes embeddings and answers no questions" in str(err.value)
        assert err.value.diag.message_hint == "use ml.create_embedding"


def test_sql_command_dry_run_run_and_errors(dsn, photos, tmp_path):
    res = cli.invoke(app, ["sql", "--dry-run", "CONVERT USING px AS SELECT * FROM photos; SELECT 1"])
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines()[1] == ("CALL ml.create_embedding_and_wait('photos', 'px', 'image_path', "
                                          "'convert_result', 'image', timeout => '1 day');")
    assert res.stdout.rstrip().endswith("SELECT 1;")
    res = cli.invoke(app, ["sql", "--dry-run", "CONVERT USING px OPTIONS (nope=1) AS SELECT * FROM photos"])
    assert res.exit_code == 1 and "unknown option 'nope'" in res.stderr and "hint:" in res.stderr

    sheet = tmp_path / "s.png"
    with running_worker(dsn, [photos]):
        res = cli.invoke(app, ["sql", "--dsn", dsn, "--image-root", str(photos), "-o", str(sheet),
                               ("CONVERT USING px AS SELECT * FROM photos;"
                                "PRINT IMAGE AS SELECT image_path, caption FROM photos ORDER BY convert_result "
                                "<=> ml.embed_image('px', 'img1.png') LIMIT 4;"
                                "SELECT id, caption FROM photos ORDER BY id LIMIT 2")])
    assert res.exit_code == 0, res.output
    assert "CONVERT: job" in res.stderr and "12 of 12 rows computed" in res.stderr
    assert f"wrote {sheet}" in res.stderr and sheet.exists()
    assert "photo 1" in res.stdout and "(2 rows)" in res.stderr
    res = cli.invoke(app, ["sql", "--dsn", dsn, "SELECT '[1,2.5,3]'::vector AS v, '[red]x[/red]' AS markup"])
    assert res.exit_code == 0, res.output
    assert "<vector 3>" in res.stdout and "2.5" not in res.stdout  # vectors elided unless asked for
    res = cli.invoke(app, ["sql", "--dsn", dsn, "--vectors", "SELECT '[1,2.5,3]'::vector AS v, '[red]x[/red]' AS markup"])
    assert res.exit_code == 0, res.output
    assert "[1,2.5,3]" in res.stdout and "[red]x[/red]" in res.stdout  # values are never rich markup
    res = cli.invoke(app, ["sql", "--dsn", dsn, "SELECT ml.create_embedding('photos', 'px', 'image_path', 'convert_result')"])
    assert res.exit_code == 1
    assert "already has a column convert_result" in res.stderr and "hint: choose another result_col" in res.stderr


def test_waiting_for_a_job_without_worker_says_so_and_ctrl_c_leaves_it_running(dsn, photos, monkeypatch):
    monkeypatch.setattr(jobs, "NO_WORKER_AFTER", 0.2)
    warnings: list[str] = []

    class Impatient(jobs.Reporter):
        def warn(self, message: str) -> None:
            warnings.append(message)

        def job_progress(self, job_id, status, done, total, info) -> None:
            if warnings:
                raise KeyboardInterrupt  # the user gives up

    with psycopg.connect(dsn) as conn:
        r = Runner(conn, Impatient(), image_roots=[photos])
        with pytest.raises(KeyboardInterrupt):
            r.run("CONVERT USING px AS SELECT * FROM photos")
        job = conn.execute("SELECT id, status FROM ml.jobs").fetchone()
        assert job[1] == "queued"
        assert "no pgsight worker is alive: start one with `pgsight worker --image-root DIR`" in warnings[0]
        assert warnings[1] == (f"stopped waiting; job {job[0]} goes on (watch it with `pgsight status`, "
                               f"stop it with SELECT ml.cancel({job[0]}))")
        # BUILD MODEL options are checked by the database before a job is queued
        with pytest.raises(psycopg.errors.RaiseException) as err:
            r.run("BUILD MODEL m USING SimCLR OPTIONS (image_col='image_path', bogus=1) AS SELECT * FROM photos")
        assert "unknown option 'bogus' for kind simclr" in str(err.value)
        assert "max_epochs" in err.value.diag.message_hint
