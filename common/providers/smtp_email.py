"""Email over SMTP with ``smtplib``: the account, a pool of reused sessions, the MIME message and
the error table.

One account is one SMTP login on one relay (a workspace's ``email`` channel configuration, else
the environment's ``SMTP_*`` defaults). Each process keeps up to ``SMTP_POOL_SIZE`` sessions per
account open and reuses them, because a TLS handshake and AUTH cost more than the message. A
session the relay dropped (421, idle timeout) is replaced: a failure before the message's final
dot was written cannot have delivered it, so it is tried once more on a fresh session. An answer
lost after the dot is an unknown outcome (the relay may have queued the mail). Reply codes: 2yz
taken, 4yz transient, 5yz permanent, and a 5.1.x enhanced status about the recipient's address
(user unknown, bad domain) suppresses it.

Bulk mail carries RFC 8058 one-click unsubscribe headers pointing at ingest's ``/u/<token>``;
the token is the workspace and address, signed with a key derived from the secret key, so only
the recipient's own link can unsubscribe it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import mimetypes
import re
import smtplib
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from typing import Any
from urllib.parse import unquote, urlsplit

import requests

from common.config import settings
from common.errors import PermanentError, ProviderError, TransientError, UnknownOutcome
from common.netguard import BlockedAddress, shared_session
from common.providers import config as channel_config
from common.providers.base import Accepted, Channel

PROVIDER = "smtp"
# 7bit transfer encodings only (quoted-printable or base64 for anything else): every relay takes
# them, with or without 8BITMIME. CRLF line ends, as SMTP wants them.
POLICY = policy.SMTP.clone(cte_type="7bit")
MAX_ATTACHMENT_BYTES = 10 * 1024 * 1024  # all attachments of one message together
MAX_IDLE_SECONDS = 50.0  # relays drop idle sessions after about a minute; do not reuse one older
_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")
# 5.1.7 and 5.1.8 are about our sender address, not the recipient's: never suppress for them.
SENDER_STATUSES = frozenset({"5.1.7", "5.1.8"})

log = logging.getLogger("postroom.email")


@dataclass(frozen=True)
class EmailAccount:
    """One SMTP login on one relay, and the From address it sends as."""

    host: str
    port: int
    security: str  # none | starttls | tls
    username: str
    password: str = field(repr=False)
    sender: str
    rate_limit_per_second: float

    @property
    def key(self) -> str:
        """Pacing, 429 pauses and receipts are keyed by the login on its relay."""
        return f"{self.username or self.sender}@{self.host}:{self.port}"


def default_account() -> EmailAccount:
    return EmailAccount(settings.smtp_host, settings.smtp_port, settings.smtp_security, settings.smtp_username,
                        settings.smtp_password, settings.email_from, settings.smtp_rate_limit_per_second)


def account_of(config: channel_config.ChannelConfig) -> EmailAccount:
    """The account a workspace's ``email`` configuration describes."""
    opts, creds = config.settings, config.credentials
    return EmailAccount(str(opts.get("host") or settings.smtp_host), int(opts.get("port") or settings.smtp_port),
                        str(opts.get("security") or settings.smtp_security), str(creds.get("username") or ""),
                        str(creds.get("password") or ""), config.sender_identity, config.rate_limit_per_second)


def email_account(workspace_id: int) -> EmailAccount:
    """The account that sends this workspace's email: its configuration's, else the default."""
    config = channel_config.load(workspace_id, "email")
    return account_of(config) if config is not None and config.provider == PROVIDER else default_account()


# -- one-click unsubscribe tokens ------------------------------------------------------------

def _token_key() -> bytes:
    return hmac.new(settings.postroom_secret_key.encode(), b"postroom list-unsubscribe v1", hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsubscribe_token(workspace_id: int, address: str) -> str:
    """``<workspace and address>.<signature>``, URL-safe: it names who to suppress and proves we said so."""
    payload = f"{workspace_id}:{address}".encode()
    return f"{_b64(payload)}.{_b64(hmac.new(_token_key(), payload, hashlib.sha256).digest()[:16])}"


def unsubscribe_target(token: str) -> tuple[int, str] | None:
    """The (workspace id, address) a token was made for, or None for a forged or mangled token."""
    payload_text, _, signature = token.partition(".")
    try:
        payload = base64.urlsafe_b64decode(payload_text + "=" * (-len(payload_text) % 4))
        given = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    except (ValueError, TypeError):
        return None
    if not hmac.compare_digest(given, hmac.new(_token_key(), payload, hashlib.sha256).digest()[:16]):
        return None
    workspace, _, address = payload.decode(errors="replace").partition(":")
    return (int(workspace), address) if workspace.isdigit() and address else None


# -- the message ------------------------------------------------------------------------------

def compose(account: EmailAccount, row: dict[str, Any]) -> EmailMessage:
    """The MIME message of one claimed row: text and HTML as alternatives, attachments, headers."""
    content = row.get("content") or {}
    sender = row.get("from_addr") or account.sender
    message = EmailMessage(policy=POLICY)
    message["From"] = sender
    message["To"] = row["to_addr"]
    message["Subject"] = content.get("subject") or ""
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid(domain=parseaddr(sender)[1].rpartition("@")[2] or None)
    if content.get("reply_to"):
        message["Reply-To"] = content["reply_to"]
    if row.get("priority") == "bulk":
        message["List-Unsubscribe"] = f"<{settings.public_url}/u/{unsubscribe_token(row['workspace_id'], row['to_addr'])}>"
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message.set_content(row.get("body") or "")
    if content.get("html"):
        message.add_alternative(content["html"], subtype="html")
    for name, data, mime_type in fetch_attachments(content.get("attachments") or []):
        maintype, _, subtype = mime_type.partition("/")
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return message


def fetch_attachments(attachments: list[dict[str, Any]]) -> list[tuple[str, bytes, str]]:
    """Each attachment's (filename, bytes, type), fetched through the SSRF guard, all together
    at most MAX_ATTACHMENT_BYTES.

    Raises:
      PermanentError: a refused address, a 4xx answer, or too large (retrying cannot help).
      TransientError: a 5xx answer, a timeout, a connection failure.
    """
    session = shared_session(settings.postroom_webhook_allowed_networks, 10)
    timeout = settings.postroom_provider_timeout_seconds
    fetched, total = [], 0
    for attachment in attachments:
        url = attachment["url"]
        try:
            with session.get(url, timeout=(min(5.0, timeout), timeout), stream=True, allow_redirects=False) as response:
                if response.status_code >= 500 or response.status_code == 429:
                    raise TransientError(f"attachment {url} answered {response.status_code}", code="attachment")
                if response.status_code != 200:
                    raise PermanentError(f"attachment {url} answered {response.status_code}", code="attachment")
                data = response.raw.read(MAX_ATTACHMENT_BYTES - total + 1, decode_content=True) or b""
                mime_type = (response.headers.get("Content-Type") or "").split(";")[0].strip()
        except BlockedAddress as exc:
            raise PermanentError(f"attachment URL refused: {exc}", code="attachment_blocked") from None
        except requests.RequestException as exc:
            raise TransientError(f"attachment {url} could not be fetched: {type(exc).__name__}", code="attachment") from None
        total += len(data)
        if total > MAX_ATTACHMENT_BYTES:
            raise PermanentError(f"attachments exceed {MAX_ATTACHMENT_BYTES} bytes", code="attachment_too_large")
        name = attachment.get("filename") or unquote(urlsplit(url).path.rpartition("/")[2]) or "attachment"
        if "/" not in mime_type:
            mime_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        fetched.append((name, data, mime_type))
    return fetched


# -- the error table --------------------------------------------------------------------------

def classify(code: int, reply: bytes | str) -> ProviderError:
    """Map an SMTP reply that did not accept the message onto the error vocabulary."""
    text = (reply.decode(errors="replace") if isinstance(reply, bytes) else reply).strip()
    enhanced = _ENHANCED.match(text)
    status = enhanced.group(0) if enhanced else None
    label = f"{code} {status}" if status else str(code)
    if 500 <= code < 600:
        about_recipient = status is not None and status.startswith("5.1.") and status not in SENDER_STATUSES
        return PermanentError(f"{code} {text}", code=label, suppress="bounce" if about_recipient else None,
                              fallback=about_recipient)
    return TransientError(f"{code} {text}", code=label)


class _Reconnect(Exception):
    """The session broke before the message's final dot was written (a 421 or a dropped
    connection): nothing was delivered, and a fresh session may succeed."""


# -- sessions ----------------------------------------------------------------------------------

class SessionPool:
    """Up to ``size`` open sessions of one account, each used by one call at a time (threads and
    greenlets alike wait for a free one)."""

    def __init__(self, account: EmailAccount, size: int, timeout: float):
        self.account = account
        self._timeout = timeout
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._idle: list[tuple[float, smtplib.SMTP]] = []

    @contextmanager
    def session(self, *, fresh: bool = False) -> Iterator[smtplib.SMTP]:
        """A session for one transaction; it goes back to the pool only if the body ends cleanly
        (a transaction refused by the relay is reset first)."""
        with self._slots:
            smtp = None if fresh else self._take_idle()
            smtp = smtp or self._connect()
            try:
                yield smtp
            except ProviderError as exc:
                if isinstance(exc, UnknownOutcome) or not _reset(smtp):
                    _discard(smtp)
                else:
                    self._give_back(smtp)
                raise
            except BaseException:
                _discard(smtp)
                raise
            self._give_back(smtp)

    def _take_idle(self) -> smtplib.SMTP | None:
        with self._lock:
            while self._idle:
                since, smtp = self._idle.pop()
                if time.monotonic() - since < MAX_IDLE_SECONDS:
                    return smtp
                _discard(smtp)
        return None

    def _give_back(self, smtp: smtplib.SMTP) -> None:
        with self._lock:
            self._idle.append((time.monotonic(), smtp))

    def _connect(self) -> smtplib.SMTP:
        account = self.account
        try:
            if account.security == "tls":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(account.host, account.port, timeout=self._timeout,
                                                      context=ssl.create_default_context())
            else:
                smtp = smtplib.SMTP(account.host, account.port, timeout=self._timeout)
            smtp.ehlo()
            if account.security == "starttls":
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if account.username:
                smtp.login(account.username, account.password)
        except smtplib.SMTPAuthenticationError as exc:
            raise classify(exc.smtp_code, exc.smtp_error) if exc.smtp_code < 500 else \
                PermanentError(f"SMTP login refused: {exc.smtp_code}", code="auth") from None
        except smtplib.SMTPNotSupportedError as exc:
            raise PermanentError(f"the relay does not support {account.security}: {exc}", code="security") from None
        except smtplib.SMTPResponseException as exc:  # a 421 greeting, a refused EHLO
            raise classify(exc.smtp_code, exc.smtp_error) from None
        except (OSError, smtplib.SMTPException) as exc:
            raise TransientError(f"could not connect to {account.host}:{account.port}: {exc!r}", code="connection") from None
        return smtp

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for _, smtp in idle:
            _discard(smtp)


def _reset(smtp: smtplib.SMTP) -> bool:
    try:
        return smtp.rset()[0] == 250
    except (OSError, smtplib.SMTPException):
        return False


def _discard(smtp: smtplib.SMTP) -> None:
    try:
        smtp.close()
    except OSError:
        pass


_pools: dict[EmailAccount, SessionPool] = {}
_pools_lock = threading.Lock()


def pool_for(account: EmailAccount) -> SessionPool:
    with _pools_lock:
        pool = _pools.get(account)
        if pool is None:
            pool = _pools[account] = SessionPool(account, settings.smtp_pool_size,
                                                 settings.postroom_provider_timeout_seconds)
        return pool


def close_pools() -> None:
    """Close every idle session (a worker shutting down, a test starting clean)."""
    with _pools_lock:
        pools = list(_pools.values())
    for pool in pools:
        pool.close()


# -- one transaction ----------------------------------------------------------------------------

def transmit(smtp: smtplib.SMTP, sender: str, recipients: list[str], payload: bytes) -> dict[str, ProviderError]:
    """MAIL, RCPT for each recipient, DATA, as ``sendmail`` does, but knowing when the final dot
    went out. Returns the refused recipients, each classified by its own reply; raises if none
    was accepted or DATA was refused.

    Raises:
      _Reconnect: 421 or a dropped connection before the final dot (nothing was delivered).
      UnknownOutcome: the answer to the final dot was lost.
      ProviderError: the relay refused the transaction.
    """
    try:
        options = [f"SIZE={len(payload)}"] if smtp.has_extn("size") else []
        code, reply = smtp.mail(sender, options)
        _check(code, reply, 250)
        refused: dict[str, ProviderError] = {}
        for recipient in recipients:
            code, reply = smtp.rcpt(recipient)
            if code == 421:
                raise _Reconnect(f"{code} {reply!r}")
            if code not in (250, 251):
                refused[recipient] = classify(code, reply)
        if len(refused) == len(recipients):
            raise refused[recipients[0]]
        code, reply = smtp.docmd("DATA")
        _check(code, reply, 354)
        smtp.send(_dot_stuffed(payload))
    except (smtplib.SMTPServerDisconnected, OSError) as exc:
        raise _Reconnect(repr(exc)) from None
    try:
        code, reply = smtp.getreply()
    except (smtplib.SMTPServerDisconnected, OSError) as exc:
        raise UnknownOutcome(f"the answer to DATA was lost ({exc}); the relay may have taken it") from None
    _check(code, reply, 250)
    return refused


def _check(code: int, reply: bytes, expected: int) -> None:
    if code == 421:
        raise _Reconnect(f"{code} {reply!r}")
    if code != expected:
        raise classify(code, reply)


def _dot_stuffed(payload: bytes) -> bytes:
    """The DATA body: leading dots doubled (RFC 5321 4.5.2), CRLF-terminated, then the final dot."""
    body = re.sub(rb"(?m)^\.", b"..", payload)
    return body + (b"" if body.endswith(b"\r\n") else b"\r\n") + b".\r\n"


def send(account: EmailAccount, row: dict[str, Any]) -> Accepted:
    """Send one claimed row; the provider message id is its Message-ID.

    A session that broke before the final dot is replaced once; if the fresh one breaks too (a
    relay that keeps answering 421) the message is retried later like any transient failure.
    """
    message = compose(account, row)
    payload = message.as_bytes()
    sender, recipient = parseaddr(str(message["From"]))[1], row["to_addr"]
    pool = pool_for(account)
    for fresh in (False, True):
        try:
            with pool.session(fresh=fresh) as smtp:
                refused = transmit(smtp, sender, [recipient], payload)
        except _Reconnect as exc:
            if fresh:
                raise TransientError(f"the relay closed the session twice: {exc}", code="421") from None
            log.info("SMTP session to %s broke before DATA (%s); reconnecting", account.host, exc)
            continue
        if recipient in refused:
            raise refused[recipient]
        return Accepted(provider_message_id=str(message["Message-ID"]), segments=None, provider_status="250")
    raise AssertionError("unreachable")


# SMTP offers no look-up of sent mail: an unknown outcome fails or is resent as the workspace chose.
EMAIL = Channel(name="email", provider=PROVIDER, account_for=email_account, send=send, find_sent=None)
