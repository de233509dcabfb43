"""Idempotency for every authenticated POST: the same ``Idempotency-Key`` gets the same answer.

A request with a key first claims it (``idempotent_request``, state ``running``, committed at
once so that a concurrent duplicate sees it), then runs its view, then stores the answer (state
``done``): a 2xx or a 4xx is what the request did, and is replayed to every later request with
the same key and the same fingerprint (method, path and body), marked ``Idempotent-Replayed:
true``. A 5xx, or an exception, before the request committed anything releases the claim: nothing
was done, and a retry must be able to run; after a commit it is stored as the answer instead
(500 ``incomplete``), since running the request again could repeat what it stored. The same key with another request is refused (409
``idempotency_conflict``), and so is a duplicate arriving while the first still runs (409
``idempotency_in_progress``, with Retry-After).

A claim left ``running`` past its lease belonged to a process that died mid-request; the next
request with that key takes it over (a compare-and-set in the claim's upsert) and runs again.
Re-running must not repeat what the dead one committed: a message's insert carries the key itself
(``message.idempotency_key``, atomic with the row), so a re-run finds the message instead of
making another. Keys expire after POSTROOM_IDEMPOTENCY_TTL_SECONDS: an expired row counts as
absent (the claim replaces it), and the scheduler's retention pass deletes expired rows.

Stored answers are sealed like provider credentials (``common.crypto``): some hold a secret
shown once, such as a new webhook endpoint's signing secret, which a replay must show again.

Validation errors (400/422 before the view runs) are answered without claiming anything: the
contract validates the body before ``run_once`` is called.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Response, g, make_response, request
from flask.typing import ResponseReturnValue
from psycopg2.extras import Json

from common import crypto
from common.config import settings
from common.db import connection
from common.db.connection import fetch, fetch_dicts, transaction
from services.ingest import bounds
from services.ingest.errors import ApiError, error, render

log = logging.getLogger("postroom.ingest.idempotency")

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY = 255
# The message keys postroom gives recurring occurrences and sequence steps (``common.intake``) and
# the compatibility routes derive from old clients' ids (S0 ``messageId``): a client's key that
# looked like one could take an occurrence's or an old client's message's place.
RESERVED_PREFIXES = ("sched:", "enrol:", "compat:")
def lease_seconds() -> float:
    """How long this request holds its claim: longer than it runs. A claim older than this was
    left by a process that died, or one that could not release it because the database went away
    mid-request. An ordinary request's statements give up after POSTROOM_API_DB_TIMEOUT_SECONDS; a
    bulk one (a campaign, a page of recipients, a contact import, a batch: the routes with the
    larger body limit) may run several of up to POSTROOM_CAMPAIGN_DB_TIMEOUT_SECONDS each."""
    lease = settings.postroom_idempotency_lease_seconds
    if bounds.body_limit(request.path) > settings.postroom_max_request_bytes:
        return max(lease, 3 * settings.postroom_campaign_db_timeout_seconds)
    return lease
# Headers of the view's answer that are its own (not hop-by-hop or recomputed on replay).
_NOT_STORED = ("content-length", "date", "server", "connection", "transfer-encoding")

_CLAIM = """
INSERT INTO idempotent_request AS r (workspace_id, key, fingerprint, claim, lease_until)
VALUES (%(ws)s, %(key)s, %(fp)s, %(claim)s, now() + %(lease)s * interval '1 second')
ON CONFLICT (workspace_id, key) DO UPDATE
    SET fingerprint = EXCLUDED.fingerprint, state = 'running', claim = EXCLUDED.claim, lease_until = EXCLUDED.lease_until,
        status = NULL, body = NULL, headers = NULL,
        created_at = CASE WHEN r.created_at < now() - %(ttl)s * interval '1 second' THEN now() ELSE r.created_at END
    -- an expired key is a new one; a running claim past its lease, for this same request, is taken over
    WHERE r.created_at < now() - %(ttl)s * interval '1 second'
       OR (r.state = 'running' AND r.lease_until < now() AND r.fingerprint = EXCLUDED.fingerprint)
RETURNING created_at = now() AS fresh
"""
_EXISTING = """
SELECT fingerprint, state, status, body, headers FROM idempotent_request
WHERE workspace_id = %(ws)s AND key = %(key)s AND created_at >= now() - %(ttl)s * interval '1 second'
"""
_STORE = """
UPDATE idempotent_request SET state = 'done', status = %(status)s, body = %(body)s, headers = %(headers)s
WHERE workspace_id = %(ws)s AND key = %(key)s AND claim = %(claim)s AND state = 'running'
"""
_RELEASE = "DELETE FROM idempotent_request WHERE workspace_id = %(ws)s AND key = %(key)s AND claim = %(claim)s AND state = 'running'"

@dataclass(frozen=True)
class Claim:
    """This request holds the key: ``fresh`` when it is the key's first use (or first since it
    expired), not a takeover of a dead request's claim."""

    workspace_id: int
    key: str
    token: str
    fresh: bool


def requested_key() -> str | None:
    """The request's Idempotency-Key, or None without one.

    Raises:
      ApiError: 400 naming the header when it is empty, too long or not printable.
    """
    key = request.headers.get(HEADER)
    if key is not None and not (0 < len(key) <= MAX_KEY and key.isprintable()):
        raise ApiError(400, "invalid_request", f"{HEADER} must be 1 to {MAX_KEY} printable characters", HEADER)
    if key is not None and key.startswith(RESERVED_PREFIXES):
        raise ApiError(400, "invalid_request", f"{HEADER} may not start with {' or '.join(RESERVED_PREFIXES)}:"
                       " postroom keys its own recurring occurrences, sequence steps and compatibility messages so", HEADER)
    return key


def fingerprint() -> str:
    """What makes two requests the same request: SHA-256 of method, path (with query) and body."""
    digest = hashlib.sha256(f"{request.method}\n{request.full_path}\n".encode())
    digest.update(request.get_data(cache=True))
    return digest.hexdigest()


def claim(workspace_id: int, key: str, fp: str, lease: float | None = None) -> Claim | Response:
    """Claim ``key`` for this request, or the answer it gets instead (a replay).

    Raises:
      ApiError: 409 ``idempotency_conflict`` (the key was used for another request) or
        ``idempotency_in_progress`` (the first request with it is still running).
    """
    token = str(uuid.uuid4())
    params = {"ws": workspace_id, "key": key, "fp": fp, "claim": token, "lease": settings.postroom_idempotency_lease_seconds if lease is None else lease,
              "ttl": settings.postroom_idempotency_ttl_seconds}
    for _ in range(3):  # a row deleted between the two statements: claim again
        with transaction(single_statement=True):
            claimed = fetch(_CLAIM, params)
        if claimed:
            return Claim(workspace_id, key, token, bool(claimed[0][0]))
        with transaction(single_statement=True):
            found = fetch_dicts(_EXISTING, params)
        if found:
            return _answer_for(found[0], fp)
    raise ApiError(409, "idempotency_in_progress", f"a request with this {HEADER} is changing right now; retry shortly",
                   HEADER, headers={"Retry-After": "1"})


def _answer_for(row: dict[str, Any], fp: str) -> Response:
    if row["fingerprint"] != fp:
        raise ApiError(409, "idempotency_conflict", f"this {HEADER} was already used for a different request "
                       "(another method, path or body)", HEADER)
    if row["state"] != "done":
        raise ApiError(409, "idempotency_in_progress", f"the first request with this {HEADER} is still running; "
                       "retry after Retry-After seconds to get its answer", HEADER, headers={"Retry-After": "1"})
    body = crypto.unseal(bytes(row["body"]))["body"]
    response = Response(body.encode("utf-8", "surrogateescape"), status=row["status"], headers=[tuple(h) for h in row["headers"]])
    response.headers[REPLAYED_HEADER] = "true"
    return response


def store(held: Claim, response: Response) -> None:
    """Keep the answer for replays; a failure leaves the claim to expire its lease (and logs)."""
    headers = [[name, value] for name, value in response.headers.items() if name.lower() not in _NOT_STORED]
    try:
        with transaction(single_statement=True):
            fetch(_STORE, {"ws": held.workspace_id, "key": held.key, "claim": held.token, "status": response.status_code,
                           "body": crypto.seal({"body": response.get_data().decode("utf-8", "surrogateescape")}),
                           "headers": Json(headers)})
    except Exception:  # noqa: BLE001 - the work is done and answered; a retry waits out the lease, then re-runs safely
        log.exception("could not store the answer for an Idempotency-Key; a retry may run again after the lease")


def release(held: Claim) -> None:
    """Give the key up: the request did nothing that a retry must not do again."""
    try:
        with transaction(single_statement=True):
            fetch(_RELEASE, {"ws": held.workspace_id, "key": held.key, "claim": held.token})
    except Exception:  # noqa: BLE001 - the database is likely down; the claim's lease ends it
        log.warning("could not release an Idempotency-Key claim; it ends with its lease")


def run_once(view: Callable[[], ResponseReturnValue], rerun_safe: bool = False) -> ResponseReturnValue:
    """Run ``view`` under the request's Idempotency-Key, if it has one (``g.idempotency`` is the
    claim while it runs); without a key, just run it. A claim taken over from a request that died
    mid-way runs the view again only when it is ``rerun_safe`` (what it stores carries the key and
    is found again); otherwise what the dead request did is unknown, and running it again could
    do it twice (a second campaign), so the key's answer is 500 ``incomplete``."""
    key = requested_key()
    if key is None:
        return view()
    outcome = claim(g.workspace_id, key, fingerprint(), lease_seconds())
    if isinstance(outcome, Response):
        return outcome
    if not outcome.fresh and not rerun_safe:
        response = make_response(error(500, "incomplete", f"the first request with this {HEADER} stopped before it "
                                       "answered; what it stored, if anything, stands: look before repeating it under a new key"))
        store(outcome, response)
        return response
    g.idempotency = outcome
    before = connection.commits()
    try:
        response = make_response(view())
    except ApiError as exc:
        if exc.status >= 500:
            return _failed(outcome, before, exc)
        response = make_response(render(exc))
    except Exception as exc:
        return _failed(outcome, before, exc)
    if response.status_code >= 500 and connection.commits() == before:
        release(outcome)
    else:
        store(outcome, response)
    return response


def _failed(held: Claim, before: int, exc: Exception) -> Response:
    """A request that failed: before it committed anything, its key is given back and the failure
    raised as usual (a retry runs it). After a commit, part of it is stored, and running it again
    could do that part twice (a second campaign): the failure is the key's answer from now on."""
    if connection.commits() == before:
        release(held)
        raise exc
    log.error("a request with an Idempotency-Key failed after it committed: %s: %s", type(exc).__name__, exc)
    response = make_response(error(500, "incomplete", f"the request failed after part of it was stored ({type(exc).__name__});"
                                   f" what was stored stands, and repeating it with this {HEADER} answers this again"))
    store(held, response)
    return response

