"""Versioned schema migrations: numbered SQL files applied once each, in order.

``postroom migrate`` (and the Kubernetes migration Job) calls ``apply_migrations``. An advisory
lock makes concurrent runs safe; each file runs in its own transaction together with the row
that records it, so a failed migration leaves nothing half-applied.
"""

from __future__ import annotations

from pathlib import Path

from common.db.connection import db, fetch

MIGRATIONS = Path(__file__).parent / "migrations"
_LOCK_ID = 0x706F7374  # "post": the advisory lock all migrators agree on


def available() -> list[Path]:
    return sorted(MIGRATIONS.glob("[0-9][0-9][0-9][0-9]_*.sql"))


def apply_migrations() -> list[str]:
    """Apply every migration not yet applied; return the names applied now."""
    if not available():
        raise RuntimeError(f"no migration files in {MIGRATIONS}: the installation is incomplete")
    applied_now: list[str] = []
    db.connect(reuse_if_open=True)
    with db.atomic():
        fetch("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
        fetch(
            "CREATE TABLE IF NOT EXISTS schema_migration ("
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in fetch("SELECT name FROM schema_migration")}
        for path in available():
            if path.name in done:
                continue
            with db.atomic():
                db.execute_sql(path.read_text())
                fetch("INSERT INTO schema_migration (name) VALUES (%s)", (path.name,))
            applied_now.append(path.name)
    return applied_now
