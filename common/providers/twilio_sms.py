"""SMS through Twilio's Messages API with the official ``twilio`` SDK, and its error table.

The same code talks to api.twilio.com and to the local sandbox; only the base URL and the
credentials differ. One SDK client per account shares a pooled HTTP session so many calls can
be in flight at once.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from typing import Any
from urllib.request import getproxies

import requests
import urllib3
from requests.adapters import HTTPAdapter
from twilio.base import values
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from common.errors import PermanentError, ProviderError, Throttled, TransientError, UnknownOutcome
from common.providers.sms import Accepted, OutboundSms

PROVIDER = "twilio"
logging.getLogger("twilio.http_client").setLevel(logging.WARNING)  # it logs every request at INFO

# Twilio's permanent error codes (PROVIDERS.md); retrying any of them cannot help.
PERMANENT_CODES = frozenset({
    20003,  # authentication failed
    21211,  # invalid To
    21212,  # invalid From
    21614,  # To is not a mobile number: not reachable by SMS (a route may fall back)
    21408,  # region not enabled
    21606,  # From cannot send
    21612,  # cannot route To-From
    21610,  # recipient replied STOP: the address is suppressed
    21623,  # more than 10 media
    21705,  # not a Messaging Service sid
    30004, 30005, 30006, 30007,  # blocked / unknown / landline / filtered
    63016,  # WhatsApp outside the 24 h window
})
# Codes that come with a 4xx status but clear by themselves: Twilio did not take the message.
TRANSIENT_CODES = frozenset({
    21611,  # the From number's queue is full
    30001,  # queue overflow
    30003,  # unreachable handset: may be reachable later
    30008,  # unknown error
})
SUPPRESS_CODES = {21610: "provider_21610"}  # code -> suppression reason
UNREACHABLE_CODES = frozenset({21614, 30006})  # this recipient cannot get SMS: try the next channel
THROTTLE_CODES = {20429}
LOOKUP_LIMIT = 50  # newest messages between one To and From looked at for an unknown outcome
RECEIPT_STATUSES = {"sent": "sent", "delivered": "delivered", "undelivered": "undelivered", "failed": "failed", "read": "read"}


def classify(status: int | None, code: int | None, message: str, retry_after: float | None) -> ProviderError:
    """Map a Twilio failure (HTTP status, Twilio code) onto the error vocabulary."""
    text = message or "Twilio request failed"
    code_text = str(code) if code is not None else (str(status) if status else None)
    if code in THROTTLE_CODES or status == 429:
        return Throttled(text, code=code_text, retry_after=retry_after)
    if code is not None and code in PERMANENT_CODES:
        return PermanentError(text, code=code_text, suppress=SUPPRESS_CODES.get(code), fallback=code in UNREACHABLE_CODES)
    if code is not None and code in TRANSIENT_CODES:
        return TransientError(text, code=code_text, retry_after=retry_after)
    if status is not None and 400 <= status < 500 and status not in (408, 409):
        return PermanentError(text, code=code_text)
    return TransientError(text, code=code_text, retry_after=retry_after)


class _HttpClient(TwilioHttpClient):
    """The SDK's client with a larger connection pool, remembering each call's Retry-After."""

    def __init__(self, pool_size: int, timeout: float):
        # Proxies from the environment are read once here: requests would otherwise scan the whole
        # environment on every call (about a tenth of a sender's CPU per message).
        proxies = {scheme: url for scheme, url in getproxies().items() if scheme in ("http", "https")}
        super().__init__(pool_connections=True, timeout=timeout, proxy=proxies or None)
        self.session.trust_env = False
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.last = threading.local()

    def request(self, *args, **kwargs) -> Response:  # type: ignore[override]
        response = super().request(*args, **kwargs)
        self.last.retry_after = response.headers.get("Retry-After") if response.headers else None
        return response


class TwilioSmsSender:
    """``SmsSender`` for one Twilio account."""

    provider = PROVIDER

    def __init__(self, account_sid: str, auth_token: str, *, api_base: str = "", pool_size: int = 64, timeout: float = 15.0):
        self._timeout = timeout
        self._http = _HttpClient(pool_size, timeout)
        self._client = Client(account_sid, auth_token, http_client=self._http)
        if api_base:
            self._client.api.base_url = api_base.rstrip("/")

    def send(self, sms: OutboundSms) -> Accepted:
        self._http.last.retry_after = None
        try:
            created = self._client.messages.create(**_create_fields(sms))
        except TwilioRestException as exc:
            raise classify(exc.status, exc.code, exc.msg, _seconds(self._http.last.retry_after)) from exc
        except Exception as exc:
            raise connection_failure(exc, self._timeout) from exc
        return _accepted(created)

    def find_sent(self, sms: OutboundSms, since: datetime) -> list[Accepted]:
        """Twilio's message list filtered by To and From, matched on body and creation time.

        No date filter is sent: Twilio's ``DateSent`` leaves out messages still queued, which are
        exactly the ones a lost answer may hide. A Messaging Service send has no From of ours (the
        service picks one of its numbers), so it is filtered by To alone.
        """
        try:
            found = self._client.messages.list(to=sms.to, from_=sms.from_ or values.unset, limit=LOOKUP_LIMIT)
        except TwilioRestException as exc:
            raise classify(exc.status, exc.code, exc.msg, _seconds(self._http.last.retry_after)) from exc
        except Exception as exc:
            raise TransientError(f"message lookup failed: {exc!r}", code="lookup") from exc
        return [_accepted(m) for m in found
                if m.body == sms.body and (m.date_created is None or m.date_created >= since)]


def _create_fields(sms: OutboundSms) -> dict[str, Any]:
    """The SDK's ``messages.create`` arguments: ``MessagingServiceSid`` instead of ``From`` when
    the message names a service, and one ``MediaUrl`` per media item for an MMS."""
    fields: dict[str, Any] = {"to": sms.to, "body": sms.body or values.unset, "status_callback": sms.status_callback}
    if sms.messaging_service_sid:
        fields["messaging_service_sid"] = sms.messaging_service_sid
    else:
        fields["from_"] = sms.from_
    if sms.media_urls:
        fields["media_url"] = list(sms.media_urls)
    return fields


def _accepted(resource: Any) -> Accepted:
    segments = int(resource.num_segments) if resource.num_segments else None
    return Accepted(provider_message_id=resource.sid, segments=segments, provider_status=resource.status or "")


# Failures that prove the request never reached Twilio: nothing was sent, so a retry is safe.
_NOT_SENT = (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError,
             urllib3.exceptions.NameResolutionError, requests.exceptions.ConnectTimeout,
             requests.exceptions.InvalidURL, requests.exceptions.MissingSchema)


def connection_failure(exc: BaseException, timeout: float) -> ProviderError:
    """Classify a call that ended without an HTTP answer.

    Only a failure to connect proves nothing was sent (transient: retried). Anything after the
    request may have been written — a read timeout, a connection aborted or reset mid-response,
    a broken chunked body, an answer we cannot read — is an unknown outcome: retrying could send
    a second SMS, so the message is looked up at Twilio instead (invariant 14).
    """
    reason: BaseException | None = exc
    for _ in range(8):  # the chain is short; never loop on a cycle
        if reason is None:
            break  # requests wraps urllib3's MaxRetryError, which wraps the cause
        if isinstance(reason, _NOT_SENT):
            return TransientError(f"could not connect: {exc}", code="connection")
        inner = getattr(reason, "reason", None)
        reason = inner if isinstance(inner, BaseException) else (reason.args[0] if reason.args and isinstance(reason.args[0], BaseException) else None)
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return UnknownOutcome(f"no answer within {timeout:g}s; the provider may have sent it")
    return UnknownOutcome(f"the answer was lost ({exc.__class__.__name__}: {exc}); the provider may have sent it")


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def signature_valid(auth_token: str, url: str, params: dict[str, str], signature: str) -> bool:
    """Check ``X-Twilio-Signature`` over the public URL Twilio called and the POST parameters."""
    return bool(signature) and RequestValidator(auth_token).validate(url, params, signature)
