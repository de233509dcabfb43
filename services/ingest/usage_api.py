"""REST API v1: ``GET /v1/usage``, what the workspace used, by day, channel or model.

It answers from the usage log (``common.usage``: inbound messages, conversation replies, AI calls
with their tokens, latency and outcome) and, by day and by channel, counts API and campaign sends
from the messages themselves.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from flask import Blueprint, Response, g, jsonify, request

from common import usage
from common.db.connection import fetch, transaction
from services.ingest.contract import Body, operation, query
from services.ingest.errors import ApiError
from services.ingest.usage_models import Usage

usage_api = Blueprint("usage", __name__, url_prefix="/v1")
MAX_DAYS = 366
DEFAULT_DAYS = 30
DATE = "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"


def _day(name: str) -> date | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        if not re.match(DATE, raw):
            raise ValueError(raw)
        return date.fromisoformat(raw)
    except ValueError:
        raise ApiError(422, "invalid_request", f"{name} must be a date, YYYY-MM-DD", name) from None


@operation(usage_api, "GET", "/usage", summary="What the workspace used", scope="messages:read",
           ok={200: Body(Usage, "One row per day, channel or model.")}, errors=(422,),
           headers=[query("from", "First day, YYYY-MM-DD (default: 30 days before `to`).", pattern=DATE),
                    query("to", "Last day, included (default: today in the workspace's time zone).", pattern=DATE),
                    query("group_by", "day (default), channel or model.", enum=list(usage.GROUPS))])
def get_usage() -> tuple[Response, int]:
    group_by = request.args.get("group_by", "day")
    if group_by not in usage.GROUPS:
        raise ApiError(422, "invalid_request", f"group_by must be one of: {', '.join(usage.GROUPS)}", "group_by")
    start, end = _day("from"), _day("to")
    with transaction():
        if end is None:
            zone = fetch("SELECT timezone FROM workspace WHERE id = %s", (g.workspace_id,))[0][0]
            end = datetime.now(ZoneInfo(zone)).date()
        if start is None:  # the 30 days to `to` (as many as there are before year 1)
            start = end - min(timedelta(days=DEFAULT_DAYS - 1), end - date.min)
        if start > end:
            raise ApiError(422, "invalid_request", "from must not be after to", "from")
        if (end - start).days + 1 > MAX_DAYS:
            raise ApiError(422, "invalid_request", f"a report spans at most {MAX_DAYS} days", "from")
        rows = usage.report(g.workspace_id, start, end, group_by)
    return jsonify({"from": start.isoformat(), "to": end.isoformat(), "group_by": group_by, "rows": rows}), 200
