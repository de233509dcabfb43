"""What every HTTP provider client shares: the guarded session for addresses a workspace set,
how a call that ended without an answer is judged, and how a ``Retry-After`` header is read.

Twilio's client sends over urllib3, the WhatsApp clients and the http channel over requests;
``connection_failure`` knows both families of exceptions.
"""

from __future__ import annotations

import requests
import urllib3

from common.config import settings
from common.errors import ProviderError, TransientError, UnknownOutcome
from common.netguard import shared_session


def guarded_session(allowed_networks: str) -> requests.Session:
    """The process's pooled session through the SSRF guard (``common.netguard``) for the caller's
    allow-list (``settings.postroom_webhook_allowed_networks``), one per list, for every address a
    workspace configured (the http channel's URL, a provider API base, an attachment)."""
    return shared_session(allowed_networks, max(10, settings.postroom_sender_concurrency))


# Failures that prove the request never left: nothing was sent, so a retry is safe. urllib3's
# NameResolutionError is a NewConnectionError, which is a ConnectTimeoutError; a URL it cannot
# parse or whose scheme it does not know is a LocationValueError.
_NOT_SENT = (urllib3.exceptions.ConnectTimeoutError, urllib3.exceptions.LocationValueError,
             requests.exceptions.ConnectTimeout, requests.exceptions.InvalidURL, requests.exceptions.MissingSchema)
_READ_TIMEOUTS = (urllib3.exceptions.ReadTimeoutError, requests.exceptions.ReadTimeout)


def connection_failure(exc: BaseException, timeout: float) -> ProviderError:
    """Classify a call that ended without an HTTP answer, raised by urllib3 or by requests.

    Only a failure to connect proves nothing was sent (transient: retried). Anything after the
    request may have been written — a read timeout, a connection aborted or reset mid-response,
    a broken chunked body, an answer we cannot read or decode — is an unknown outcome: retrying
    could send a second message, so it is looked up at the provider instead (invariant 14).
    """
    reason: BaseException | None = exc
    for _ in range(8):  # the chain is short; never loop on a cycle
        if reason is None:
            break  # requests wraps urllib3's MaxRetryError, which wraps the cause
        if isinstance(reason, _NOT_SENT):
            return TransientError(f"could not connect: {exc}", code="connection")
        inner = getattr(reason, "reason", None)
        reason = inner if isinstance(inner, BaseException) else (reason.args[0] if reason.args and isinstance(reason.args[0], BaseException) else None)
    if isinstance(exc, _READ_TIMEOUTS):
        return UnknownOutcome(f"no answer within {timeout:g}s; the provider may have sent it")
    return UnknownOutcome(f"the answer was lost ({exc.__class__.__name__}: {exc}); the provider may have sent it")


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header in seconds (never negative), or None when absent or unreadable."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
