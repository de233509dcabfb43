"""REST API v1 for looking ahead and inside: what is due (``GET /v1/messages/upcoming``) and the
pipeline's backlog per stage and lane (``GET /v1/stats``).

Both answer from partial indexes and the last hour of history, never a scan of every message
(``services.ingest.upcoming``, ``common.backlog``). Database figures are the caller's workspace's;
the broker's queue lengths are the deployment's, as the broker holds no workspace.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict
from datetime import UTC, datetime

import redis
from flask import Blueprint, Response, g, jsonify, request

from common import backlog
from common.db.connection import transaction
from services.ingest import upcoming
from services.ingest.contract import Body, operation, query
from services.ingest.errors import ApiError
from services.ingest.stats_models import Stats, Upcoming
from services.ingest.validation import query_int

stats_api = Blueprint("stats", __name__, url_prefix="/v1")
log = logging.getLogger("postroom.ingest.stats")

WITHIN = re.compile(r"([0-9]{1,6})([mhd])")
UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400}
MAX_WITHIN_DAYS = 31
DEFAULT_WITHIN = "24h"
MAX_LIMIT = 500
DEFAULT_LIMIT = 100


@operation(stats_api, "GET", "/messages/upcoming", summary="List scheduled messages due within a window, with counts",
           scope="messages:read", errors=(422,),
           ok={200: Body(Upcoming, "This workspace's scheduled messages due before `until`, soonest first, "
                                   "and counts over the whole window.")},
           headers=[query("within", f"The window from now: minutes, hours or days, e.g. 30m, 24h, 7d (default {DEFAULT_WITHIN}, "
                                    f"at most {MAX_WITHIN_DAYS}d).", pattern=r"^[0-9]{1,6}[mhd]$"),
                    query("limit", f"Messages per page, 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT}).",
                          type="integer", minimum=1, maximum=MAX_LIMIT),
                    query("cursor", "The previous page's `next_cursor`.", maxLength=40)])
def list_upcoming() -> tuple[Response, int]:
    within = _within(request.args.get("within", DEFAULT_WITHIN))
    limit = query_int("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    after = upcoming.after_cursor(request.args.get("cursor"))
    with transaction():
        found = upcoming.page(g.workspace_id, within, limit, after)
    return jsonify({"until": _iso(found.until), "messages": found.messages, "next_cursor": found.next_cursor,
                    "counts": found.counts}), 200


def _within(raw: str) -> int:
    """Seconds in a window such as 30m, 24h or 7d."""
    match = WITHIN.fullmatch(raw)
    seconds = int(match.group(1)) * UNIT_SECONDS[match.group(2)] if match else 0
    if not 0 < seconds <= MAX_WITHIN_DAYS * 86400:
        raise ApiError(422, "invalid_request", f"within must be a number of minutes, hours or days such as 30m, 24h or 7d, "
                       f"from 1m to {MAX_WITHIN_DAYS}d", "within")
    return seconds


@operation(stats_api, "GET", "/stats", summary="The backlog per stage and lane", scope="messages:read",
           ok={200: Body(Stats, "Per stage and lane: waiting, active, scheduled, completed and failed in the last hour, "
                                "the oldest waiting age (this workspace's messages); and the broker's queue lengths, "
                                "which are deployment-wide: every workspace's work together.")})
def get_stats() -> tuple[Response, int]:
    with transaction():
        figures = backlog.measure(g.workspace_id)
    queues: list[dict[str, object]] | None
    try:
        queues = [asdict(q) for q in backlog.queue_lengths()]
    except redis.RedisError as exc:  # the database figures stand on their own
        log.warning("stats without broker figures: %s: %s", exc.__class__.__name__, exc)
        queues = None
    stages = [{"stage": stage, "lane": lane, **asdict(f)} for (stage, lane), f in figures.items()]
    return jsonify({"at": _iso(datetime.now(UTC)), "stages": stages, "queues": queues}), 200


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()
