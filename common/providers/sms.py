"""The SMS channel's interface: what a sender hands a provider client and what it gets back.

Every SMS provider client implements ``SmsSender``; it raises the errors of ``common.errors``
and nothing else, so the sender stage never sees a provider's own exception types.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from common.providers.base import Accepted

__all__ = ["Accepted", "OutboundSms", "SmsSender"]


@dataclass(frozen=True)
class OutboundSms:
    """One SMS or MMS to hand over. ``from_`` is empty when a Messaging Service picks the sender."""

    message_id: int
    to: str
    from_: str
    body: str
    status_callback: str | None
    media_urls: tuple[str, ...] = ()  # an MMS: publicly reachable URLs, at most 10 (Twilio refuses more with 21623)
    messaging_service_sid: str | None = None  # sent instead of From


class SmsSender(Protocol):
    provider: str

    def send(self, sms: OutboundSms) -> Accepted:
        """Hand one message to the provider.

        Raises:
          PermanentError, TransientError, Throttled: classified failures.
          UnknownOutcome: the request may have been written and the answer was lost.
        """
        ...

    def find_sent(self, sms: OutboundSms, since: datetime) -> list[Accepted]:
        """Messages the provider holds that match ``sms`` (to, from if any, body) created since ``since``,
        newest first: the candidates for a send whose outcome is unknown.

        Raises:
          ProviderError: the lookup itself failed (try again later).
        """
        ...
