"""Prometheus metric objects shared by every service.

Label values are bounded: channel, provider, outcome, status, stage, lane — never a workspace,
an id or an address. In local runs and under gunicorn the processes of one service share a
``PROMETHEUS_MULTIPROC_DIR`` (set before this module is imported, see ``common.broker``), and the
service's exposition endpoint aggregates them.
"""

from __future__ import annotations

import os
from collections import Counter as Tally
from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30)

MESSAGES = Counter(
    "postroom_messages_total",
    "Messages entering a status, by channel and status.",
    ["channel", "status"],
)
PROVIDER_REQUESTS = Histogram(
    "postroom_provider_request_seconds",
    "Provider API calls by provider and outcome (ok, permanent, transient, throttled, unknown).",
    ["provider", "outcome"],
    buckets=LATENCY_BUCKETS,
)
END_TO_END = Histogram(
    "postroom_accepted_to_sent_seconds",
    "Time from acceptance by the API to the provider accepting the message.",
    ["channel", "lane"],
    buckets=LATENCY_BUCKETS,
)
REDRIVEN = Counter(
    "postroom_reconciler_redriven_total",
    "Messages the reconciler re-enqueued or failed because they waited past their deadline.",
    ["status"],
)
UNKNOWN_OUTCOMES = Counter(
    "postroom_unknown_outcomes_total",
    "Sends whose outcome was unknown (the answer was lost after the request may have been written), by what became of them: reported, found (at the provider: recorded as sent), resent (not found), failed",
    ["channel", "resolution"],
)
RATE_LIMIT_WAITS = Counter(
    "postroom_rate_limit_waits_total",
    "Sends postponed because a provider account was out of tokens or paused by a 429.",
    ["provider"],
)
FALLBACKS = Counter(
    "postroom_fallbacks_total",
    "Messages moved on to the next channel of their route because the recipient was unreachable, by the channel moved to.",
    ["channel"],
)
INBOUND = Counter(
    "postroom_inbound_messages_total",
    "Inbound messages stored in a conversation, by channel and outcome (stored, duplicate).",
    ["channel", "outcome"],
)
PROVIDER_WEBHOOKS = Counter(
    "postroom_provider_webhooks_total",
    "Provider webhooks received, by provider, kind and verdict (applied, pending, ignored, bad_signature).",
    ["provider", "kind", "verdict"],
)
API_REQUESTS = Histogram(
    "postroom_api_request_seconds",
    "Ingest API requests by endpoint and status class.",
    ["endpoint", "code"],
    buckets=LATENCY_BUCKETS,
)


WEBHOOK_DELIVERIES = Histogram(
    "postroom_webhook_delivery_seconds",
    "Webhook delivery attempts to customer endpoints by outcome (succeeded, retried, throttled, failed, blocked), with their latency.",
    ["outcome"],
    buckets=LATENCY_BUCKETS,
)
WEBHOOK_LAG = Gauge(
    "postroom_webhook_outbox_lag_seconds",
    "Age of the oldest event not yet delivered to every endpoint that wants it (undispatched outbox rows and deliveries due).",
    multiprocess_mode="max",
)
ENDPOINTS_DISABLED = Counter(
    "postroom_webhook_endpoints_disabled_total",
    "Webhook endpoints disabled automatically, by reason (gone: answered 410; failing: failed for the disable window).",
    ["reason"],
)
# The backlog, set every few seconds by the scheduler's backlog duty (services/scheduler/backlog.py)
# from the database, deployment-wide. Only the scheduler sets them: "mostrecent" keeps the last
# value it set, so a drained backlog reads 0 even where an earlier process left a higher one.
MESSAGES_WAITING = Gauge(
    "postroom_messages_waiting",
    "Messages ready for a stage and not yet taken, by stage and lane (for webhooks: deliveries due).",
    ["stage", "lane"],
    multiprocess_mode="mostrecent",
)
OLDEST_WAITING = Gauge(
    "postroom_oldest_waiting_seconds",
    "How long the oldest message ready for a stage has waited (since it entered the status, or fell due), by stage and lane; 0 when none waits.",
    ["stage", "lane"],
    multiprocess_mode="mostrecent",
)
SCHEDULED_DUE_NEXT_HOUR = Gauge(
    "postroom_scheduled_due_next_hour",
    "Scheduled messages (send_at, quiet-hour holds) falling due within the next hour.",
    multiprocess_mode="mostrecent",
)
DB_STATEMENTS = Counter(
    "postroom_db_statements_total",
    "SQL statements this service sent to PostgreSQL (each PREPARE and EXECUTE counts; BEGIN and COMMIT do not).",
)
SCHEDULE_LAG = Histogram(
    "postroom_schedule_lag_seconds",
    "How late a scheduled message was handed to processing: hand-off time minus its due time, by lane.",
    ["lane"],
    buckets=LATENCY_BUCKETS + (60, 300),
)
AI_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120)
AI_REQUESTS = Histogram(
    "postroom_ai_request_seconds",
    "Model calls of the AI stage by model (folded: the first 20 names a process sees, then `other`) and outcome (ok, throttled, transient, permanent, malformed), with their latency.",
    ["model", "outcome"],
    buckets=AI_LATENCY_BUCKETS,
)
AI_TOKENS = Counter(
    "postroom_ai_tokens_total",
    "Tokens the model servers reported (or estimated at 4 characters a token when they sent no usage), by model and kind (prompt, completion).",
    ["model", "kind"],
)
AI_ANSWERS = Counter(
    "postroom_ai_answers_total",
    "AI turns by outcome (answered, handoff, error, superseded, skipped) and reason (answered: openai or extractive; handoff: model, keyword, low_confidence, malformed, quota, reply_limit; error: provider_error, stuck; superseded: human_took_over; skipped: the conversation's status).",
    ["outcome", "reason"],
)
AI_INBOUND_TO_REPLY = Histogram(
    "postroom_ai_inbound_to_reply_seconds",
    "Time from storing an inbound message to the AI stage committing its reply (or handoff message), by plan lane.",
    ["lane"],
    buckets=AI_LATENCY_BUCKETS,
)
CONVERSATION_STATUS_CHANGES = Counter(
    "postroom_conversation_status_changes_total",
    "Conversations moved to a status (bot, open, resolved), by who moved them (api, agent, bot, inbound, reconciler).",
    ["status", "by"],
)
WIDGET_STREAMS = Gauge(
    "postroom_widget_streams",
    "Web chat widget event streams (SSE) open now.",
    multiprocess_mode="livesum",
)
WIDGET_VISITOR_MESSAGES = Counter(
    "postroom_widget_visitor_messages_total",
    "Messages widget visitors posted, by outcome (accepted, duplicate, limited: over the rate limit, refused: too large or invalid).",
    ["outcome"],
)

MODEL_LABELS = 20  # distinct model names one process labels; tenants choose them, so the rest are "other"
_models: set[str] = set()


def model_label(model: str | None) -> str:
    """``model`` as a bounded label value: the first MODEL_LABELS names this process sees (at most
    64 characters each), every later one ``other``."""
    name = (model or "unknown")[:64]
    if name in _models:
        return name
    if len(_models) < MODEL_LABELS:
        _models.add(name)
        return name
    return "other"


# Create every bounded label value at zero, so the first real increment is a visible increase.
for _status in ("accepted", "queued", "routed", "sending"):
    REDRIVEN.labels(status=_status)
for _verdict in ("kept", "applied", "pending", "ignored", "bad_signature"):
    PROVIDER_WEBHOOKS.labels(provider="twilio", kind="status", verdict=_verdict)
RATE_LIMIT_WAITS.labels(provider="twilio")
for _outcome in ("succeeded", "retried", "throttled", "failed", "blocked"):
    WEBHOOK_DELIVERIES.labels(outcome=_outcome)
for _reason in ("gone", "failing"):
    ENDPOINTS_DISABLED.labels(reason=_reason)
for _lane in ("urgent", "normal", "bulk"):
    SCHEDULE_LAG.labels(lane=_lane)
for _lane in ("premium", "pro", "basic"):
    AI_INBOUND_TO_REPLY.labels(lane=_lane)
for _outcome in ("answered", "handoff", "error", "superseded"):
    AI_ANSWERS.labels(outcome=_outcome, reason="model")


def count_transitions(status: str, channels: Iterable[str]) -> None:
    """Count messages that entered ``status``, one per element of ``channels``."""
    for channel, n in Tally(channels).items():
        MESSAGES.labels(channel=channel, status=status).inc(n)


def registry() -> CollectorRegistry:
    """The registry to expose: every process of this service in multiprocess mode, else this one."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        collected = CollectorRegistry()
        multiprocess.MultiProcessCollector(collected)
        return collected
    from prometheus_client import REGISTRY

    return REGISTRY


def exposition() -> bytes:
    return generate_latest(registry())


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Expose /metrics from a background thread (processes that are not gunicorn or dramatiq)."""
    start_http_server(port, addr=host, registry=registry())
