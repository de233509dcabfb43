"""The channels a sender delivers on, each an adapter over its provider client.

The shared sender loop (``services/senders/loop.py``) and the reconciler's look-up of unknown
outcomes reach a provider only through ``Channel``: which account sends for a workspace, how one
claimed message is sent, and how it is found again at the provider. A new channel adds an
adapter here over its client and error table (in ``common/providers``), not a copy of the loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from common.config import settings
from common.providers import http_channel
from common.providers.accounts import SmsAccount, http_account, sms_account, sms_sender
from common.providers.sms import Accepted, OutboundSms
from common.providers.twilio_sms import PROVIDER as TWILIO


class Account(Protocol):
    """What the loop needs of a provider account: its id and its pace."""

    @property
    def key(self) -> str: ...

    @property
    def rate_limit_per_second(self) -> float: ...


@dataclass(frozen=True)
class Channel:
    """One channel's adapter. ``row`` is a claimed message: a dict of its columns.

    ``send`` raises the errors of ``common.errors``. ``find_sent`` returns the provider's
    candidates for a message whose outcome is unknown (None: the provider offers no look-up).
    """

    name: str
    provider: str
    account_for: Callable[[int], Account]
    send: Callable[[Any, dict[str, Any]], Accepted]
    find_sent: Callable[[Any, dict[str, Any], datetime], list[Accepted]] | None


def _sms(account: SmsAccount, row: dict[str, Any]) -> OutboundSms:
    callback = f"{settings.public_url}/webhooks/twilio/status"
    return OutboundSms(row["id"], row["to_addr"], row["from_addr"] or account.sender, row["body"], callback)


SMS = Channel(
    name="sms",
    provider=TWILIO,
    account_for=sms_account,
    send=lambda account, row: sms_sender(account).send(_sms(account, row)),
    find_sent=lambda account, row, since: sms_sender(account).find_sent(_sms(account, row), since),
)

# The generic channel: POST the message, signed, to the workspace's own URL. No look-up exists,
# so an unknown outcome fails or is resent as the workspace chose.
HTTP = Channel(
    name="http",
    provider=http_channel.PROVIDER,
    account_for=http_account,
    send=http_channel.send,
    find_sent=None,
)

CHANNELS: dict[str, Channel] = {SMS.name: SMS, HTTP.name: HTTP}
