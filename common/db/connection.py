"""The one PostgreSQL connection pool of a process, and raw-SQL helpers over it.

peewee's ``DatabaseProxy`` is bound once per process by ``connect_database`` (services call it
at start-up, tests with their private server). Hot paths use ``execute``/``fetch`` with plain
SQL so a batch is claimed or updated with one statement.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import os
import re
import select
import socket
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

import peewee
import psycopg2
import psycopg2.extensions
from playhouse.pool import (
    MaxConnectionsExceeded,
    PoolConnection,
    PooledDatabase,
    PooledPostgresqlDatabase,
)
from playhouse.postgres_ext import DatabaseProxy

from common.config import settings

db = DatabaseProxy()


class DatabaseUnavailable(peewee.OperationalError):
    """PostgreSQL did not answer in time, refused the connection, or dropped it: the work was not
    done (its transaction rolled back) and may be tried again once the server is back."""


# Errors that mean "the server is unreachable or the connection is broken", not "the SQL is wrong".
_UNAVAILABLE = (peewee.OperationalError, peewee.InterfaceError, psycopg2.OperationalError,
                psycopg2.InterfaceError, MaxConnectionsExceeded)
_deadline_seconds = settings.postroom_db_timeout_seconds
_connect_seconds = settings.postroom_db_connect_timeout_seconds


def _wait_with_deadline(conn: Any) -> None:
    """psycopg2's wait callback: wait for the server's answer, but never longer than the deadline.

    A frozen or unreachable server otherwise blocks a thread forever: the server-side
    ``statement_timeout`` cannot fire in a process that is stopped, and the kernel keeps
    acknowledging its TCP traffic. The connection is closed on timeout, so the pool drops it.
    Under gevent ``select`` is cooperative, so this also lets greenlets run while a query waits.
    """
    own = getattr(_local, "deadline", None) or _deadline_seconds
    limit = min(_connect_seconds, _deadline_seconds) if conn.status == psycopg2.extensions.STATUS_SETUP else own
    deadline = time.monotonic() + limit
    while True:
        state = conn.poll()
        if state == psycopg2.extensions.POLL_OK:
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            _mark_unavailable()
            _cut(conn)
            raise psycopg2.OperationalError(f"PostgreSQL did not answer within {limit:g}s")
        if state == psycopg2.extensions.POLL_READ:
            select.select([conn.fileno()], [], [], remaining)
        elif state == psycopg2.extensions.POLL_WRITE:
            select.select([], [conn.fileno()], [], remaining)
        else:
            raise psycopg2.OperationalError(f"unexpected poll state {state}")


# Once the server failed to answer, this process fails transactions at once for RECHECK_SECONDS
# instead of letting every thread wait out its own deadline. peewee's pool also holds its lock
# while it opens a connection, so threads would otherwise queue behind each other's attempts and
# an API request could wait many deadlines, not one.
RECHECK_SECONDS = 1.0
_unavailable_until = 0.0


def _mark_unavailable() -> None:
    global _unavailable_until
    _unavailable_until = time.monotonic() + RECHECK_SECONDS


def _cut(conn: Any) -> None:
    """Shut the connection's socket down so nothing waits on it again (``conn.close()`` cannot be
    called here: psycopg2 holds the connection's lock while it waits). The pool then sees a broken
    connection and drops it."""
    try:
        sock = socket.socket(fileno=os.dup(conn.fileno()))
    except OSError:
        return
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class _Pool(PooledPostgresqlDatabase):
    """peewee's pool without its check-out ping.

    peewee runs ``SELECT 1`` on every connection it hands out, while holding the pool's lock: one
    more round trip per transaction, and on a frozen server every thread of the process queues
    behind one thread's wait. A connection the server dropped is found by its first statement
    instead, and ``transaction()`` discards it.
    """

    _opening = 0  # connections being opened right now (outside the lock), counted against the max

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # peewee's Database.connect/close hold one process-wide lock, though the state they guard
        # is per thread and the pool has its own lock: a thread stuck connecting to a frozen server
        # would make every other thread wait to take or give back a connection.
        self._lock = peewee._NoopLock()
        # Imported here, once the process has chosen its metrics mode (common.broker sets it).
        from common.metrics import DB_STATEMENTS

        self._count_statement = DB_STATEMENTS.inc

    def execute_sql(self, sql: str, params: Any = None) -> Any:
        """Every statement of the process passes here (``_execute``'s raw SQL and the ORM's
        queries alike): counted in ``postroom_db_statements_total``, the write budget's figure."""
        self._count_statement()
        return super().execute_sql(sql, params)

    def _is_closed(self, conn: Any) -> bool:
        return bool(conn.closed) or conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_UNKNOWN

    def _connect(self) -> Any:
        """peewee's check-out, but a new connection is opened outside the pool's lock: threads
        returning connections, or taking pooled ones, never wait behind a slow connect."""
        with self._pool_lock:
            while self._connections:
                ts, _, conn = heapq.heappop(self._connections)
                if self._is_closed(conn):
                    continue
                if self._stale_timeout and self._is_stale(ts):
                    self._close_raw(conn)
                    continue
                self._in_use[self.conn_key(conn)] = PoolConnection(ts, conn, time.time())
                return conn
            if self._max_connections and len(self._in_use) + self._opening >= self._max_connections:
                raise MaxConnectionsExceeded("Exceeded maximum connections.")
            self._opening += 1
        try:
            conn = super(PooledDatabase, self)._connect()  # the driver's connect (psycopg2), lock not held
        finally:
            with self._pool_lock:
                self._opening -= 1
        with self._pool_lock:
            now = time.time()
            self._in_use[self.conn_key(conn)] = PoolConnection(now, conn, now)
        return conn


_local = threading.local()  # greenlet-local under gevent's monkey-patching


@contextmanager
def longer_deadline(seconds: float) -> Iterator[None]:
    """Inside a transaction: the statements of this block may take up to ``seconds``, client- and
    server-side (a campaign's fan-out of 100,000 rows, not a single send). The statement that sets
    it runs under the usual deadline, so an unavailable server is still noticed at once."""
    fetch("SELECT set_config('statement_timeout', %s, true)", (str(int(seconds * 1000) + 500),))
    previous = getattr(_local, "deadline", None)
    _local.deadline = seconds
    try:
        yield
    finally:
        _local.deadline = previous


def set_deadline(seconds: float) -> None:
    """Change how long one statement may take in this process (ingest answers faster than workers)."""
    global _deadline_seconds
    _deadline_seconds = seconds
    if db.obj is not None:  # the pool's wait and the server's statement_timeout follow it
        db.obj._wait_timeout = seconds
        db.obj.connect_params["options"] = _server_options()


def _server_options() -> str:
    """The server gives up on a statement too (a live but overloaded server), a little after the
    client would, so the client's clearer error is the one seen. Applies to connections opened
    from now on (the pool opens them lazily)."""
    return f"-c statement_timeout={int(_deadline_seconds * 1000) + 500}"


def connect_database(url: str, max_connections: int = 32, *, prepare: bool = True,
                     deadline_seconds: float | None = None) -> PooledPostgresqlDatabase:
    """Bind the process-wide ``db`` to the PostgreSQL server at ``url``.

    Parameters:
      prepare: let hot statements be prepared once per connection (see ``_execute``).
      deadline_seconds: the longest one statement may take, client- and server-side
        (default POSTROOM_DB_TIMEOUT_SECONDS); connecting takes at most
        POSTROOM_DB_CONNECT_TIMEOUT_SECONDS.
    """
    global prepare_statements, _unavailable_until
    prepare_statements = prepare
    _unavailable_until = 0.0  # a new binding: what the last server did says nothing of this one
    if deadline_seconds is not None:
        set_deadline(deadline_seconds)
    psycopg2.extensions.set_wait_callback(_wait_with_deadline)
    parts = urlparse(url)
    database = _Pool(
        parts.path.lstrip("/") or "postgres",
        user=parts.username,
        password=parts.password,
        host=parts.hostname,
        port=parts.port or 5432,
        max_connections=max_connections,
        stale_timeout=300,
        timeout=_deadline_seconds,  # waiting for a free pooled connection is bounded too
        autorollback=True,
        application_name="postroom",
        connect_timeout=max(1, round(_connect_seconds)),
        options=_server_options(),
        # Notice a peer that vanished (host crash, network cut) on an idle pooled connection.
        keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3,
    )
    db.initialize(database)
    return database


_PARAM = re.compile(r"%\((\w+)\)s|%s")
# SQL text -> (statement name, text with $n placeholders, parameter keys in $n order).
_converted: dict[str, tuple[str, str, list[str]]] = {}
# Per connection: the statement names it has prepared (psycopg2 connections take no attributes).
_prepared: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()
prepare_statements = True


def _convert(sql: str) -> tuple[str, str, list[str]]:
    found = _converted.get(sql)
    if found is None:
        order: list[str] = []

        def number(match: re.Match[str]) -> str:
            key = match.group(1) if match.group(1) is not None else str(len(order))
            if key not in order:
                order.append(key)
            return f"${order.index(key) + 1}"

        text = _PARAM.sub(number, sql)
        found = _converted[sql] = (f"pr_{hashlib.sha1(sql.encode()).hexdigest()[:16]}", text, order)
    return found


def _execute(sql: str, params: Sequence[Any] | dict[str, Any], prepared: bool) -> Any:
    """Run ``sql``; a hot statement is prepared once per connection and then only executed, which
    spares PostgreSQL planning it again (a large share of the per-message cost of small batches).
    Behind a transaction-mode pgbouncer set POSTROOM_DB_PREPARE=false: sessions are not kept."""
    if not (prepared and prepare_statements):
        return db.execute_sql(sql, params)
    name, text, order = _convert(sql)
    done = _prepared.setdefault(db.connection(), set())
    if name not in done:
        db.execute_sql(f"PREPARE {name} AS {text}")
        done.add(name)
    values = [params[k] for k in order] if isinstance(params, dict) else list(params)
    placeholders = ", ".join(["%s"] * len(values))
    return db.execute_sql(f"EXECUTE {name}" + (f" ({placeholders})" if values else ""), values)


def fetch(sql: str, params: Sequence[Any] | dict[str, Any] = (), *, prepared: bool = False) -> list[tuple]:
    """Run one statement and return all its rows (``prepared``: plan it once per connection)."""
    cursor = _execute(sql, params, prepared)
    return cursor.fetchall() if cursor.description else []


def fetch_dicts(sql: str, params: Sequence[Any] | dict[str, Any] = (), *, prepared: bool = False) -> list[dict[str, Any]]:
    """Run one statement and return its rows as dicts keyed by column name."""
    cursor = _execute(sql, params, prepared)
    if not cursor.description:
        return []
    names = [col[0] for col in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


@contextmanager
def transaction(*, single_statement: bool = False) -> Iterator[None]:
    """A transaction on this thread's connection; opens the connection if needed.

    ``single_statement``: the block runs one statement, which PostgreSQL makes a transaction of
    its own: no BEGIN and COMMIT round trips (a third of a small batch's statements on the bulk
    path). Failures are handled as for any transaction.

    Raises:
      DatabaseUnavailable: the server could not be reached or stopped answering. The broken
        connection is discarded first, so the next transaction opens a fresh one (a process
        recovers from a database restart without being restarted itself).
    """
    if time.monotonic() < _unavailable_until:
        raise DatabaseUnavailable(f"database unavailable: it did not answer in the last {RECHECK_SECONDS:g}s")
    try:
        db.connect(reuse_if_open=True)
        outermost = not db.in_transaction()
        if single_statement and outermost:
            yield
        else:
            with db.atomic():
                yield
        if outermost:
            _ended.count = commits() + 1
    except _UNAVAILABLE as exc:
        if db.is_closed() or db.connection().closed:  # unreachable, not merely a failed statement
            _mark_unavailable()
        discard_connection()
        raise DatabaseUnavailable(f"database unavailable: {exc}") from exc


_ended = threading.local()


def commits() -> int:
    """How many outermost transactions this thread has ended with a commit: a request that saw
    the count move may have stored something (``services.ingest.idempotency`` keeps its answer)."""
    return int(getattr(_ended, "count", 0))


def discard_connection() -> None:
    """Close this thread's connection for good (it is broken) and forget it."""
    if db.is_closed():
        return
    try:
        raw = db.connection()
        if not raw.closed:
            raw.close()
    except Exception:  # noqa: BLE001 - closing a broken connection may itself fail; it is dropped either way
        pass
    try:
        db.close()
    except Exception:  # noqa: BLE001
        db._state.reset()  # type: ignore[attr-defined]


def release_connection() -> None:
    """Return this thread's connection to the pool (before a slow call that needs none)."""
    if not db.is_closed():
        try:
            db.close()
        except _UNAVAILABLE:
            discard_connection()
