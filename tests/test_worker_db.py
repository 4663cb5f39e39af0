"""The worker's database API (pgsight.worker.db): typed rows, and no SQL anywhere else in the worker."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import psycopg
from pgsight.worker.db import BlobChunk, ClaimedRow, ModelInfo, RpcReply, TaskInfo, WorkerDB

WORKER = Path(__file__).resolve().parent.parent / "worker"
STATEMENT = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|WITH|LISTEN|NOTIFY|CREATE|DROP|ALTER|CALL)\b")


def _sql_in(path: Path) -> list[str]:
    """Statements in string literals (docstrings aside), `.execute(` calls and `sql.SQL(` compositions."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if STATEMENT.search(node.value):
                found.append(f"{node.lineno}: {node.value[:60]!r}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in ("execute", "executemany", "SQL"):
                found.append(f"{node.lineno}: .{node.func.attr}(...)")
    return found


def test_no_sql_outside_db_module():
    offenders = [f"{path.relative_to(WORKER.parent)}:{hit}" for path in sorted(WORKER.rglob("*.py"))
                 if path != WORKER / "db.py" for hit in _sql_in(path)]
    assert not offenders, "SQL belongs in pgsight.worker.db:\n" + "\n".join(offenders)
    assert _sql_in(WORKER / "db.py"), "the check finds the SQL where it is"


def test_the_worker_side_of_a_column_in_typed_rows(dsn):
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        conn.execute("INSERT INTO notes VALUES (1, 'a'), (2, 'b')")
        conn.execute("SELECT ml.load_model('px', 'pixels', NULL, '{\"size\": 2}')")
        conn.execute("SET pgsight.index = 'off'")
        job = conn.execute("SELECT ml.create_embedding('notes', 'px', 'body')").fetchone()[0]
    with WorkerDB.connect(dsn) as db:
        worker = db.worker_register("host", 1, "cpu", {"batch_size": 8})
        assert db.worker_heartbeat(worker) is True
        rows = db.claim(worker, 10)
        assert sorted(r.key for r in rows) == ["1", "2"] and all(isinstance(r, ClaimedRow) for r in rows)
        by_key = {r.key: r for r in rows}
        assert by_key["1"].present and by_key["1"].src == "a" and by_key["2"].src_bytes is None
        task = db.task_info(rows[0].task_id)
        assert isinstance(task, TaskInfo)
        assert (task.kind, task.model, task.result_col, task.modality) == ("embedding", "px", "embedding", "image")
        info = db.model_info("px")
        assert isinstance(info, ModelInfo) and info.kind == "pixels" and info.options == {"size": 2}
        assert db.model_info("nope") is None
        vec = np.arange(4, dtype=np.float32)  # pixels, size 2: 2x2 gray
        wrote = db.write_embeddings(worker, task.id, [r.queue_id for r in rows], [r.key for r in rows],
                                    [r.src_hash for r in rows], [vec, vec])
        assert wrote == 2
        db.finish_jobs()
        assert db.claim(worker, 10) == []
        db.worker_unregister(worker)
        assert db.worker_heartbeat(worker) is False
        got = db.conn.execute("SELECT status FROM ml.jobs WHERE id = %s", (job,)).fetchone()[0]
        assert got == "done"


def test_blobs_and_rpc_replies(dsn):
    with WorkerDB.connect(dsn) as db:
        with db.transaction():
            db.blob_put("t/a", 1, b"world")
            db.blob_put("t/a", 0, b"hello ")
            db.blob_put("u/b", 0, b"other")
        assert list(db.blob_get("t/")) == [BlobChunk("t/a", 0, b"hello "), BlobChunk("t/a", 1, b"world")]
        db.blob_delete("t/")
        assert list(db.blob_get("t/")) == [] and len(list(db.blob_get("u/"))) == 1
        worker = db.worker_register("host", 1, "cpu", {})
        assert db.rpc_claim(worker, 5) == []
        db.rpc_reply({})  # nothing to answer is fine
        assert RpcReply().error is None
