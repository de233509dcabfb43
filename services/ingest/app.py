"""The ingest service's Flask app: API v1, provider webhooks, probes, and the contract at /openapi.json.

Cross-cutting behaviour lives here: body size limits before anything reads a body, request
metrics, giving the database connection back, and the error handlers that keep every failure in
the one JSON error shape: ``ApiError`` as declared, 503 with ``Retry-After`` while PostgreSQL is
unavailable (invariant 15), and 500 for anything unexpected.
"""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, g, request

from common import metrics
from common.db.connection import DatabaseUnavailable, release_connection
from services.ingest import bounds, compat
from services.ingest.api import api
from services.ingest.campaigns_api import campaigns_api
from services.ingest.channels_api import channels_api
from services.ingest.chatbots_api import chatbots_api
from services.ingest.contacts_api import contacts_api
from services.ingest.contract import RETRY_AFTER_SECONDS
from services.ingest.conversations_api import conversations_api
from services.ingest.email_hooks import email_hooks
from services.ingest.errors import ApiError, error, render
from services.ingest.knowledge_api import knowledge_api
from services.ingest.links_api import links_api
from services.ingest.probes import probes
from services.ingest.schedules_api import schedules_api
from services.ingest.sequence_api import sequence_api
from services.ingest.stats_api import stats_api
from services.ingest.suppressions_api import suppressions_api
from services.ingest.templates_api import templates_api
from services.ingest.twilio_inbound import twilio_inbound
from services.ingest.usage_api import usage_api
from services.ingest.waha_hooks import waha_hooks
from services.ingest.webhook_api import webhook_api
from services.ingest.webhooks import webhooks
from services.ingest.whatsapp_hooks import whatsapp_hooks
from services.ingest.workspace_api import workspace_api

log = logging.getLogger("postroom.ingest")


def create_app() -> Flask:
    app = Flask("postroom.ingest")
    app.register_blueprint(probes)
    app.register_blueprint(api)
    app.register_blueprint(stats_api)
    app.register_blueprint(webhook_api)
    app.register_blueprint(schedules_api)
    app.register_blueprint(sequence_api)
    app.register_blueprint(contacts_api)
    app.register_blueprint(channels_api)
    app.register_blueprint(templates_api)
    app.register_blueprint(campaigns_api)
    app.register_blueprint(links_api)
    app.register_blueprint(conversations_api)
    app.register_blueprint(chatbots_api)
    app.register_blueprint(knowledge_api)
    app.register_blueprint(usage_api)
    app.register_blueprint(suppressions_api)
    app.register_blueprint(workspace_api)
    app.register_blueprint(webhooks)
    app.register_blueprint(email_hooks)
    app.register_blueprint(waha_hooks)
    app.register_blueprint(whatsapp_hooks)
    app.register_blueprint(twilio_inbound)
    for compat_routes in compat.blueprints():  # /api/...: the old clients' routes (issue 12)
        app.register_blueprint(compat_routes)

    @app.before_request
    def start() -> None:
        g.started = time.perf_counter()
        bounds.limit_body()

    @app.after_request
    def observe(response: Response) -> Response:
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.API_REQUESTS.labels(endpoint=endpoint, code=f"{response.status_code // 100}xx").observe(
            time.perf_counter() - g.get("started", time.perf_counter()))
        return response

    @app.teardown_request
    def give_back_connection(exc: BaseException | None) -> None:
        release_connection()

    @app.errorhandler(ApiError)
    def refused(exc: ApiError) -> tuple[Response, int]:
        return render(exc)

    @app.errorhandler(DatabaseUnavailable)  # transaction() raises it for every kind of outage
    def unavailable(exc: Exception) -> tuple[Response, int]:
        log.warning("database unavailable for %s %s: %s: %s", request.method, request.path[:200], exc.__class__.__name__, exc)
        return error(503, "unavailable", "the database is unavailable; nothing was accepted by this request, retry shortly",
                     headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    @app.errorhandler(404)
    def not_found(exc: Exception) -> tuple[Response, int]:
        return error(404, "not_found", f"no route {request.method} {request.path[:200]}")

    @app.errorhandler(405)
    def not_allowed(exc: Exception) -> tuple[Response, int]:
        return error(405, "method_not_allowed", f"{request.method} is not allowed on {request.path[:200]}")

    @app.errorhandler(413)
    def too_large(exc: Exception) -> tuple[Response, int]:
        return render(bounds.too_large())

    @app.errorhandler(500)
    def internal(exc: Exception) -> tuple[Response, int]:
        return error(500, "internal", "internal error; nothing was accepted by this request")

    return app
