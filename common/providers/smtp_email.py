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

A claimed message must leave ``sending`` well before POSTROOM_SENDING_TIMEOUT_SECONDS, or the
reconciler (SMTP has no look-up) takes it for abandoned and fails or resends it while this call
still runs. So each send has one deadline (``Deadline``): attachments are fetched, a session is
waited for and the transaction runs up to DATA within it, every socket operation timed to what is
left; past it before DATA nothing was delivered and the send is retried later. DATA and the
answer to the final dot get one more budget of the same length, after which the outcome is unknown.

Pools are per account key. A workspace's configured account is keyed by the workspace too, because
relays give many customers the same login name (SendGrid's is ``apikey``): pacing, 429 pauses and
receipts must not be shared between tenants.

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
import urllib3

from common.config import settings
from common.errors import PermanentError, ProviderError, TransientError, UnknownOutcome
from common.netguard import BlockedAddress
from common.providers import config as channel_config
from common.providers.base import Accepted, Channel
from common.providers.transport import guarded_session

PROVIDER = "smtp"
# 7bit transfer encodings only (quoted-printable or base64 for anything else): every relay takes
# them, with or without 8BITMIME. CRLF line ends, as SMTP wants them.
POLICY = policy.SMTP.clone(cte_type="7bit")
MAX_ATTACHMENT_BYTES = 10 * 1024 * 1024  # all attachments of one message together
MAX_IDLE_SECONDS = 50.0  # relays drop idle sessions after about a minute; do not reuse one older
SESSION_WAIT_SECONDS = 3.0  # longest wait for a free session of the account's pool
RESET_TIMEOUT_SECONDS = 2.0  # RSET after a refused transaction: a healthy relay answers at once
POOL_IDLE_SECONDS = 600.0  # a pool unused this long (a workspace that stopped sending) is closed
MAX_POOLS = 256  # pools one process keeps; the least recently used is closed beyond this
ATTACHMENT_CHUNK_BYTES = 64 * 1024
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
    workspace_id: int | None = None  # the workspace whose configuration this is; None: the default

    @property
    def key(self) -> str:
        """Pacing, 429 pauses, receipts and the session pool are keyed by the login on its relay,
        and for a workspace's own account by the workspace too: two tenants with the same relay
        login name (SendGrid's ``apikey``) share nothing."""
        login = f"{self.username or self.sender}@{self.host}:{self.port}"
        return login if self.workspace_id is None else f"ws{self.workspace_id}:{login}"


def default_account() -> EmailAccount:
    return EmailAccount(settings.smtp_host, settings.smtp_port, settings.smtp_security, settings.smtp_username,
                        settings.smtp_password, settings.email_from, settings.smtp_rate_limit_per_second)


def account_of(config: channel_config.ChannelConfig) -> EmailAccount:
    """The account a workspace's ``email`` configuration describes."""
    opts, creds = config.settings, config.credentials
    return EmailAccount(str(opts.get("host") or settings.smtp_host), int(opts.get("port") or settings.smtp_port),
                        str(opts.get("security") or settings.smtp_security), str(creds.get("username") or ""),
                        str(creds.get("password") or ""), config.sender_identity, config.rate_limit_per_second,
                        config.workspace_id)


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


# -- the deadline of one send ------------------------------------------------------------------

@dataclass(frozen=True)
class Deadline:
    """When one send must have reached DATA (``before_data``) and when it must be over (``end``),
    on the monotonic clock.

    The budget is a third of the sending timeout at most (and no more than the provider timeout),
    so even a send that uses both budgets leaves ``sending`` with a third of the timeout to spare.
    """

    before_data: float
    end: float

    @classmethod
    def starting_now(cls) -> Deadline:
        budget = min(settings.postroom_sending_timeout_seconds / 3, settings.postroom_provider_timeout_seconds)
        now = time.monotonic()
        return cls(now + budget, now + 2 * budget)

    def left(self, doing: str, code: str = "deadline") -> float:
        """Seconds left before DATA.

        Raises:
          TransientError: none are left; nothing was delivered, so a later attempt is safe.
        """
        left = self.before_data - time.monotonic()
        if left <= 0:
            raise TransientError(f"the send ran out of time before {doing}; nothing was delivered", code=code)
        return left

    def left_after_data(self) -> float:
        """Seconds left for DATA and the answer to the final dot (a sliver once past: a socket
        operation then times out at once rather than blocking)."""
        return max(0.001, self.end - time.monotonic())


# -- the message ------------------------------------------------------------------------------

def compose(account: EmailAccount, row: dict[str, Any], deadline: Deadline) -> EmailMessage:
    """The MIME message of one claimed row: text and HTML as alternatives, attachments (fetched
    within ``deadline``), headers."""
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
    for name, data, mime_type in fetch_attachments(content.get("attachments") or [], deadline):
        maintype, _, subtype = mime_type.partition("/")
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return message


def fetch_attachments(attachments: list[dict[str, Any]], deadline: Deadline) -> list[tuple[str, bytes, str]]:
    """Each attachment's (filename, bytes, type), fetched through the SSRF guard, all together
    at most MAX_ATTACHMENT_BYTES, all before ``deadline.before_data`` (a slow server cannot keep
    the message in ``sending``).

    Raises:
      PermanentError: a refused address, a 4xx answer, or too large (retrying cannot help).
      TransientError: a 5xx answer, a timeout (the deadline's included), a connection failure.
    """
    session = guarded_session(settings.postroom_webhook_allowed_networks)
    fetched, total = [], 0
    for attachment in attachments:
        url = attachment["url"]
        left = deadline.left("fetching attachments", code="attachment")
        try:
            with session.get(url, timeout=(min(5.0, left), left), stream=True, allow_redirects=False) as response:
                if response.status_code >= 500 or response.status_code == 429:
                    raise TransientError(f"attachment {url} answered {response.status_code}", code="attachment")
                if response.status_code != 200:
                    raise PermanentError(f"attachment {url} answered {response.status_code}", code="attachment")
                data = _read_body(response, MAX_ATTACHMENT_BYTES - total + 1, deadline)
                mime_type = (response.headers.get("Content-Type") or "").split(";")[0].strip()
        except BlockedAddress as exc:
            raise PermanentError(f"attachment URL refused: {exc}", code="attachment_blocked") from None
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:  # the body's errors are urllib3's
            raise TransientError(f"attachment {url} could not be fetched: {type(exc).__name__}", code="attachment") from None
        total += len(data)
        if total > MAX_ATTACHMENT_BYTES:
            raise PermanentError(f"attachments exceed {MAX_ATTACHMENT_BYTES} bytes", code="attachment_too_large")
        name = attachment.get("filename") or unquote(urlsplit(url).path.rpartition("/")[2]) or "attachment"
        if "/" not in mime_type:
            mime_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        fetched.append((name, data, mime_type))
    return fetched


def _read_body(response: requests.Response, limit: int, deadline: Deadline) -> bytes:
    """Up to ``limit`` bytes of a streamed body, each read timed to what is left of the deadline
    (a server trickling a byte at a time never reaches a per-read timeout)."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        left = deadline.left("fetching attachments", code="attachment")
        sock = getattr(response.raw.connection, "sock", None)  # None once the body was read and released
        if sock is not None:
            sock.settimeout(left)
        chunk = response.raw.read(min(ATTACHMENT_CHUNK_BYTES, limit - size), decode_content=True)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


# -- the error table --------------------------------------------------------------------------

def classify(code: int, reply: bytes | str) -> ProviderError:
    """Map an SMTP reply that did not accept the message onto the error vocabulary."""
    text = (reply.decode(errors="replace") if isinstance(reply, bytes) else reply).strip()
    enhanced = _ENHANCED.match(text)
    status = enhanced.group(0) if enhanced else None
    label = f"{code} {status}" if status else str(code)
    if 500 <= code < 600:
        about_recipient = recipient_unknown(status)
        return PermanentError(f"{code} {text}", code=label, suppress="bounce" if about_recipient else None,
                              fallback=about_recipient)
    return TransientError(f"{code} {text}", code=label)


def recipient_unknown(status: str | None) -> bool:
    """Whether an enhanced status code (RFC 3463) says the recipient's address does not exist
    (5.1.x: user unknown, bad domain or syntax): the address is suppressed and the route's next
    channel tried, whether the relay refused it at RCPT or bounced it later. Not 5.1.7/5.1.8 (our
    sender's address), a full mailbox (5.2.2), a policy refusal (5.7.x) or anything 4.x.x."""
    match = _ENHANCED.match(status or "")
    return match is not None and match.group(1, 2) == ("5", "1") and match.group(0) not in SENDER_STATUSES


class _Reconnect(Exception):
    """The session broke before the message's final dot was written (a 421 or a dropped
    connection): nothing was delivered, and a fresh session may succeed."""


# -- sessions ----------------------------------------------------------------------------------

class SessionPool:
    """Up to ``size`` open sessions of one account, each used by one call at a time (threads and
    greenlets alike wait for a free one, but only for a few seconds: a claimed message cannot wait
    without limit). A closed pool (replaced, idle, evicted) discards sessions given back to it."""

    def __init__(self, account: EmailAccount, size: int, timeout: float):
        self.account = account
        self.size = size
        self.last_used = time.monotonic()
        self._timeout = timeout
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._idle: list[tuple[float, smtplib.SMTP]] = []
        self._closed = False

    @contextmanager
    def session(self, deadline: Deadline, *, fresh: bool = False) -> Iterator[smtplib.SMTP]:
        """A session for one transaction; it goes back to the pool only if the body ends cleanly
        (a transaction refused by the relay is reset first).

        Raises:
          TransientError: no session came free within SESSION_WAIT_SECONDS (or the deadline),
            or none could be opened.
        """
        wait = min(SESSION_WAIT_SECONDS, deadline.left("an SMTP session came free"))
        if not self._slots.acquire(timeout=wait):
            raise TransientError(f"all {self.size} SMTP sessions to {self.account.host} stayed busy for {wait:.1f}s",
                                 code="sessions_busy")
        try:
            smtp = None if fresh else self._take_idle()
            smtp = smtp or self._connect(deadline)
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
        finally:
            self._slots.release()

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
            if not self._closed:
                self._idle.append((time.monotonic(), smtp))
                return
        _discard(smtp)

    def _connect(self, deadline: Deadline) -> smtplib.SMTP:
        """A new session, logged in; every step timed to what is left of the deadline."""
        account = self.account
        with _connection_errors(account):
            timeout = min(self._timeout, deadline.left("connecting"))
            if account.security == "tls":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(account.host, account.port, timeout=timeout,
                                                      context=ssl.create_default_context())
            else:
                smtp = smtplib.SMTP(account.host, account.port, timeout=timeout)
        try:
            with _connection_errors(account):
                _limit(smtp, deadline, "EHLO")
                smtp.ehlo()
                if account.security == "starttls":
                    _limit(smtp, deadline, "STARTTLS")
                    smtp.starttls(context=ssl.create_default_context())
                    _limit(smtp, deadline, "EHLO")
                    smtp.ehlo()
                if account.username:
                    _limit(smtp, deadline, "AUTH")
                    smtp.login(account.username, account.password)
        except BaseException:
            _discard(smtp)
            raise
        return smtp

    def close(self) -> None:
        """Close the idle sessions; those in use are closed when given back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for _, smtp in idle:
            _discard(smtp)


@contextmanager
def _connection_errors(account: EmailAccount) -> Iterator[None]:
    """Map what opening a session raises onto the error vocabulary."""
    try:
        yield
    except smtplib.SMTPAuthenticationError as exc:
        raise classify(exc.smtp_code, exc.smtp_error) if exc.smtp_code < 500 else \
            PermanentError(f"SMTP login refused: {exc.smtp_code}", code="auth") from None
    except smtplib.SMTPNotSupportedError as exc:
        raise PermanentError(f"the relay does not support {account.security}: {exc}", code="security") from None
    except smtplib.SMTPResponseException as exc:  # a 421 greeting, a refused EHLO
        raise classify(exc.smtp_code, exc.smtp_error) from None
    except (OSError, smtplib.SMTPException) as exc:
        raise TransientError(f"could not connect to {account.host}:{account.port}: {exc!r}", code="connection") from None


def _limit(smtp: smtplib.SMTP, deadline: Deadline, doing: str) -> None:
    """Time the session's next socket operation to what is left before DATA (the per-operation
    timeout alone would let a relay answering every command slowly run far past it)."""
    left = deadline.left(doing)
    if smtp.sock is not None:
        smtp.sock.settimeout(left)


def _reset(smtp: smtplib.SMTP) -> bool:
    try:
        if smtp.sock is not None:
            smtp.sock.settimeout(RESET_TIMEOUT_SECONDS)
        return smtp.rset()[0] == 250
    except (OSError, smtplib.SMTPException):
        return False


def _discard(smtp: smtplib.SMTP) -> None:
    try:
        smtp.close()
    except OSError:
        pass


# One pool per account key. A pool whose account changed (a new password, another relay) is
# replaced; pools unused for POOL_IDLE_SECONDS, and the least recently used beyond MAX_POOLS, are
# closed, so a process that sent for many workspaces keeps no sockets or passwords for long.
_pools: dict[str, SessionPool] = {}
_pools_lock = threading.Lock()
_next_sweep = 0.0


def pool_size() -> int:
    """Sessions per account: at least one per call a sender process can have in flight (each of
    its three lanes has POSTROOM_SENDER_CONCURRENCY), so claimed messages never queue for one."""
    return max(settings.smtp_pool_size, 3 * settings.postroom_sender_concurrency)


def pool_for(account: EmailAccount) -> SessionPool:
    global _next_sweep
    now = time.monotonic()
    retired: list[SessionPool] = []
    with _pools_lock:
        pool = _pools.get(account.key)
        if pool is not None and pool.account != account:
            retired.append(_pools.pop(account.key))
            pool = None
        if now >= _next_sweep:
            _next_sweep = now + min(60.0, POOL_IDLE_SECONDS)
            retired += [_pools.pop(key) for key, p in list(_pools.items()) if now - p.last_used >= POOL_IDLE_SECONDS]
        if pool is None:
            while len(_pools) >= MAX_POOLS:
                retired.append(_pools.pop(min(_pools, key=lambda key: _pools[key].last_used)))
            pool = _pools[account.key] = SessionPool(account, pool_size(), settings.postroom_provider_timeout_seconds)
        pool.last_used = now
    for old in retired:
        old.close()
    return pool


def close_pools() -> None:
    """Close every pool and forget it (a worker shutting down, a test starting clean)."""
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        pool.close()


# -- one transaction ----------------------------------------------------------------------------

def transmit(smtp: smtplib.SMTP, sender: str, recipients: list[str], payload: bytes,
             deadline: Deadline) -> dict[str, ProviderError]:
    """MAIL, RCPT for each recipient, DATA, as ``sendmail`` does, but knowing when the final dot
    went out. Returns the refused recipients, each classified by its own reply; raises if none
    was accepted or DATA was refused. Every command before DATA is timed to the deadline; DATA,
    the message and the answer to the final dot to the deadline's end.

    Raises:
      _Reconnect: 421 or a dropped connection (or a timeout) before the final dot (nothing was delivered).
      TransientError: the deadline passed before DATA.
      UnknownOutcome: the answer to the final dot was lost or did not come in time.
      ProviderError: the relay refused the transaction.
    """
    try:
        options = [f"SIZE={len(payload)}"] if smtp.has_extn("size") else []
        _limit(smtp, deadline, "MAIL")
        code, reply = smtp.mail(sender, options)
        _check(code, reply, 250)
        refused: dict[str, ProviderError] = {}
        for recipient in recipients:
            _limit(smtp, deadline, "RCPT")
            code, reply = smtp.rcpt(recipient)
            if code == 421:
                raise _Reconnect(f"{code} {reply!r}")
            if code not in (250, 251):
                refused[recipient] = classify(code, reply)
        if len(refused) == len(recipients):
            raise refused[recipients[0]]
        deadline.left("DATA")  # the last moment to give up with nothing delivered
        _after_data(smtp, deadline)
        code, reply = smtp.docmd("DATA")
        _check(code, reply, 354)
        _after_data(smtp, deadline)
        smtp.send(_dot_stuffed(payload))
    except (smtplib.SMTPServerDisconnected, OSError) as exc:
        raise _Reconnect(repr(exc)) from None
    try:
        _after_data(smtp, deadline)
        code, reply = smtp.getreply()
    except (smtplib.SMTPServerDisconnected, OSError) as exc:
        raise UnknownOutcome(f"the answer to DATA was lost ({exc!r}); the relay may have taken it") from None
    _check(code, reply, 250)
    return refused


def _after_data(smtp: smtplib.SMTP, deadline: Deadline) -> None:
    if smtp.sock is not None:
        smtp.sock.settimeout(deadline.left_after_data())


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

    Attachments are fetched before a session is taken, all within the send's deadline. A session
    that broke before the final dot is replaced once, time permitting; if the fresh one breaks
    too (a relay that keeps answering 421) the message is retried later like any transient failure.
    """
    deadline = Deadline.starting_now()
    message = compose(account, row, deadline)
    payload = message.as_bytes()
    sender, recipient = parseaddr(str(message["From"]))[1], row["to_addr"]
    pool = pool_for(account)
    for fresh in (False, True):
        try:
            with pool.session(deadline, fresh=fresh) as smtp:
                refused = transmit(smtp, sender, [recipient], payload, deadline)
        except _Reconnect as exc:
            deadline.left("DATA")  # a timeout on the way there: no time for another session
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
