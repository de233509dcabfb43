"""gunicorn entry point: ``gunicorn services.ingest.wsgi:app``; installs broker and database first.

Importing ``common.broker`` sets them up, refusing the development secret key outside development.
"""

from __future__ import annotations

from common import broker as _broker  # noqa: F401  (sets up the broker and the database pool)
from common.config import settings
from common.db.connection import set_deadline
from services.ingest.app import create_app

# An API request answers 503 within about two seconds while PostgreSQL is unavailable, instead of
# waiting as long as a worker would.
set_deadline(settings.postroom_api_db_timeout_seconds)
app = create_app()
