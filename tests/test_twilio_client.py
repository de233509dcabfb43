"""The Twilio client against the sandbox: each failure lands in the right error class."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import requests
import urllib3

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
    sender = client(sandbox.url)
    before = datetime.now(UTC) - timedelta(seconds=5)
    taken = sender.send(SMS)
    sender.send(OutboundSms(2, SMS.to, SMS.from_, "another text", None))
    found = sender.find_sent(SMS, before)
    assert [a.provider_message_id for a in found] == [taken.provider_message_id]
    assert sender.find_sent(SMS, datetime.now(UTC) + timedelta(minutes=5)) == []  # created before the window
    assert sender.find_sent(OutboundSms(3, "+15005550010", SMS.from_, "hello", None), before) == []


def test_send_and_lookup_go_over_the_pooled_transport_with_the_exact_form(sandbox, monkeypatch):
    # Given an MMS with two media URLs, and requests unable to send anything
    media = ("https://media.example/a.png", "https://media.example/b.png")
    mms = OutboundSms(5, SMS.to, SMS.from_, "look", None, media_urls=media)
    sender = client(sandbox.url)
    since = datetime.now(UTC) - timedelta(seconds=5)
    with monkeypatch.context() as patched:
        patched.setattr(requests.Session, "send", lambda *a, **k: pytest.fail("the Twilio client went through requests"))
        # When it is sent and then looked up
        taken = sender.send(mms)
        found = sender.find_sent(mms, since)
    # Then Twilio got one form field per media URL, in order, and the lookup filtered by To and From
    form = requests.get(f"{sandbox.url}/sandbox/twilio/messages/{taken.provider_message_id}/form", timeout=5).json()["form"]
    assert form == [["To", SMS.to], ["From", SMS.from_], ["Body", "look"], ["MediaUrl", media[0]], ["MediaUrl", media[1]]]
    assert taken.provider_message_id.startswith("MM") and found == [taken]
    lookup = sender._http._test_only_last_request
    assert (lookup.method, lookup.params) == ("GET", {"To": SMS.to, "From": SMS.from_, "PageSize": 50})


def test_transport_failures_before_and_after_the_request_was_written_are_told_apart(sandbox):
    # Given nothing listening on one port, and a sandbox that records the next send and then hangs
    sandbox.fault(timeout_after_receive=True, hang_seconds=2, count=1)
    lost = OutboundSms(6, SMS.to, SMS.from_, "its answer is lost", None)
    # When a send is tried against each
    with pytest.raises(TransientError) as refused:
        client(f"http://127.0.0.1:{localinfra.free_port()}").send(SMS)
    with pytest.raises(UnknownOutcome) as unanswered:
        client(sandbox.url, timeout=0.5).send(lost)
    # Then the refused connection is retried (nothing was sent); the unanswered one is not, and was sent
    assert isinstance(refused.value.__cause__, urllib3.exceptions.NewConnectionError)
    assert refused.value.code == "connection"
    assert isinstance(unanswered.value.__cause__, urllib3.exceptions.ReadTimeoutError)
    assert [m["body"] for m in sandbox.messages() if m["body"] == lost.body] == [lost.body]
