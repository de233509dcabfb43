"""Which provider account sends for a workspace, the client for that account, and who vouches
for a webhook naming an account.

A workspace's ``channel_config`` row (credentials encrypted) wins; without one the deployment's
default account from the environment is used. Clients are built once per account and reused,
so their connection pools are too.

A webhook names a provider account and is signed with a secret (Twilio's auth token, Meta's app
secret). The secret that verifies it says whose word it is: the environment's, for the
deployment's own account, which sends for every workspace without an account of its own; or a
workspace configuration's, which speaks for that workspace only (``Verified.scope``).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from common.config import settings
from common.providers import config as channel_config
from common.providers.http_channel import HttpAccount
from common.providers.twilio_sms import TwilioSmsSender

_CACHE_SECONDS = 30.0
# AccountSids whose configured tokens are cached. Any caller may name any AccountSid (the inbound
# webhook looks it up before the signature is known good), so the cache is bounded, oldest out.
MAX_CACHED_ACCOUNTS = 10_000


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


@dataclass(frozen=True)
class Verified:
    """Whose secret verified a webhook about one provider account."""

    default: bool  # the environment's: the deployment's own account
    workspaces: tuple[int, ...]  # the workspaces whose configured secret did, in configuration order

    @property
    def scope(self) -> list[int] | None:
        """The workspaces whose messages the webhook may move: any (None) when the environment's
        secret signed it, as its account sends for every workspace without one of its own; else
        only those whose secret verified it, so one tenant's secret never vouches for another's
        message."""
        return None if self.default else list(self.workspaces)


_tokens: OrderedDict[str, tuple[float, list[tuple[int, str]]]] = OrderedDict()
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
    with _lock:
        _tokens.clear()


def vouched(own: str | None, configured: Iterable[tuple[int, str]], valid: Callable[[str], bool]) -> Verified | None:
    """Whose secret verifies a webhook about one provider account; None if nobody's does.

    Parameters:
      own: the environment's secret if the account is the deployment's own, else None.
      configured: (workspace id, secret) of each workspace configuration naming the account.
      valid: whether the webhook verifies with a secret.

    An empty secret verifies nothing. A configuration naming the deployment's own account counts
    only along with the environment's secret: the provider signs that account's webhooks with
    it, so another secret there is only a tenant's word, about messages of every workspace.
    """
    if own is not None and not (own and valid(own)):
        return None
    workspaces = tuple(workspace_id for workspace_id, secret in configured if secret and valid(secret))
    if own is None and not workspaces:
        return None
    return Verified(own is not None, workspaces)


def twilio_vouched(account_sid: str, valid: Callable[[str], bool]) -> Verified | None:
    """Whose auth token verifies a Twilio webhook naming ``account_sid`` (see ``vouched``)."""
    own = settings.twilio_auth_token if account_sid == settings.twilio_account_sid else None
    return vouched(own, _twilio_tokens(account_sid), valid)


def _twilio_tokens(account_sid: str) -> list[tuple[int, str]]:
    """(workspace id, auth token) of each configuration of this AccountSid; every webhook asks,
    so they are cached like the accounts, for at most MAX_CACHED_ACCOUNTS AccountSids."""
    now = time.monotonic()
    with _lock:
        cached = _tokens.get(account_sid)
        if cached and cached[0] > now:
            _tokens.move_to_end(account_sid)
            return cached[1]
    tokens = [(c.workspace_id, str(c.credentials.get("auth_token") or ""))
              for c in channel_config.by_account("twilio", account_sid)]
    with _lock:
        _tokens[account_sid] = (now + _CACHE_SECONDS, tokens)
        _tokens.move_to_end(account_sid)
        while len(_tokens) > MAX_CACHED_ACCOUNTS:
            _tokens.popitem(last=False)
    return tokens


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
