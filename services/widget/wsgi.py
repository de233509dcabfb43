"""gunicorn entry point: ``gunicorn -k gevent services.widget.wsgi:app`` (``postroom widget``).

gunicorn's gevent worker has monkey-patched the process before this module is imported, so the
wake-up listener below is a greenlet and psycopg2 waits cooperatively (``common.db.connection``).
Importing ``common.broker`` sets up the broker (the AI stage is handed work by name) and the
database pool, refusing the development secret key outside development.
"""

from __future__ import annotations

from common import broker as _broker  # noqa: F401  (sets up the broker and the database pool)
from common.config import settings
from common.db.connection import set_deadline
from services.widget.app import create_app
from services.widget.stream import start_listener

# A visitor's request answers 503 within about two seconds while PostgreSQL is unavailable.
set_deadline(settings.postroom_api_db_timeout_seconds)
app = create_app()
start_listener()
