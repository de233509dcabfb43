"""The one PostgreSQL connection pool of a process, and raw-SQL helpers over it.

peewee's ``DatabaseProxy`` is bound once per process by ``connect_database`` (services call it
at start-up, tests with their private server). Hot paths use ``execute``/``fetch`` with plain
SQL so a batch is claimed or updated with one statement.
"""

from __future__ import annotations

import hashlib
import re
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

from playhouse.pool import PooledPostgresqlDatabase
from playhouse.postgres_ext import DatabaseProxy

db = DatabaseProxy()


def connect_database(url: str, max_connections: int = 32, *, prepare: bool = True) -> PooledPostgresqlDatabase:
    """Bind the process-wide ``db`` to the PostgreSQL server at ``url``.

    ``prepare``: let hot statements be prepared once per connection (see ``_execute``).
    """
    global prepare_statements
    prepare_statements = prepare
    parts = urlparse(url)
    database = PooledPostgresqlDatabase(
        parts.path.lstrip("/") or "postgres",
        user=parts.username,
        password=parts.password,
        host=parts.hostname,
        port=parts.port or 5432,
        max_connections=max_connections,
        stale_timeout=300,
        timeout=30,
        autorollback=True,
        application_name="postroom",
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
def transaction() -> Iterator[None]:
    """A transaction on this thread's connection; opens the connection if needed."""
    db.connect(reuse_if_open=True)
    with db.atomic():
        yield


def release_connection() -> None:
    """Return this thread's connection to the pool (before a slow call that needs none)."""
    if not db.is_closed():
        db.close()
