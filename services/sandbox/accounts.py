"""The Twilio accounts the sandbox accepts: the configured default one and any added at run time.

Each account is an AccountSid with its auth token. A send call must authenticate as the account
named in its path; the message remembers that account, its status callbacks are signed with that
account's token and carry its AccountSid, and the message list shows each account only its own
messages — so a test can run two tenants with their own Twilio accounts against one sandbox.
Accounts added through ``POST /sandbox/accounts`` last until ``reset``; the default never goes.
"""

from __future__ import annotations

import hmac
import re
import threading

ACCOUNT_SID = re.compile(r"^AC[0-9a-fA-F]{32}$")


class AccountRequestError(ValueError):
    """An account that cannot be added; the control API answers 400 with its text."""


class Accounts:
    """AccountSid → auth token, safe to share across greenlets."""

    def __init__(self, default_sid: str, default_token: str) -> None:
        self._lock = threading.Lock()
        self._default = (default_sid, default_token)
        self._tokens: dict[str, str] = {}
        self.reset()

    def reset(self) -> None:
        """Forget every added account; the default stays."""
        with self._lock:
            self._tokens = {self._default[0]: self._default[1]}

    def add(self, payload: object) -> str:
        """Add (or change the token of) the account in a ``POST /sandbox/accounts`` body."""
        if not isinstance(payload, dict):
            raise AccountRequestError("expected a JSON object with 'account_sid' and 'auth_token'")
        sid, token = payload.get("account_sid"), payload.get("auth_token")
        # The default's own sid is not checked: deployments may configure any string there.
        if not isinstance(sid, str) or not ACCOUNT_SID.match(sid):
            raise AccountRequestError(f"'account_sid' must look like AC + 32 hex digits, not {sid!r}")
        if not isinstance(token, str) or not token:
            raise AccountRequestError("'auth_token' must be a non-empty string")
        with self._lock:
            self._tokens[sid] = token
        return sid

    def token(self, sid: str) -> str | None:
        with self._lock:
            return self._tokens.get(sid)

    def authenticate(self, path_sid: str, username: str | None, password: str | None) -> bool:
        """True when Basic credentials are the account's own and name the account in the path."""
        if username is None or password is None or username != path_sid:
            return False
        token = self.token(username)
        return token is not None and hmac.compare_digest(password.encode(), token.encode())  # any text, even non-ASCII

    def sids(self) -> list[str]:
        with self._lock:
            return sorted(self._tokens)
