"""Randomized fault isolation: schema changes, user triggers that refuse rows, drops and renames,
interleaved with inserts, updates and deletes, against one worker process. At the end every
surviving row's result equals a direct computation and the worker process never died.

PGSIGHT_RANDOM_OPS sets the number of operations (default 200; `make test` keeps it modest),
PGSIGHT_RANDOM_SEED the seed."""
from __future__ import annotations

import collections
import os
import random
import subprocess
import sys

import psycopg
from conftest import wait_for

from faults.isolation import expected_vectors, wrong_rows

OPS = int(os.environ.get("PGSIGHT_RANDOM_OPS", "200"))
SEED = int(os.environ.get("PGSIGHT_RANDOM_SEED", "11"))


class Table:
    def __init__(self, name: str) -> None:
        self.name, self.src, self.res, self.next_id, self.triggers = name, "path", "embedding", 1, 0


def test_random_schema_changes_never_stop_the_worker(conn, dsn, images, tmp_path, figures):
    rng = random.Random(SEED)
    conn.execute("UPDATE ml.settings SET value = '2' WHERE key = 'max_attempts'")
    conn.execute("UPDATE ml.settings SET value = '2 seconds' WHERE key = 'task_backoff_max'")
    conn.execute("SELECT ml.load_model('px', 'pixels', NULL, '{\"size\": 4}')")
    conn.execute("CREATE FUNCTION refuse_some() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                 "IF NEW.id % 7 = TG_ARGV[0]::int AND current_setting('application_name') LIKE 'pgsight_worker%' "
                 "THEN RAISE EXCEPTION 'refused %', NEW.id; END IF; RETURN NEW; END $$")  # the worker's writes only
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pgsight.cli", "worker", "--dsn", dsn, "--image-root",
                                 str(images), "--device", "cpu", "--batch-size", "8", "--log-level", "WARNING"],
                                stdout=out, stderr=subprocess.STDOUT)
    tables: list[Table] = []
    counts: collections.Counter[str] = collections.Counter()
    seen: collections.Counter[str] = collections.Counter()
    serial = iter(range(10**6))

    def new_table() -> None:
        t = Table(f"r{next(serial)}")
        conn.execute(f"CREATE TABLE {t.name} (id int PRIMARY KEY, path text, note int)")
        insert(t, rng.randint(0, 20))
        conn.execute("SELECT ml.create_embedding(%s, 'px', 'path')", (t.name,))
        tables.append(t)

    def insert(t: Table, n: int) -> None:
        for _ in range(n):
            conn.execute(f'INSERT INTO {t.name} (id, "{t.src}") VALUES (%s, %s)', (t.next_id, f"{rng.randrange(30)}.png"))
            t.next_id += 1

    try:
        for _ in range(4):
            new_table()
        for _ in range(OPS):
            t = rng.choice(tables)
            op = rng.choices(["insert", "update", "delete", "rename_src", "rename_res", "rename_table", "trigger",
                              "untrigger", "add_column", "recreate_column", "drop_table"],
                             weights=[30, 15, 5, 6, 6, 5, 6, 4, 4, 2, 1])[0]
            try:
                if op == "insert":
                    insert(t, rng.randint(1, 10))
                elif op == "update":
                    conn.execute(f'UPDATE {t.name} SET "{t.src}" = (id * %s %% 30) || \'.png\' WHERE id %% 5 = %s',
                                 (rng.randint(1, 9), rng.randrange(5)))
                elif op == "delete":
                    conn.execute(f"DELETE FROM {t.name} WHERE id %% 11 = %s", (rng.randrange(11),))
                elif op == "rename_src":
                    new = f"src_{next(serial)}"
                    conn.execute(f'ALTER TABLE {t.name} RENAME COLUMN "{t.src}" TO {new}')
                    t.src = new
                elif op == "rename_res":
                    new = f"emb_{next(serial)}"
                    conn.execute(f'ALTER TABLE {t.name} RENAME COLUMN "{t.res}" TO {new}')
                    t.res = new
                elif op == "rename_table":
                    new = f"r{next(serial)}"
                    conn.execute(f"ALTER TABLE {t.name} RENAME TO {new}")
                    t.name = new
                elif op == "trigger":
                    conn.execute(f"CREATE TRIGGER refuse_{t.triggers} BEFORE UPDATE ON {t.name} FOR EACH ROW "
                                 f"EXECUTE FUNCTION refuse_some({rng.randrange(7)})")
                    t.triggers += 1
                elif op == "untrigger" and t.triggers:
                    t.triggers -= 1
                    conn.execute(f"DROP TRIGGER refuse_{t.triggers} ON {t.name}")
                elif op == "add_column":
                    conn.execute(f"ALTER TABLE {t.name} ADD COLUMN c{next(serial)} text DEFAULT 'x'")
                elif op == "recreate_column":
                    conn.execute("SELECT ml.drop_embedding(%s, %s)", (t.name, t.res))
                    t.res = f"emb_{next(serial)}"
                    conn.execute("SELECT ml.create_embedding(%s, 'px', %s, %s)", (t.name, t.src, t.res))
                elif op == "drop_table":
                    conn.execute(f"DROP TABLE {t.name}")
                    tables.remove(t)
                    new_table()
                counts[op] += 1
            except psycopg.Error as e:  # a user statement failed: never allowed
                raise AssertionError(f"{op} on {t.name} failed: {e}") from e
            assert proc.poll() is None, f"the worker died after {sum(counts.values())} operations"
            if sum(counts.values()) % 10 == 0:  # how often the worker met a refusal or a failing task
                seen["row_errors"] = max(seen["row_errors"], conn.execute(
                    "SELECT count(*) FROM ml.queue WHERE last_error IS NOT NULL").fetchone()[0]
                    + conn.execute("SELECT count(*) FROM ml.errors").fetchone()[0])
                if os.environ.get("PGSIGHT_RANDOM_DEBUG"):
                    print(conn.execute("SELECT array_agg(DISTINCT left(last_error, 80)) FROM ml.queue").fetchone(),
                          conn.execute("SELECT array_agg(DISTINCT left(error, 80)) FROM ml.errors").fetchone())
                seen["failing_tasks"] += conn.execute("SELECT count(*) FROM ml.tasks WHERE state = 'failing'"
                                                      ).fetchone()[0]

        # refused rows are dead-lettered (max_attempts 2) while the triggers are still there
        try:
            wait_for(lambda: conn.execute("SELECT count(*) FROM ml.queue").fetchone()[0] == 0, timeout=30)
        except AssertionError:
            pass  # a task refused as a whole keeps its rows queued (backing off) until the fix below
        dead_lettered = conn.execute("SELECT count(*) FROM ml.errors").fetchone()[0]
        # the user fixes every cause: triggers dropped, refused rows touched again
        for t in tables:
            while t.triggers:
                t.triggers -= 1
                conn.execute(f"DROP TRIGGER refuse_{t.triggers} ON {t.name}")
        wait_for(lambda: conn.execute("SELECT count(*) FROM ml.queue").fetchone()[0] == 0, timeout=120)
        refused = 0
        for t in tables:
            keys = [r[0] for r in conn.execute("SELECT DISTINCT row_key FROM ml.errors e JOIN ml.tasks k "
                                               "ON k.id = e.task_id WHERE k.table_name = %s::regclass",
                                               (t.name,)).fetchall()]
            refused += len(keys)
            conn.execute(f'UPDATE {t.name} SET "{t.src}" = (id %% 30) || \'.png\' WHERE id::text = ANY (%s)', (keys,))
            conn.execute(f'UPDATE {t.name} SET "{t.src}" = ((id + 1) %% 30) || \'.png\' WHERE id::text = ANY (%s)',
                         (keys,))
        wait_for(lambda: conn.execute("SELECT count(*) FROM ml.queue").fetchone()[0] == 0, timeout=120)

        rows = sum(conn.execute(f"SELECT count(*) FROM {t.name}").fetchone()[0] for t in tables)
        wrong = {t.name: wrong_rows(conn, t.name, images, t.src, t.res) for t in tables}
        assert proc.poll() is None, "the worker process died"
        unexpected = log.read_text().count("unexpected error")
        figures.update(ops=sum(counts.values()), **{f"op_{k}": v for k, v in sorted(counts.items())},
                       tables=len(tables), rows=rows, dead_lettered=dead_lettered, refused_rows_fixed=refused, wrong=sum(wrong.values()),
                       worker_unexpected_errors=unexpected, worker_restarts=0,
                       **{f"seen_{k}": v for k, v in seen.items()})
        assert sum(wrong.values()) == 0, wrong
        assert unexpected == 0, log.read_text()[-3000:]
        assert len(expected_vectors(images)) == 30
    finally:
        proc.terminate()
        proc.wait(timeout=20)
