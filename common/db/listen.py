"""Waiting for a PostgreSQL notification (LISTEN) on a connection of its own, with a timeout.

Used where a process should wake the moment something commits (new outbox events, a message
scheduled sooner than the next due one) instead of polling. A notification may be lost with a
dropped connection, so callers still look on their own after the timeout.
"""

from __future__ import annotations

import logging
import select

import psycopg2

from common.config import settings

log = logging.getLogger("postroom.db.listen")


class Listener:
    """LISTEN on ``channel``; ``wait(timeout)`` returns True when notified, False on timeout.

    The connection is opened lazily and opened again after an error, which ``wait`` reports by
    raising (the caller decides how long to back off)."""

    def __init__(self, channel: str, application_name: str) -> None:
        self.channel = channel
        self.application_name = application_name
        self._conn: psycopg2.extensions.connection | None = None

    def connect(self) -> None:
        if self._conn is not None:
            return
        conn = psycopg2.connect(settings.database_url, connect_timeout=max(1, round(settings.postroom_db_connect_timeout_seconds)),
                                application_name=self.application_name, keepalives=1, keepalives_idle=10,
                                keepalives_interval=5, keepalives_count=3)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"LISTEN {self.channel}")
        self._conn = conn

    def wait(self, timeout: float) -> bool:
        self.connect()
        assert self._conn is not None
        try:
            readable, _, _ = select.select([self._conn], [], [], max(0.0, timeout))
            if not readable:
                return False
            self._conn.poll()
            self._conn.notifies.clear()
            return True
        except (psycopg2.Error, OSError):
            self.close()
            raise

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg2.Error:
                pass
            self._conn = None
