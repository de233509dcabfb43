"""The sandbox's SMTP server: a real ESMTP server (aiosmtpd) in its own process.

The HTTP sandbox runs under gunicorn's gevent worker, where an asyncio server does not fit, so
``services.sandbox.__main__`` starts this process beside it. It keeps no state of its own: for
each transaction it asks the HTTP sandbox over loopback which reply to give (the fault plan of
channel ``email``, ``POST /sandbox/email/verdict``), and hands each accepted message to it
(``POST /sandbox/email/received``), which records it for ``GET /sandbox/messages`` and posts the
relay's signed events to ingest. Replies follow RFC 5321: a 421 is sent and the session closed;
a lost answer (an injected ``drop``) closes the session after the message was recorded, without
a reply to the final dot. The plan's latency delays the reply to the final dot; for a recipient
whose local part starts with ``slow`` it delays the reply to RCPT as well (a relay slow before
DATA: a greylisting or DNS check), which a client's deadline must cut short.

Run: ``python -m services.sandbox.smtp_server`` (host and port from settings).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from typing import Any
from urllib.parse import urlencode

import urllib3
from aiosmtpd.smtp import SMTP, Envelope, Session

from common.config import settings

log = logging.getLogger("postroom.sandbox.smtp")
VERDICT = "sandbox_verdict"  # the envelope attribute holding this transaction's fault, if any
NOT_READY = "451 4.3.0 sandbox not ready, try again"  # the HTTP sandbox did not answer


class SandboxRelay:
    """aiosmtpd handler: every reply decided by the HTTP sandbox's fault plan for ``email``."""

    def __init__(self, sandbox_url: str):
        self._url = sandbox_url
        self._http = urllib3.PoolManager(maxsize=64, retries=False, timeout=urllib3.Timeout(total=10))

    async def _ask(self, path: str, body: bytes = b"", **query: Any) -> dict[str, Any] | None:
        def call() -> dict[str, Any] | None:
            try:
                response = self._http.request("POST", f"{self._url}{path}?{urlencode(query, doseq=True)}", body=body)
            except urllib3.exceptions.HTTPError:
                log.warning("the HTTP sandbox did not answer %s", path)
                return None
            return json.loads(response.data) if response.status == 200 else None

        return await asyncio.to_thread(call)

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          options: list[str]) -> str:
        verdict = await self._ask("/sandbox/email/verdict")
        if verdict is None:
            return NOT_READY
        setattr(envelope, VERDICT, verdict)  # a new envelope starts with each transaction
        if verdict["stage"] == "MAIL":
            return await _refuse(server, verdict["reply"])
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          options: list[str]) -> str:
        verdict = getattr(envelope, VERDICT, {})
        if address.lower().startswith("slow"):
            await asyncio.sleep(verdict.get("latency_seconds", 0))
        if verdict.get("stage") == "RCPT":
            return await _refuse(server, verdict["reply"])
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        verdict = getattr(envelope, VERDICT, {})
        await asyncio.sleep(verdict.get("latency_seconds", 0))
        if verdict.get("stage") == "DATA":
            return await _refuse(server, verdict["reply"])
        answer = await self._ask("/sandbox/email/received", envelope.original_content or b"",
                                 sender=envelope.mail_from, to=envelope.rcpt_tos)
        if answer is None:  # the HTTP side may have recorded it: a 4yz would invite a second copy
            return await _refuse(server, None)  # so, as a relay that crashed after storing it, say nothing
        if answer["lost"] == "drop":  # recorded, and the client never hears so
            return await _refuse(server, None)
        if answer["lost"] == "hang":
            await asyncio.sleep(answer["hang_seconds"])
        return str(answer["reply"])


async def _refuse(server: SMTP, reply: str | None) -> str:
    """Send ``reply``; a 421 (or no reply at all) also closes the session, as a relay does."""
    if reply is not None and not reply.startswith("421"):
        return reply
    if reply is not None:
        await server.push(reply)
    assert server.transport is not None
    server.transport.close()
    await asyncio.Event().wait()  # closing cancels this session's task; nothing more is said
    raise AssertionError("unreachable")


async def serve(host: str, port: int, sandbox_url: str) -> None:
    """Accept SMTP sessions until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    relay = SandboxRelay(sandbox_url)
    server = await loop.create_server(
        lambda: SMTP(relay, hostname="sandbox.postroom.test", ident="postroom sandbox ESMTP"),
        host, port, reuse_address=True)
    log.info("sandbox SMTP server listening on %s:%s", host, port)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    server.close()


def main() -> None:
    logging.basicConfig(level=settings.postroom_log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every command at INFO
    try:
        asyncio.run(serve(settings.postroom_sandbox_host, settings.postroom_sandbox_smtp_port, settings.sandbox_url))
    except OSError as exc:  # the HTTP sandbox keeps serving; only email has nowhere to go
        log.error("sandbox SMTP server cannot listen on %s:%s: %s", settings.postroom_sandbox_host,
                  settings.postroom_sandbox_smtp_port, exc)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
