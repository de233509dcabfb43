"""SMS through Twilio's Messages API with the official ``twilio`` SDK, and its error table.

The same code talks to api.twilio.com and to the local sandbox; only the base URL and the
credentials differ. One SDK client per account sends through one pooled urllib3 transport (the
SDK's ``HttpClient`` interface, without ``requests``) so many calls can be in flight at once.
"""

from __future__ import annotations

import json
import logging
import threading
from base64 import b64encode
from datetime import datetime
from typing import Any
from urllib.parse import urlencode
from urllib.request import getproxies

import certifi
import urllib3
from twilio.base import values
from twilio.base.exceptions import TwilioRestException
from twilio.http import HttpClient
from twilio.http.request import Request as TwilioRequest
from twilio.http.response import Response
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from common.errors import PermanentError, ProviderError, Throttled, TransientError
from common.providers.sms import Accepted, OutboundSms
from common.providers.transport import connection_failure

PROVIDER = "twilio"

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


class _HttpClient(HttpClient):
    """The SDK's HTTP client interface over one shared urllib3 pool, remembering each call's
    Retry-After.

    It does what ``TwilioHttpClient`` does — the same form-encoded body (one field per item of a
    list, such as ``MediaUrl``), Basic auth, the SDK's headers, no retries, no redirects — without
    ``requests``, whose per-call preparation was most of a sender's CPU per message. Proxies
    (``HTTP_PROXY``/``HTTPS_PROXY``) are read from the environment once, here, as before.
    """

    def __init__(self, pool_size: int, timeout: float):
        super().__init__(logging.getLogger("twilio.http_client"), is_async=False, timeout=timeout)
        options: dict[str, Any] = {"num_pools": 4, "maxsize": pool_size, "retries": False, "ca_certs": certifi.where()}
        self._direct = urllib3.PoolManager(**options)
        self._proxied = {scheme: urllib3.ProxyManager(url, **options)
                         for scheme, url in getproxies().items() if scheme in ("http", "https")}
        self._limit = urllib3.Timeout(connect=timeout, read=timeout)
        self.last = threading.local()

    def request(self, method: str, url: str, params: dict[str, object] | None = None,
                data: dict[str, object] | None = None, headers: dict[str, str] | None = None,
                auth: tuple[str, str] | None = None, timeout: float | None = None,
                allow_redirects: bool = False) -> Response:
        """One call, answered or raised as urllib3 raises it (``connection_failure`` sorts those).

        ``allow_redirects`` is accepted for the interface only: the SDK never asks to follow one.
        """
        limit = self._limit
        if timeout is not None and timeout != self.timeout:
            if timeout <= 0:
                raise ValueError(timeout)
            limit = urllib3.Timeout(connect=timeout, read=timeout)
        self._test_only_last_response = None
        self._test_only_last_request = TwilioRequest(method=method, url=url, params=params, data=data,
                                                     headers=headers, auth=auth)
        wire_headers = {"Accept-Encoding": "gzip, deflate", **(headers or {})}
        if auth:
            wire_headers["Authorization"] = "Basic " + b64encode(f"{auth[0]}:{auth[1]}".encode("latin-1")).decode()
        if params:
            url += ("&" if "?" in url else "?") + urlencode(_fields(params), doseq=True)
        body = None
        if data:
            if wire_headers.get("Content-Type") in ("application/json", "application/scim+json"):
                body = json.dumps(data).encode()
            else:
                body = urlencode(_fields(data), doseq=True).encode()
        pool = self._proxied.get(url.partition(":")[0].lower(), self._direct)
        answer = pool.urlopen(method.upper(), url, body=body, headers=wire_headers, redirect=False, timeout=limit)
        self.last.retry_after = answer.headers.get("Retry-After")
        response = Response(answer.status, _text(answer.data, answer.headers.get("Content-Type", "")), answer.headers)
        self._test_only_last_response = response
        return response


def _fields(values_: dict[str, object]) -> dict[str, object]:
    """Form fields as ``requests`` encoded them for the SDK: ``None`` left out, at the top level
    and inside a list."""
    return {name: [item for item in value if item is not None] if isinstance(value, list) else value
            for name, value in values_.items() if value is not None}


def _text(body: bytes, content_type: str) -> str:
    """The answer's text in its declared charset (UTF-8, Twilio's, when none is named)."""
    charset = "utf-8"
    for part in content_type.split(";")[1:]:
        name, _, value = part.strip().partition("=")
        if name.lower() == "charset" and value:
            charset = value.strip("\"' ")
    try:
        return body.decode(charset, errors="replace")
    except LookupError:  # a charset Python does not know
        return body.decode("utf-8", errors="replace")


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


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def signature_valid(auth_token: str, url: str, params: dict[str, str], signature: str) -> bool:
    """Check ``X-Twilio-Signature`` over the public URL Twilio called and the POST parameters."""
    return bool(signature) and RequestValidator(auth_token).validate(url, params, signature)
