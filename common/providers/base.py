"""What every channel gives the shared sender loop: an account, a send, maybe a look-up.

A channel is a provider client plus its error table (``common.errors``), wrapped in a
``Channel``. The sender loop (``services/senders/loop.py``) and the reconciler's look-up of
unknown outcomes reach a provider only through it; each provider module builds its own
``Channel`` and ``common.providers.channels`` collects them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True)
class Accepted:
    """The provider took the message: its id for receipts, and what it reported."""

    provider_message_id: str
    segments: int | None
    provider_status: str


class Account(Protocol):
    """What the loop needs of a provider account: its id and its pace.

    ``key`` is the unit of pacing: a Twilio account, a WhatsApp phone-number id, a QR session, an
    SMTP login. Tokens, 429 pauses and receipts are keyed by it.
    """

    @property
    def key(self) -> str: ...

    @property
    def rate_limit_per_second(self) -> float: ...


@dataclass(frozen=True)
class Channel:
    """One channel's adapter. ``row`` is a claimed message: a dict of its columns (``content``
    holds what the channel needs beyond ``body``) plus its ``account``.

    ``send`` raises the errors of ``common.errors``. ``find_sent`` returns the provider's
    candidates for a message whose outcome is unknown (None: the provider offers no look-up).
    ``prepare``, if given, runs once per batch inside a database transaction before the claim,
    and may add keys to each candidate row (for example whether a WhatsApp window is open);
    those keys reach ``send``.
    """

    name: str
    provider: str
    account_for: Callable[[int], Account]
    send: Callable[[Any, dict[str, Any]], Accepted]
    find_sent: Callable[[Any, dict[str, Any], datetime], list[Accepted]] | None
    prepare: Callable[[list[dict[str, Any]]], None] | None = None
