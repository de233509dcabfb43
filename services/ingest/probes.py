"""Liveness, readiness, metrics and the contract itself: the endpoints that operators and tools read.

``/healthz`` is liveness and touches nothing. ``/readyz`` means "can accept" (invariant 15):
ready while PostgreSQL answers; the broker's state is reported but does not make ingest unready,
because accepted work waits in PostgreSQL until the reconciler hands it on.
"""

from __future__ import annotations

import functools
from typing import Any

import redis
from flask import Blueprint, Response, jsonify

from common import metrics
from common.db.connection import fetch, transaction
from services.ingest import contract
from services.ingest.contract import RETRY_AFTER_SECONDS, Body, operation
from services.ingest.models import Health, Readiness

probes = Blueprint("probes", __name__)
_broker_probe: redis.Redis | None = None


@operation(probes, "GET", "/healthz", summary="Liveness", uses_database=False, ok={200: Body(Health, "Alive.")})
def healthz() -> Response:
    return jsonify({"ok": True})


@operation(probes, "GET", "/readyz", summary="Readiness: can ingest accept work?", uses_database=False,
           ok={200: Body(Readiness, "PostgreSQL answers; the broker's state is reported."),
               503: Body(Readiness, "PostgreSQL does not answer.", headers={"Retry-After": {
                   "description": "Seconds to wait before asking again.", "required": True,
                   "schema": {"type": "integer", "minimum": 0}}})})
def readyz() -> tuple[Response, int]:
    checks = {"database": _check(_database), "broker": _check(_broker)}
    ready = checks["database"] == "ok"
    response = jsonify({"ready": ready, "checks": checks})
    if not ready:
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response, 200 if ready else 503


def _check(probe: Any) -> str:
    try:
        probe()
        return "ok"
    except Exception as exc:  # report, do not crash, when a dependency is down
        return f"error: {exc.__class__.__name__}"


def _database() -> None:
    with transaction():
        fetch("SELECT 1")


def _broker() -> None:
    """Ping Redis with a short timeout of its own: a frozen Redis must not hold the probe."""
    global _broker_probe
    if _broker_probe is None:
        import dramatiq

        pool = dramatiq.get_broker().client.connection_pool  # type: ignore[attr-defined]
        _broker_probe = redis.Redis(connection_pool=redis.ConnectionPool(
            connection_class=pool.connection_class,
            **{**pool.connection_kwargs, "socket_timeout": 0.5, "socket_connect_timeout": 0.5}))
    _broker_probe.ping()


@operation(probes, "GET", "/metrics", summary="Prometheus metrics", uses_database=False,
           ok={200: Body(None, "Prometheus text exposition.", media_type="text/plain")})
def metrics_endpoint() -> Response:
    return Response(metrics.exposition(), mimetype="text/plain; version=0.0.4")


@operation(probes, "GET", "/openapi.json", summary="This document: the API contract (OpenAPI 3.1)", uses_database=False,
           ok={200: Body(None, "The OpenAPI document.", schema={"type": "object"})})
def openapi() -> Response:
    return jsonify(_document())


@functools.cache
def _document() -> dict[str, Any]:
    """Generated on first request, when every module that declares operations has been imported."""
    return contract.openapi_document()
