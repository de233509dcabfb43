"""The Twilio client against the sandbox: each failure lands in the right error class."""

from __future__ import annotations

import pytest

from common.config import settings
from common.errors import PermanentError, Throttled, TransientError, UnknownOutcome
from common.providers.sms import OutboundSms
from common.providers.twilio_sms import TwilioSmsSender
from services.local import infra as localinfra

SMS = OutboundSms(1, "+15005550006", "+15005550006", "hello", None)


def client(url: str, timeout: float = 5.0) -> TwilioSmsSender:
    return TwilioSmsSender(settings.twilio_account_sid, settings.twilio_auth_token, api_base=url, timeout=timeout)


def test_accepted_message_returns_the_sid_and_segments(sandbox):
    accepted = client(sandbox.url).send(SMS)
    assert accepted.provider_message_id.startswith("SM") and accepted.segments == 1
    assert [m["sid"] for m in sandbox.messages()] == [accepted.provider_message_id]


@pytest.mark.parametrize(("fault", "error", "code"), [
    ({"error_code": 21211}, PermanentError, "21211"),
    ({"error_code": 21610}, PermanentError, "21610"),
    ({"error_code": 20003}, PermanentError, "20003"),
    ({"error_code": 20429, "retry_after": 3}, Throttled, "20429"),
    ({"http_status": 500}, TransientError, "20500"),
    ({"http_status": 503}, TransientError, "20503"),
])
def test_provider_errors_map_to_their_class(sandbox, fault, error, code):
    sandbox.fault(**fault, count=1)
    with pytest.raises(error) as raised:
        client(sandbox.url).send(SMS)
    assert raised.value.code == code
    if error is Throttled:
        assert raised.value.retry_after == 3.0
    if code == "21610":
        assert raised.value.suppress  # the recipient replied STOP


def test_refused_connection_is_transient():
    with pytest.raises(TransientError) as raised:
        client(f"http://127.0.0.1:{localinfra.free_port()}").send(SMS)
    assert raised.value.code == "connection"


def test_no_answer_in_time_is_an_unknown_outcome_that_is_not_retried(sandbox):
    sandbox.fault(latency_ms=1500)
    with pytest.raises(UnknownOutcome) as raised:
        client(sandbox.url, timeout=0.5).send(SMS)
    assert raised.value.code == "outcome_unknown"


def test_connection_dropped_after_the_request_was_written_is_an_unknown_outcome(sandbox):
    sandbox.fault(drop_after_receive=True, count=1)
    with pytest.raises(UnknownOutcome):
        client(sandbox.url).send(SMS)
    assert [m["body"] for m in sandbox.messages()] == ["hello"]  # the provider did take it


def test_find_sent_matches_to_from_body_and_time(sandbox):
    from datetime import UTC, datetime, timedelta

    sender = client(sandbox.url)
    before = datetime.now(UTC) - timedelta(seconds=5)
    taken = sender.send(SMS)
    sender.send(OutboundSms(2, SMS.to, SMS.from_, "another text", None))
    found = sender.find_sent(SMS, before)
    assert [a.provider_message_id for a in found] == [taken.provider_message_id]
    assert sender.find_sent(SMS, datetime.now(UTC) + timedelta(minutes=5)) == []  # created before the window
    assert sender.find_sent(OutboundSms(3, "+15005550010", SMS.from_, "hello", None), before) == []
