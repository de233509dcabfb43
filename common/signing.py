"""Standard Webhooks signing for everything postroom POSTs to a customer: webhook events and the
``http`` channel's messages.

The secret is ``whsec_`` + base64 of random bytes; the signature is
``v1,`` + base64(HMAC-SHA256(secret bytes, "{id}.{timestamp}.{body}")), one per active secret,
space-separated while a rotated-out secret still signs. ``webhook-id`` stays the same across
retries, so the receiver can use it as its idempotency key. The seed systems' own headers
(``X-Webhook-Event``, ``X-Webhook-ID``, ``X-Webhook-Attempt``) ride along. ``verify`` checks a
webhook postroom receives signed the same way (the mail relay's bounce and inbound-mail hooks).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Sequence

PREFIX = "whsec_"
SECRET_BYTES = 32


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(PREFIX))


def signature(secrets_: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: one ``v1,`` signature per secret, space-separated."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join("v1," + base64.b64encode(hmac.new(_key(s), signed, hashlib.sha256).digest()).decode()
                    for s in secrets_)


def headers(secrets_: Sequence[str], msg_id: str, timestamp: int, body: bytes, *, event_type: str,
            attempt: int) -> dict[str, str]:
    """Every header of one signed POST."""
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secrets_, msg_id, timestamp, body),
        "X-Webhook-Event": event_type,
        "X-Webhook-ID": msg_id,
        "X-Webhook-Attempt": str(attempt),
        "user-agent": "postroom-webhooks/1",
    }


TOLERANCE_SECONDS = 300  # Standard Webhooks: a timestamp further off than this is a replay


def verify(secrets_: Sequence[str], msg_id: str, timestamp: str, body: bytes, signatures: str,
           now: float | None = None) -> bool:
    """Whether ``signatures`` (the ``webhook-signature`` header) holds a ``v1`` signature of
    ``{id}.{timestamp}.{body}`` by one of ``secrets_``, with the timestamp within
    TOLERANCE_SECONDS of ``now``. Missing headers, a malformed secret or timestamp: False."""
    if not (msg_id and timestamp.isascii() and timestamp.isdigit() and signatures):  # "²" is a digit to isdigit()
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > TOLERANCE_SECONDS:
        return False
    given = [s.removeprefix("v1,").encode() for s in signatures.split() if s.startswith("v1,")]
    for secret in secrets_:
        try:
            expected = signature([secret], msg_id, int(timestamp), body).removeprefix("v1,").encode()
        except (ValueError, TypeError):  # not a whsec_ base64 secret
            continue
        if any(hmac.compare_digest(expected, g) for g in given):
            return True
    return False
