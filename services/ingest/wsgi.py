"""gunicorn entry point: ``gunicorn services.ingest.wsgi:app``; checks the secret key, installs broker and database first."""

from __future__ import annotations

from common.config import require_production_secret

require_production_secret()  # before anything is served: refuse the development key outside development

from common import broker as _broker  # noqa: E402, F401  (sets up the broker and the database pool)
from common.config import settings  # noqa: E402
from common.db.connection import set_deadline  # noqa: E402
from services.ingest.app import create_app  # noqa: E402

# An API request answers 503 within about two seconds while PostgreSQL is unavailable, instead of
# waiting as long as a worker would.
set_deadline(settings.postroom_api_db_timeout_seconds)
app = create_app()
