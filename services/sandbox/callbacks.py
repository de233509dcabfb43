"""Signed Twilio status callbacks: queued → sent → delivered (or a failure), posted from greenlets.

When a message is accepted, one background greenlet walks its status sequence: it waits the
callback delay, moves the recorded status, and POSTs the form Twilio would send to the message's
``StatusCallback`` URL, signed with ``X-Twilio-Signature`` over that exact URL with the auth token
of the account that sent the message (whose AccountSid the callback carries). The fault plan's
switches, fixed at acceptance, may drop the POSTs, send each twice, or send them in reverse order
(the recorded status still advances in the true order). A failed POST is retried a couple of
times and then counted, never raised: a receiver that is down must not break the sandbox.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from urllib.parse import urlencode

import gevent
import urllib3
from twilio.request_validator import RequestValidator

from services.sandbox.accounts import Accounts
from services.sandbox.faults import CallbackBehaviour, InjectedCallbackOutcome
from services.sandbox.records import ReceivedMessage, ReceivedMessages
from services.sandbox.twilio_errors import delivery_error_message

logger = logging.getLogger(__name__)

API_VERSION = "2010-04-01"
RETRY_DELAYS_SECONDS = (0.2, 0.5)  # after the first failed attempt, then after the second
TIMEOUT_SECONDS = 5.0

StatusStep = tuple[str, int | None]  # (MessageStatus, ErrorCode or None)


def status_sequence(outcome: InjectedCallbackOutcome | None) -> list[StatusStep]:
    """The statuses a message passes through: a handset failure still got as far as ``sent``."""
    if outcome is None:
        return [("queued", None), ("sent", None), ("delivered", None)]
    if outcome.status == "failed":  # never left Twilio
        return [("queued", None), ("failed", outcome.error_code)]
    return [("queued", None), ("sent", None), (outcome.status, outcome.error_code)]


class StatusCallbackSender:
    """Sends the status callbacks of accepted Twilio messages, sharing one HTTP session."""

    def __init__(self, records: ReceivedMessages, accounts: Accounts, default_from: str) -> None:
        self._records = records
        self._accounts = accounts
        self._default_from = default_from  # what a Messaging Service picks when From was not given
        # urllib3 directly rather than requests: a callback costs the sandbox about half the CPU,
        # and the sandbox shares the machine with the pipeline it is measured against.
        self._http = urllib3.PoolManager(num_pools=16, maxsize=256, retries=False,
                                         timeout=urllib3.Timeout(total=TIMEOUT_SECONDS))

    def start(
        self,
        message: ReceivedMessage,
        outcome: InjectedCallbackOutcome | None,
        behaviour: CallbackBehaviour,
    ) -> None:
        """Begin the message's status progression in the background and return at once."""
        # The token is fixed now: an account removed later still signs what it already sent.
        validator = RequestValidator(self._accounts.token(message.account_sid) or "")
        self._records.delivery_started()
        gevent.spawn(self._progress, message, status_sequence(outcome), behaviour, validator)

    def _progress(
        self,
        message: ReceivedMessage,
        steps: list[StatusStep],
        behaviour: CallbackBehaviour,
        validator: RequestValidator,
    ) -> None:
        try:
            sending_order = list(reversed(steps)) if behaviour.shuffle else steps
            for (true_status, true_code), (status, code) in zip(steps, sending_order, strict=True):
                gevent.sleep(behaviour.delay_seconds)
                self._records.move_to_status(
                    message.sid,
                    true_status,
                    true_code,
                    delivery_error_message(true_code) if true_code else None,
                )
                if behaviour.drop or not message.status_callback:
                    continue
                params = self.callback_params(message, status, code)
                idempotency_token = (
                    uuid.uuid4().hex
                )  # same across retries and duplicates of one event
                for _ in range(2 if behaviour.duplicate else 1):
                    self._post(message.status_callback, params, idempotency_token, validator)
        except Exception:  # a bug here must not kill the worker's hub
            logger.exception("status progression of %s stopped", message.sid)
        finally:
            self._records.delivery_finished()

    def callback_params(
        self, message: ReceivedMessage, status: str, error_code: int | None
    ) -> dict[str, str]:
        """The form fields of one status callback, as Twilio sends them."""
        params = {
            "MessageSid": message.sid,
            "SmsSid": message.sid,
            "AccountSid": message.account_sid,
            "From": message.from_ or self._default_from,
            "To": message.to,
            "MessageStatus": status,
            "SmsStatus": status,
            "ApiVersion": API_VERSION,
        }
        if message.messaging_service_sid:
            params["MessagingServiceSid"] = message.messaging_service_sid
        if error_code is not None:
            params["ErrorCode"] = str(error_code)
            params["ErrorMessage"] = delivery_error_message(error_code)
        if status in (
            "delivered",
            "undelivered",
        ):  # carriers' receipt time; receivers must ignore fields they do not know
            params["RawDlrDoneDate"] = datetime.now(UTC).strftime("%y%m%d%H%M")
        return params

    def _post(
        self, url: str, params: dict[str, str], idempotency_token: str, validator: RequestValidator
    ) -> None:
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": validator.compute_signature(url, params),
            "I-Twilio-Idempotency-Token": idempotency_token,
            "User-Agent": "TwilioProxy/1.1",
        }
        for attempt in range(len(RETRY_DELAYS_SECONDS) + 1):
            if attempt:
                self._records.count("callback_retries")
                gevent.sleep(RETRY_DELAYS_SECONDS[attempt - 1])
            try:
                response = self._http.request("POST", url, body=urlencode(params), headers=headers, redirect=False)
            except urllib3.exceptions.HTTPError as exc:
                failure = repr(exc)
            else:
                if 200 <= response.status < 300:
                    self._records.count("callbacks_sent")
                    return
                failure = f"HTTP {response.status}"
            logger.info("status callback to %s failed (attempt %d): %s", url, attempt + 1, failure)
        self._records.count("callbacks_failed")
        logger.warning(
            "gave up on %s callback for %s to %s",
            params["MessageStatus"],
            params["MessageSid"],
            url,
        )
