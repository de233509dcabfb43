"""Which provider account sends for a workspace, and the client for that account.

A workspace's ``channel_config`` row (credentials encrypted) wins; without one the deployment's
default account from the environment is used. Clients are built once per account and reused,
so their connection pools are too.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from common.config import settings
from common.crypto import unseal
from common.db.models import ChannelConfig
from common.providers.http_channel import HttpAccount
from common.providers.twilio_sms import TwilioSmsSender

_CACHE_SECONDS = 30.0


@dataclass(frozen=True)
class SmsAccount:
    account_sid: str
    auth_token: str
    sender: str
    api_base: str
    rate_limit_per_second: float

    @property
    def key(self) -> str:
        """The provider's id of this account: rate limits, pauses and receipts are keyed by it."""
        return self.account_sid


_accounts: dict[int, tuple[float, SmsAccount]] = {}
_tokens: dict[str, tuple[float, str | None]] = {}
_senders: dict[SmsAccount, TwilioSmsSender] = {}
_lock = threading.Lock()


def default_sms_account() -> SmsAccount:
    return SmsAccount(
        settings.twilio_account_sid,
        settings.twilio_auth_token,
        settings.twilio_from,
        settings.twilio_api_base,
        settings.twilio_rate_limit_per_second,
    )


def sms_account(workspace_id: int) -> SmsAccount:
    """The Twilio account that sends this workspace's SMS (cached for 30 s)."""
    cached = _accounts.get(workspace_id)
    if cached and cached[0] > time.monotonic():
        return cached[1]
    config = ChannelConfig.get_or_none(
        (ChannelConfig.workspace == workspace_id) & (ChannelConfig.channel == "sms") & (ChannelConfig.provider == "twilio")
    )
    if config:
        creds = unseal(config.credentials)
        account = SmsAccount(creds["account_sid"], creds["auth_token"], config.sender_identity,
                             creds.get("api_base", settings.twilio_api_base), config.rate_limit_per_second)
    else:
        account = default_sms_account()
    _accounts[workspace_id] = (time.monotonic() + _CACHE_SECONDS, account)
    return account


_http_accounts: dict[int, tuple[float, HttpAccount]] = {}


def http_account(workspace_id: int) -> HttpAccount:
    """Where this workspace's ``http`` channel delivers (cached for 30 s); an empty URL when it has
    none configured (its messages then fail as not configured)."""
    cached = _http_accounts.get(workspace_id)
    if cached and cached[0] > time.monotonic():
        return cached[1]
    config = ChannelConfig.get_or_none((ChannelConfig.workspace == workspace_id) & (ChannelConfig.channel == "http"))
    if not config:  # not cached: a channel configured a moment later applies at once
        return HttpAccount("", "", 0.0, workspace_id)
    account = HttpAccount(config.sender_identity, unseal(config.credentials)["secret"], config.rate_limit_per_second, workspace_id)
    _http_accounts[workspace_id] = (time.monotonic() + _CACHE_SECONDS, account)
    return account


def forget_cached_accounts() -> None:
    """Drop cached account and token lookups (a changed channel config otherwise applies within 30 s)."""
    _accounts.clear()
    _tokens.clear()
    _http_accounts.clear()


def twilio_auth_token(account_sid: str) -> str | None:
    """The auth token that signs webhooks for ``account_sid``, or None if it is not ours."""
    if account_sid == settings.twilio_account_sid:
        return settings.twilio_auth_token
    cached = _tokens.get(account_sid)  # every status callback asks: cached like the accounts
    if cached and cached[0] > time.monotonic():
        return cached[1]
    config = ChannelConfig.get_or_none((ChannelConfig.provider == "twilio") & (ChannelConfig.account_ref == account_sid))
    token = unseal(config.credentials)["auth_token"] if config else None
    _tokens[account_sid] = (time.monotonic() + _CACHE_SECONDS, token)
    return token


def sms_sender(account: SmsAccount) -> TwilioSmsSender:
    with _lock:
        sender = _senders.get(account)
        if sender is None:
            sender = TwilioSmsSender(
                account.account_sid,
                account.auth_token,
                api_base=account.api_base,
                pool_size=max(10, settings.postroom_sender_concurrency),
                timeout=settings.postroom_provider_timeout_seconds,
            )
            _senders[account] = sender
        return sender
