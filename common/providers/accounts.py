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
from common.providers import config as channel_config
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
    """The Twilio account that sends this workspace's SMS: its channel configuration's, else the
    deployment's default (cached with the configuration)."""
    config = channel_config.load(workspace_id, "sms")
    if config is None or config.provider != "twilio":
        return default_sms_account()
    creds = config.credentials
    return SmsAccount(creds["account_sid"], creds["auth_token"], config.sender_identity,
                      config.settings.get("api_base") or creds.get("api_base") or settings.twilio_api_base,
                      config.rate_limit_per_second)


def http_account(workspace_id: int) -> HttpAccount:
    """Where this workspace's ``http`` channel delivers; an empty URL when it has none configured
    (its messages then fail as not configured)."""
    config = channel_config.load(workspace_id, "http")
    if config is None:
        return HttpAccount("", "", 0.0, workspace_id)
    return HttpAccount(config.sender_identity, config.credentials["secret"], config.rate_limit_per_second, workspace_id)


def forget_cached_accounts() -> None:
    """Drop cached configurations and token lookups (a changed channel config otherwise applies
    within a few seconds)."""
    from common.inbound import forget_default_workspace

    channel_config.forget()
    forget_default_workspace()
    _tokens.clear()


def twilio_auth_token(account_sid: str) -> str | None:
    """The auth token that signs webhooks for ``account_sid``, or None if it is not ours."""
    if account_sid == settings.twilio_account_sid:
        return settings.twilio_auth_token
    cached = _tokens.get(account_sid)  # every status callback asks: cached like the accounts
    if cached and cached[0] > time.monotonic():
        return cached[1]
    configs = channel_config.by_account("twilio", account_sid)
    token = configs[0].credentials["auth_token"] if configs else None
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
