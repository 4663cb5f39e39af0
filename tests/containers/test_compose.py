"""docker-compose.yml for real, under podman-compose: the database, the one-shot migrate and two workers
come up; rows inserted through the published port are embedded by both workers (logged in as their
own role, not the admin); one worker stopped with SIGTERM mid-batch loses nothing; the stack comes down.

podman 4.3 (Debian 12) has no `depends_on: condition:` support and no health-check timers (no systemd),
so the test takes the steps `docker compose up -d` takes on its own: db, its health check, migrate, workers."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import psycopg
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
ROWS, FILES = 3000, 40


def run(*args: str, check: bool = True, timeout: float = 300, env=None) -> subprocess.CompletedProcess:
    res = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout}s")


class Stack:
    def __init__(self, tmp: Path) -> None:
        self.project = f"pgsight-test-{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        secrets, self.images = tmp / "secrets", tmp / "images"
        secrets.mkdir()
        self.images.mkdir()
        self.admin_password, self.worker_password = uuid.uuid4().hex, uuid.uuid4().hex
        (secrets / "postgres_password").write_text(self.admin_password + "\n")
        (secrets / "worker_password").write_text(self.worker_password + "\n")
        for p in (tmp, secrets, self.images):   # the containers' users (postgres, pgsight) read them
            p.chmod(0o755)
        for p in secrets.iterdir():
            p.chmod(0o644)
        self.env = {**os.environ, "PGSIGHT_SECRETS_DIR": str(secrets), "IMAGES_DIR": str(self.images),
                    "PGSIGHT_DB_PUBLISH": f"127.0.0.1:{self.port}", "PGSIGHT_DEVICE": "cpu"}
        self.compose = [shutil.which("podman-compose") or str(Path(os.sys.executable).parent / "podman-compose"),
                        "-p", self.project, "-f", str(ROOT / "docker-compose.yml")]
        self.admin_dsn = f"postgresql://postgres:{self.admin_password}@127.0.0.1:{self.port}/pgsight"

    def __call__(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return run(*self.compose, *args, env=self.env, **kw)

    def container(self, service: str, n: int = 1) -> str:
        return f"{self.project}_{service}_{n}"

    def down(self) -> None:
        self("down", "-v", "-t", "10", check=False, timeout=120)


@pytest.fixture
def stack(tmp_path):
    st = Stack(tmp_path)
    try:
        yield st
    finally:
        st.down()


def test_compose_stack_embeds_with_two_workers_and_loses_nothing_on_sigterm(stack: Stack):
    rng = np.random.default_rng(0)
    for i in range(FILES):  # large enough that a batch takes seconds: the SIGTERM lands mid-batch
        Image.fromarray(rng.integers(0, 255, (384, 384, 3), dtype=np.uint8)).save(stack.images / f"{i}.png")
        (stack.images / f"{i}.png").chmod(0o644)

    stack("up", "-d", "db")
    wait_until(lambda: run("podman", "healthcheck", "run", stack.container("db"), check=False).returncode == 0,
               120, "the db service's health check (pg_isready)")
    migrate = stack("run", "--rm", "--no-deps", "migrate", timeout=300)
    assert "ml schema at revision" in migrate.stdout and "worker role pgsight_worker_login" in migrate.stdout, \
        migrate.stdout + migrate.stderr
    stack("up", "-d", "--no-deps", "worker")

    with psycopg.connect(stack.admin_dsn, autocommit=True) as conn:      # through the published port
        workers = wait_until(lambda: conn.execute(
            "SELECT array_agg(id ORDER BY id) FROM ml.workers WHERE heartbeat_at > now() - interval '10 seconds'"
        ).fetchone()[0] if conn.execute("SELECT count(*) FROM ml.workers").fetchone()[0] >= 2 else None,
            180, "two live workers")
        assert len(workers) == 2
        logins = {r[0] for r in conn.execute(
            "SELECT DISTINCT usename FROM pg_stat_activity WHERE application_name LIKE 'pgsight_worker%'")}
        assert logins == {"pgsight_worker_login"}          # the workers' own role, not the admin
        assert not conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = 'pgsight_worker_login'").fetchone()[0]

        # which worker wrote each row: the client address of the session that set its embedding
        conn.execute("CREATE TABLE photos (id bigint PRIMARY KEY, path text, written_from inet)")
        conn.execute("""CREATE FUNCTION note_writer() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.embedding IS NOT NULL AND OLD.embedding IS NULL THEN NEW.written_from := inet_client_addr(); END IF;
                RETURN NEW;
            END $$""")
        conn.execute("SELECT ml.load_model('px', 'pixels', NULL, '{\"size\": 8}')")
        conn.execute("SELECT ml.create_embedding('photos', 'px', 'path')")
        conn.execute("CREATE TRIGGER note_writer BEFORE UPDATE ON photos FOR EACH ROW EXECUTE FUNCTION note_writer()")
        conn.execute("INSERT INTO photos (id, path) SELECT i, (i %% %s) || '.png' FROM generate_series(1, %s) i",
                     (FILES, ROWS))

        # SIGTERM one worker while it holds claimed rows and the backlog is still there
        victim_id = workers[0]
        wait_until(lambda: conn.execute("SELECT count(*) FROM ml.queue WHERE claimed_by = %s", (victim_id,)).fetchone()[0],
                   120, "the first worker claiming a batch", interval=0.05)
        held = conn.execute("SELECT count(*) FROM ml.queue WHERE claimed_by = %s", (victim_id,)).fetchone()[0]
        victim = next(n for n in (1, 2) if run("podman", "inspect", "--format", "{{.Config.Hostname}}",
                                                 stack.container("worker", n)).stdout.strip()
                      == conn.execute("SELECT hostname FROM ml.workers WHERE id = %s", (victim_id,)).fetchone()[0])
        done_before = conn.execute("SELECT count(embedding) FROM photos").fetchone()[0]
        assert held > 0 and done_before < ROWS
        stopped = run("podman", "stop", "-t", "60", stack.container("worker", victim))   # stop_signal: SIGTERM
        assert stopped.returncode == 0
        state = run("podman", "inspect", "--format", "{{.State.ExitCode}}", stack.container("worker", victim)).stdout.strip()
        logs = run("podman", "logs", stack.container("worker", victim)).stderr + \
            run("podman", "logs", stack.container("worker", victim)).stdout
        assert state == "0", logs[-3000:]                   # it finished its batch and exited on the first SIGTERM
        assert "stopping after the batch in flight" in logs, logs[-3000:]

        wait_until(lambda: conn.execute("SELECT count(embedding) FROM photos").fetchone()[0] == ROWS,
                   300, f"all {ROWS} rows embedded")
        assert conn.execute("SELECT count(*) FROM ml.queue").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM ml.errors").fetchone()[0] == 0
        writers = dict(conn.execute("SELECT written_from::text, count(*) FROM photos GROUP BY 1").fetchall())
        assert None not in writers and len(writers) == 2, writers    # both workers wrote rows
        assert sum(writers.values()) == ROWS

    stack("down", "-v", "-t", "10", timeout=120)
    left = run("podman", "ps", "-a", "--filter", f"name={stack.project}", "--format", "{{.Names}}").stdout.split()
    assert left == []
    volumes = run("podman", "volume", "ls", "--format", "{{.Name}}").stdout.split()
    assert not [v for v in volumes if v.startswith(stack.project)]
