"""gunicorn entry point: ``gunicorn services.ingest.wsgi:app``; installs broker and database first."""

from __future__ import annotations

from common import broker as _broker  # noqa: F401  (sets up the broker and the database pool)
from services.ingest.app import create_app

app = create_app()
