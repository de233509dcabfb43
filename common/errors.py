"""The small error vocabulary every provider client maps its failures onto.

``UnknownOutcome``: the request may have reached the provider and no answer came back (a read
timeout, a connection aborted mid-response) — never retried blindly; the message is looked up at
the provider first. ``PermanentError``: retrying cannot help (invalid number, opted out, policy) — fail now, maybe
suppress the address. ``TransientError``: a retry may succeed (5xx, timeouts, connection
errors) — retry with backoff up to a bound. ``Throttled``: the provider or our own limiter
says "not now" — wait and try again without spending a retry.
"""

from __future__ import annotations


class ProviderError(Exception):
    """A provider call did not succeed; ``code`` is the provider's own error code."""

    def __init__(self, message: str, *, code: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.code = code
        self.retry_after = retry_after

    @property
    def detail(self) -> str:
        return f"{self.code}: {self}" if self.code else str(self)


class PermanentError(ProviderError):
    """Retrying cannot help. ``suppress`` names why the address should not be tried again on this
    channel (a suppression reason such as ``provider_21610`` or ``bounce``), or is None.
    ``fallback`` says the recipient is not reachable on this channel at all (not on WhatsApp, not
    a mobile number): a message with a further channel in its route moves on to it."""

    def __init__(self, message: str, *, code: str | None = None, suppress: str | None = None, fallback: bool = False):
        super().__init__(message, code=code)
        self.suppress = suppress
        self.fallback = fallback


class TransientError(ProviderError):
    """A later attempt may succeed; ``retry_after`` (seconds) overrides the backoff if given."""


class Throttled(ProviderError):
    """Not now: wait ``retry_after`` seconds; this does not count against the retry budget.

    ``pause_account`` (the default) pauses every sender's calls on the account for that long; a
    limit on one recipient only (WhatsApp's pair limit) delays just this message.
    """

    def __init__(self, message: str, *, code: str | None = None, retry_after: float | None = None,
                 pause_account: bool = True):
        super().__init__(message, code=code, retry_after=retry_after)
        self.pause_account = pause_account


class UnknownOutcome(ProviderError):
    """The request may have been written and its answer was lost: the provider may have sent it.

    Sending again could send twice, so the message is looked up at the provider instead
    (DESIGN.md invariant 14)."""

    def __init__(self, message: str):
        super().__init__(message, code="outcome_unknown")
