"""What every compatibility route shares: its declaration, its error shape, and the identity check.

The compatibility routes (``/api/...``, issue 12) let clients of the queue services postroom
replaces keep their calls; each is a thin adapter over the /v1 core. Here is what they have in
common, so that no route does it its own way:

- ``compat_operation``: ``contract.operation`` with the ``compat`` tag, the API key also accepted
  in ``x-api-key``, and ``CompatError`` documented as the error body.
- The error shape the old clients parse, ``{"success": false, "error": <message>, "code": <code>,
  "field"?: <field>}`` (S2's, used for all of them), for every refusal of a styled blueprint:
  the contract's (401/403/413/422/429), idempotency's, the database outage's (503) and the 500
  handler's alike (``errors.STYLES``, chosen by ``request.blueprint``).
- ``check_identity``: the identity fields the old systems used (``workspaceId``, ``x-user-id``)
  must name the API key's own workspace: its id, its name, or one of its ``compat_identities``
  (``workspace_alias``). Anything else is 403 ``identity_mismatch``, the same for an unknown word
  as for another tenant's, so the answer never tells which exists. It runs before the view reads
  or writes anything.
- The workspace's time zone and the reading of the callers' times (``workspace_zone``,
  ``is_local``, ``offset_of``, ``iso_in_offset``): a time written without an offset is read in
  the workspace's zone, and an answer is given in the offset the caller wrote.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timezone
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from flask import Blueprint, Flask, Response, g, jsonify
from pydantic import BaseModel, Field

from common.db.connection import fetch, transaction
from services.ingest import contract, errors
from services.ingest.errors import ApiError

TAGS = ("compat",)
KEY_HEADERS = ("x-api-key",)
PREFIX = "/api"
MAX_IDENTITIES = 50


class CompatError(BaseModel):
    """Every refusal and failure of a compatibility route has this body (the old clients' shape)."""

    success: Literal[False] = Field(description="Always false.")
    error: str = Field(description="What is wrong and what to do about it.")
    code: str = Field(description="Machine-readable, e.g. unauthorized, identity_mismatch, invalid_request, unavailable.")
    field: str | None = Field(None, description="The field or header at fault, when there is one (left out otherwise).")


def compat_style(status: int, code: str, message: str, field: str | None,
                 headers: dict[str, str]) -> tuple[Response, int]:
    """A refusal in the compatibility shape; its headers (Retry-After, RateLimit-*) are kept."""
    body: dict[str, Any] = {"success": False, "error": message, "code": code}
    if field:
        body["field"] = field
    response = jsonify(body)
    response.headers.update(headers)
    return response, status


def styled(bp: Blueprint) -> Blueprint:
    """Answer every error of ``bp``'s routes in the compatibility shape."""
    errors.STYLES[bp.name] = compat_style
    return bp


def blueprint(name: str, import_name: str, *, url_prefix: str = PREFIX, style: bool = True) -> Blueprint:
    """A compatibility blueprint under ``/api``, its errors in the compatibility shape (``style``:
    not for a route that answers a provider, such as the WhatsApp webhook on its old path)."""
    bp = Blueprint(name, import_name, url_prefix=url_prefix)
    return styled(bp) if style else bp


# A request under /api/ that matched no route (404, 405) is answered in the compat shape too.
errors.PATH_STYLES[PREFIX + "/"] = compat_style


def compat_operation(bp: Blueprint | Flask, method: str, path: str, *, summary: str,
                     tags: Iterable[str] = TAGS, key_headers: Iterable[str] = KEY_HEADERS,
                     error_model: type[BaseModel] = CompatError,
                     **declared: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``contract.operation`` for a compatibility route: tagged ``compat``, the key also taken from
    ``x-api-key``, errors documented as ``CompatError``. Every other argument is the contract's
    (``ok``, ``errors``, ``scope``, ``request``, ``headers``, ``text_params``, ``rerun_safe``,
    ``body_optional`` ...)."""
    return contract.operation(bp, method, path, summary=summary, tags=tags, key_headers=key_headers,
                              error_model=error_model, **declared)


def success(**fields: Any) -> tuple[Response, int]:
    """A success in the compatibility shape: ``{"success": true, **fields}``, with 200 for every
    one, as the old clients expect (no seed documents another status)."""
    return jsonify({"success": True, **fields}), 200


def check_identity(*values: object, field: str | None = None) -> None:
    """Each given identity value names the API key's workspace (``g.workspace_id``): its id, its
    name or one of its aliases. None and blank values are not given (the old clients' fields are
    optional). Call it before the view reads or writes anything.

    Raises:
      ApiError: 403 ``identity_mismatch`` naming ``field``, for an unknown word and for another
        workspace's alike.
    """
    given = [text for text in (str(v).strip() for v in values if v is not None) if text]
    if not given:
        return
    known = identities(g.workspace_id)
    for text in given:
        if text not in known:
            raise ApiError(403, "identity_mismatch", f"{text[:100]!r} does not name this API key's workspace; use its id or "
                           "name, or register the old identity in compat_identities (PATCH /v1/workspace/settings)", field)


def identities(workspace_id: int) -> frozenset[str]:
    """Every word that names ``workspace_id``: its id, its name, its aliases (read once a request)."""
    cached = g.get("compat_identities")
    if cached is not None and cached[0] == workspace_id:
        return cached[1]  # type: ignore[no-any-return]
    with transaction():
        rows = fetch("SELECT w.name, array(SELECT alias FROM workspace_alias a WHERE a.workspace_id = w.id)"
                     " FROM workspace w WHERE w.id = %s", (workspace_id,))
    found = frozenset({str(workspace_id), rows[0][0], *rows[0][1]}) if rows else frozenset({str(workspace_id)})
    g.compat_identities = (workspace_id, found)
    return found


def aliases(workspace_id: int) -> list[str]:
    """The workspace's ``compat_identities``, sorted. Runs in the caller's transaction."""
    rows = fetch("SELECT alias FROM workspace_alias WHERE workspace_id = %s ORDER BY alias", (workspace_id,))
    return [row[0] for row in rows]


def set_aliases(workspace_id: int, names: Iterable[str]) -> list[str]:
    """Make ``names`` the workspace's ``compat_identities`` (replacing the others) in one statement;
    returns them as now set. Runs in the caller's transaction."""
    wanted = sorted(set(names))
    fetch("WITH gone AS (DELETE FROM workspace_alias WHERE workspace_id = %(ws)s AND NOT (alias = ANY(%(names)s::text[])))"
          " INSERT INTO workspace_alias (workspace_id, alias) SELECT %(ws)s, unnest(%(names)s::text[])"
          " ON CONFLICT DO NOTHING", {"ws": workspace_id, "names": wanted})
    return wanted


def iso_in_offset(at: datetime | str | None, like: str | None = None, zone: str | None = None) -> str | None:
    """``at`` as ISO 8601 to the second, in the UTC offset the caller's own timestamp ``like``
    carries (S2 answers ``+10:00`` to a ``+10:00`` request), else in the IANA ``zone`` (the
    workspace's), else in UTC. None stays None."""
    if at is None:
        return None
    moment = datetime.fromisoformat(at) if isinstance(at, str) else at
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    target: Any = UTC
    offset = offset_of(like)
    if offset is not None:
        target = offset
    elif zone:
        try:
            target = ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            target = UTC
    return moment.astimezone(target).isoformat(timespec="seconds")


def offset_of(stamp: str | None) -> timezone | None:
    """The fixed UTC offset written in an ISO 8601 timestamp, or None (none written, or not one)."""
    parsed = _parsed(stamp)
    offset = parsed.utcoffset() if parsed is not None else None
    return timezone(offset) if offset is not None else None


def is_local(stamp: str) -> bool:
    """Whether ``stamp`` is an ISO 8601 time written without a UTC offset: the routes read it in
    the workspace's zone (``workspace_zone``). One that does not parse is not: the due-time check
    refuses it, naming the caller's field."""
    parsed = _parsed(stamp)
    return parsed is not None and parsed.tzinfo is None


def _parsed(stamp: str | None) -> datetime | None:
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp.strip().replace("z", "Z"))
    except ValueError:
        return None


def workspace_zone(workspace_id: int) -> str:
    """The workspace's IANA time zone, in which a caller's local time is read and an answer without
    the caller's own offset is given; read once a request."""
    cached = g.get("compat_zone")
    if cached is not None and cached[0] == workspace_id:
        return str(cached[1])
    with transaction():
        rows = fetch("SELECT timezone FROM workspace WHERE id = %s", (workspace_id,))
    zone = str(rows[0][0]) if rows else "UTC"
    g.compat_zone = (workspace_id, zone)
    return zone
