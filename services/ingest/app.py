"""The ingest service's Flask app: API v1, provider webhooks, health and metrics endpoints."""

from __future__ import annotations

import time

from flask import Flask, Response, g, jsonify, request

from common import metrics
from common.db.connection import db, fetch, release_connection
from services.ingest.api import api
from services.ingest.webhooks import webhooks


def create_app() -> Flask:
    app = Flask("postroom.ingest")
    app.register_blueprint(api)
    app.register_blueprint(webhooks)

    @app.before_request
    def start_timer() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def observe(response: Response) -> Response:
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.API_REQUESTS.labels(endpoint=endpoint, code=f"{response.status_code // 100}xx").observe(
            time.perf_counter() - g.get("started", time.perf_counter()))
        return response

    @app.teardown_request
    def give_back_connection(exc: BaseException | None) -> None:
        release_connection()

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"ok": True})

    @app.get("/readyz")
    def readyz() -> tuple[Response, int]:
        import dramatiq

        checks = {}
        try:
            db.connect(reuse_if_open=True)
            fetch("SELECT 1")
            checks["database"] = "ok"
        except Exception as exc:  # report, do not crash, when a dependency is down
            checks["database"] = f"error: {exc.__class__.__name__}"
        try:
            dramatiq.get_broker().client.ping()  # type: ignore[attr-defined]
            checks["broker"] = "ok"
        except Exception as exc:
            checks["broker"] = f"error: {exc.__class__.__name__}"
        ready = all(v == "ok" for v in checks.values())
        return jsonify({"ready": ready, "checks": checks}), 200 if ready else 503

    @app.get("/metrics")
    def metrics_endpoint() -> Response:
        return Response(metrics.exposition(), mimetype="text/plain; version=0.0.4")

    @app.errorhandler(404)
    def not_found(exc: Exception) -> tuple[Response, int]:
        return jsonify({"error": {"code": "not_found", "message": f"no route {request.method} {request.path}"}}), 404

    @app.errorhandler(405)
    def not_allowed(exc: Exception) -> tuple[Response, int]:
        return jsonify({"error": {"code": "method_not_allowed", "message": f"{request.method} is not allowed on {request.path}"}}), 405

    @app.errorhandler(500)
    def internal(exc: Exception) -> tuple[Response, int]:
        return jsonify({"error": {"code": "internal", "message": "internal error; nothing was accepted by this request"}}), 500

    return app
