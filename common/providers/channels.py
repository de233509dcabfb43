"""Every channel a sender delivers on, by name: each provider module's ``Channel`` adapter.

The shared sender loop (``services/senders/loop.py``) and the reconciler's look-up of unknown
outcomes reach a provider only through ``common.providers.base.Channel``. A new channel adds its
client, error table and adapter in its own module and one entry here, not a copy of the loop.
"""

from __future__ import annotations

from typing import Any

from common.config import settings
from common.providers import http_channel
from common.providers.accounts import SmsAccount, http_account, sms_account, sms_sender
from common.providers.base import Account, Channel
from common.providers.sms import OutboundSms
from common.providers.smtp_email import EMAIL
from common.providers.twilio_sms import PROVIDER as TWILIO
from common.providers.waha import WHATSAPP_QR
from common.providers.whatsapp_cloud import WHATSAPP_CLOUD
from common.providers.widget import WIDGET


def _sms(account: SmsAccount, row: dict[str, Any]) -> OutboundSms:
    """The message as Twilio takes it: an MMS when its content has media, sent through a
    Messaging Service (which picks the From number) when its content names one."""
    callback = f"{settings.public_url}/webhooks/twilio/status"
    content = row.get("content") or {}
    service = content.get("messaging_service_sid")
    media = tuple(item["url"] for item in content.get("media") or ())
    from_ = "" if service else row["from_addr"] or account.sender
    return OutboundSms(row["id"], row["to_addr"], from_, row["body"], callback, media, service)


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

CHANNELS: dict[str, Channel] = {c.name: c for c in (SMS, HTTP, WHATSAPP_CLOUD, EMAIL, WHATSAPP_QR, WIDGET)}

__all__ = ["CHANNELS", "HTTP", "SMS", "Account", "Channel"]
