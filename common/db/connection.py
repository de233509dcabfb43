"""The one PostgreSQL connection pool of a process, and raw-SQL helpers over it.

peewee's ``DatabaseProxy`` is bound once per process by ``connect_database`` (services call it
at start-up, tests with their private server). Hot paths use ``execute``/``fetch`` with plain
SQL so a batch is claimed or updated with one statement.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

from playhouse.pool import PooledPostgresqlDatabase
from playhouse.postgres_ext import DatabaseProxy

db = DatabaseProxy()


def connect_database(url: str, max_connections: int = 32) -> PooledPostgresqlDatabase:
    """Bind the process-wide ``db`` to the PostgreSQL server at ``url``."""
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


def fetch(sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[tuple]:
    """Run one statement and return all its rows."""
    cursor = db.execute_sql(sql, params)
    return cursor.fetchall() if cursor.description else []


def fetch_dicts(sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
    """Run one statement and return its rows as dicts keyed by column name."""
    cursor = db.execute_sql(sql, params)
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
