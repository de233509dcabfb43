"""The Twilio Messages API (2010-04-01) on its real wire format: send and fetch a message.

``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` takes HTTP Basic auth as one of the
sandbox's accounts and a form, answers 201 with Twilio's full message resource or Twilio's error
body, and hands the accepted message to the status-callback sender. Order of checks on a send
call: injected latency, authentication, injected error (consumed only by authenticated calls),
Twilio's own validation; then the message is recorded, and only then may its answer be lost
(connection cut, or held past the client's timeout), as when a real provider took the message
but the network lost the reply. The list of messages is in ``twilio_list``.

Besides its accounts, the sandbox takes Twilio's test credentials (``TEST_ACCOUNT_SID`` /
``TEST_AUTH_TOKEN``): with them, as at Twilio, the magic numbers +1500555xxxx answer fixed
errors and a passing call is answered but nothing is sent, recorded or called back. Live
accounts never see magic outcomes, so tests and benchmarks may use any +1500555 number.
"""

from __future__ import annotations

import hmac
import logging
import re
import uuid
from collections import OrderedDict
from email.utils import format_datetime

import gevent
from flask import Blueprint, Response, current_app, jsonify, request

from common.segments import count_segments
from services.sandbox.lost_answer import lose_answer
from services.sandbox.records import ReceivedMessage
from services.sandbox.state import SandboxState, current_sandbox
from services.sandbox.twilio_errors import twilio_error

API_VERSION = "2010-04-01"
CHANNEL = "sms"
E164 = re.compile(r"^\+[1-9]\d{6,14}$")
MAX_BODY_CHARS = 1600
MAX_MEDIA = 10
MESSAGING_SERVICE_SID = re.compile(r"^MG[0-9a-f]{32}$")

# Twilio's test credentials and their magic numbers (PROVIDERS.md, "Twilio: test credentials").
TEST_ACCOUNT_SID = "AC" + "7e57" * 8
TEST_AUTH_TOKEN = "sandbox-test-auth-token"
MAGIC_FROM_PASSES = "+15005550006"
MAGIC_FROM = {"+15005550001": 21212, "+15005550007": 21606, "+15005550008": 21611}  # else 21606
MAGIC_TO = {"+15005550001": 21211, "+15005550002": 21612, "+15005550003": 21408, "+15005550004": 21610,
            "+15005550009": 21614}

FORMS_KEY = "postroom_sandbox_twilio_forms"
FORMS_KEPT = 10_000  # newest send forms kept for ``sent_form``; older ones are forgotten

blueprint = Blueprint("twilio", __name__, url_prefix=f"/{API_VERSION}")
logger = logging.getLogger(__name__)


def authenticated(sandbox: SandboxState, account_sid: str) -> bool:
    """The request's Basic credentials are those of ``account_sid``: one of the sandbox's
    accounts, or the test credentials."""
    auth = request.authorization
    if auth is None or auth.type != "basic":
        return False
    return test_credentials(account_sid) or sandbox.twilio_accounts.authenticate(account_sid, auth.username, auth.password)


def test_credentials(account_sid: str) -> bool:
    """The request authenticates with Twilio's test credentials (which send nothing). Compared
    as bytes: a password may hold any character, and compare_digest takes only ASCII strings."""
    auth = request.authorization
    return (auth is not None and account_sid == TEST_ACCOUNT_SID and auth.username == TEST_ACCOUNT_SID
            and hmac.compare_digest((auth.password or "").encode(), TEST_AUTH_TOKEN.encode()))


def _validation_error(
    to: str, from_: str, service_sid: str, body: str, media_count: int, has_content: bool
) -> int | None:
    """The error code Twilio would refuse this send with, or None."""
    if not to:
        return 21604
    if not E164.match(to):
        return 21211
    if not from_ and not service_sid:
        return 21603
    if service_sid and not MESSAGING_SERVICE_SID.match(service_sid):
        return 21705
    if not body and not media_count and not has_content:
        return 21602
    if len(body) > MAX_BODY_CHARS:
        return 21617
    if media_count > MAX_MEDIA:
        return 21623
    return None


def _magic_error(to: str, from_: str) -> int | None:
    """What Twilio's test credentials answer for these numbers: a From other than the one magic
    number that passes cannot send; magic To numbers fail their own way; others pass."""
    if from_ and from_ != MAGIC_FROM_PASSES:
        return MAGIC_FROM.get(from_, 21606)
    return MAGIC_TO.get(to)


def _keep_form(sid: str) -> None:
    """Remember a send call's form as it arrived, repeated fields in their order (``sent_form``)."""
    forms: OrderedDict[str, list[tuple[str, str]]] = current_app.extensions.setdefault(FORMS_KEY, OrderedDict())
    forms[sid] = list(request.form.items(multi=True))
    while len(forms) > FORMS_KEPT:
        forms.popitem(last=False)


def sent_form(sid: str) -> list[tuple[str, str]] | None:
    """The form fields of the send call that created message ``sid``, if still kept."""
    forms: OrderedDict[str, list[tuple[str, str]]] = current_app.extensions.get(FORMS_KEY, OrderedDict())
    return forms.get(sid)


def message_resource(message: ReceivedMessage, account_sid: str) -> dict[str, object]:
    """Twilio's JSON representation of a message, every field the API returns."""
    uri = f"/{API_VERSION}/Accounts/{account_sid}/Messages/{message.sid}"
    return {
        "account_sid": account_sid,
        "api_version": API_VERSION,
        "body": message.body,
        "date_created": format_datetime(message.received_at),
        "date_sent": format_datetime(message.sent_at) if message.sent_at else None,
        "date_updated": format_datetime(message.updated_at),
        "direction": "outbound-api",
        "error_code": message.error_code,
        "error_message": message.error_message,
        "from": message.from_,
        "messaging_service_sid": message.messaging_service_sid,
        "num_media": str(message.num_media),
        "num_segments": str(message.num_segments),
        "price": None,
        "price_unit": "USD",
        "sid": message.sid,
        "status": message.status,
        "subresource_uris": {"media": f"{uri}/Media.json", "feedback": f"{uri}/Feedback.json"},
        "to": message.to,
        "uri": f"{uri}.json",
    }


@blueprint.post("/Accounts/<account_sid>/Messages.json")
def create_message(account_sid: str) -> Response | tuple[Response, int]:
    sandbox = current_sandbox()
    faults = sandbox.faults[CHANNEL]
    gevent.sleep(faults.latency_seconds())  # cooperative: other requests proceed meanwhile
    if not authenticated(sandbox, account_sid):
        sandbox.records.count("invalid")
        return twilio_error(20003)

    form = request.form
    to, from_ = form.get("To", "").strip(), form.get("From", "").strip()
    service_sid, body = form.get("MessagingServiceSid", "").strip(), form.get("Body", "")
    media_urls = form.getlist("MediaUrl")

    injected = faults.take_send_error()
    if injected is not None:
        sandbox.records.count("rejected_by_fault")
        return twilio_error(
            injected.error_code, injected.http_status, injected.retry_after, to=to, from_=from_
        )

    problem = _validation_error(to, from_, service_sid, body, len(media_urls), bool(form.get("ContentSid")))
    testing = test_credentials(account_sid)
    if problem is None and testing:
        problem = _magic_error(to, from_)
    if problem is not None:
        sandbox.records.count("invalid")
        return twilio_error(problem, to=to, from_=from_, value=service_sid)

    message = ReceivedMessage(
        channel=CHANNEL,
        sid=("MM" if media_urls else "SM") + uuid.uuid4().hex,
        to=to,
        from_=from_ or None,
        body=body,
        status_callback=form.get("StatusCallback") or None,
        status="accepted" if service_sid else "queued",  # a Messaging Service accepts, then queues
        messaging_service_sid=service_sid or None,
        num_segments=count_segments(body),
        num_media=len(media_urls),
        account_sid=account_sid,
    )
    if testing:  # answered as accepted; test credentials send nothing and call nothing back
        return jsonify(message_resource(message, account_sid)), 201
    sandbox.records.add(message)
    _keep_form(message.sid)
    sandbox.twilio_callbacks.start(
        message, faults.take_callback_outcome(), faults.callback_behaviour()
    )
    lose_answer(sandbox.records, faults)
    return jsonify(message_resource(message, account_sid)), 201


@blueprint.get("/Accounts/<account_sid>/Messages/<message_sid>.json")
def fetch_message(account_sid: str, message_sid: str) -> Response | tuple[Response, int]:
    sandbox = current_sandbox()
    gevent.sleep(sandbox.faults[CHANNEL].latency_seconds())
    if not authenticated(sandbox, account_sid):
        return twilio_error(20003)
    message = sandbox.records.get(message_sid)
    if message is None or message.channel != CHANNEL or message.account_sid != account_sid:
        return twilio_error(20404, path=request.path)
    return jsonify(message_resource(message, account_sid)), 200
