"""A lean imitation of Twilio's Messages API for benchmarks: one asyncio process, stdlib only.

``python -m tests.bench.lean_provider --port N [--latency-ms X]`` prints ``LISTENING`` once bound.
HTTP/1.1 with keep-alive, parsed by a minimal ``asyncio.Protocol`` (request line, headers,
``Content-Length`` body; no chunked bodies), so a call costs a few tens of microseconds of CPU,
far less than the Flask sandbox: the benchmark measures postroom, not its provider.

  POST /2010-04-01/Accounts/AC<anything>/Messages.json   form body: To, From or MessagingServiceSid, Body
      -> 201 {"sid": "SM<32 hex>", "status": "queued", "to", "from", "body", "num_segments": "1",
              "date_created", ...} after the latency (calls overlap: nothing blocks), 400 if To or
              Body is missing
  GET  /__stats    -> {"requests": 201 answers, "distinct_to", "bad": 4xx answers, "duplicates"}
  POST /__latency  {"latency_ms": X} -> the latency from now on
  POST /__reset    -> counters and first-seen times cleared (the latency stays)
  GET  /__seen?to=+1...,+1...  (or POST a JSON list) -> {"+1...": epoch seconds first received}
                   for the numbers received so far (the others are left out)

A request counts (and its To's first-seen time is taken) when it arrives, before the latency.
Answers on one connection go out in request order, whatever their latency. SIGTERM/SIGINT: close
and exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import time
from collections import deque
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qs, unquote

MESSAGES_PATH = re.compile(r"/2010-04-01/Accounts/(AC[0-9A-Za-z]*)/Messages\.json")
MAX_HEAD = 65536
REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           413: "Payload Too Large", 431: "Request Header Fields Too Large"}


class Provider:
    """The imitation's state: counters, first-seen times by To, and the latency."""

    def __init__(self, latency_ms: float) -> None:
        self.latency = latency_ms / 1000
        self.requests = 0
        self.bad = 0
        self.seen: dict[str, float] = {}
        self._date_second = -1
        self._date = ""

    def date(self) -> str:
        """RFC 2822 date of now, as Twilio writes date_created (formatted once per second)."""
        now = int(time.time())
        if now != self._date_second:
            self._date_second, self._date = now, formatdate(now, usegmt=False).replace("-0000", "+0000")
        return self._date

    def stats(self) -> dict[str, int]:
        distinct = len(self.seen)
        return {"requests": self.requests, "distinct_to": distinct, "bad": self.bad, "duplicates": self.requests - distinct}

    def handle(self, method: str, target: str, body: bytes) -> tuple[int, Any, float]:
        """Status, JSON answer and the delay before it goes out."""
        path, _, query = target.partition("?")
        found = MESSAGES_PATH.fullmatch(path)
        if found:
            if method != "POST":
                self.bad += 1
                return 405, {"code": 20004, "message": "Method not allowed", "status": 405}, 0.0
            return self._message(found.group(1), body)
        if path == "/__stats" and method == "GET":
            return 200, self.stats(), 0.0
        if path == "/__latency" and method == "POST":
            try:
                self.latency = max(0.0, float(json.loads(body or b"{}")["latency_ms"])) / 1000
            except (ValueError, KeyError, TypeError):
                return 400, {"message": 'send {"latency_ms": X}'}, 0.0
            return 200, {"latency_ms": self.latency * 1000}, 0.0
        if path == "/__reset" and method == "POST":
            self.requests = self.bad = 0
            self.seen = {}
            return 200, self.stats(), 0.0
        if path == "/__seen":
            return self._seen(method, query, body)
        self.bad += 1
        return 404, {"code": 20404, "message": "not found", "status": 404}, 0.0

    def _message(self, account: str, body: bytes) -> tuple[int, Any, float]:
        now = time.time()
        form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        to, text = form.get("To", [""])[0], form.get("Body", [""])[0]
        if not to or not text:
            self.bad += 1
            return 400, {"code": 21602, "message": "To and Body are required", "status": 400}, 0.0
        self.requests += 1
        self.seen.setdefault(to, now)
        sid = "SM" + os.urandom(16).hex()
        sender = form.get("From", [None])[0]
        return 201, {
            "sid": sid, "status": "queued", "to": to, "from": sender, "body": text, "num_segments": "1", "num_media": "0",
            "direction": "outbound-api", "account_sid": account, "api_version": "2010-04-01",
            "messaging_service_sid": form.get("MessagingServiceSid", [None])[0], "date_created": self.date(),
            "date_updated": self.date(), "date_sent": None, "price": None, "price_unit": "USD", "error_code": None,
            "error_message": None, "uri": f"/2010-04-01/Accounts/{account}/Messages/{sid}.json",
        }, self.latency

    def _seen(self, method: str, query: str, body: bytes) -> tuple[int, Any, float]:
        if method == "POST":
            try:
                wanted = [str(n) for n in json.loads(body or b"[]")]
            except (ValueError, TypeError):
                return 400, {"message": "send a JSON list of numbers"}, 0.0
        else:
            wanted = []
            for part in query.split("&"):
                name, _, value = part.partition("=")
                if name == "to":  # unquote, not unquote_plus: a + stays a +
                    wanted += [n.strip() for n in unquote(value).split(",") if n.strip()]
        # An unescaped + read as a space by some client: put it back.
        wanted = ["+" + n[1:] if n.startswith(" ") else n for n in wanted]
        return 200, {n: self.seen[n] for n in wanted if n in self.seen}, 0.0


class Connection(asyncio.Protocol):
    """One client connection: parse requests as they arrive, answer them in order."""

    def __init__(self, provider: Provider, open_connections: set[Connection]) -> None:
        self.provider = provider
        self.open = open_connections
        self.buffer = bytearray()
        self.pending: deque[list[Any]] = deque()  # [answer bytes or None, close after it]
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.open.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.open.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD:
                    self._answer(431, {"message": "headers too large"}, 0.0, close=True)
                return
            head = self.buffer[:end].decode("latin-1").split("\r\n")
            try:
                method, target, version = head[0].split(" ", 2)
            except ValueError:
                self._answer(400, {"message": "bad request line"}, 0.0, close=True)
                return
            headers = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self._answer(400, {"message": "chunked bodies are not supported"}, 0.0, close=True)
                return
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                self._answer(400, {"message": "bad Content-Length"}, 0.0, close=True)
                return
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4:end + 4 + length])
            del self.buffer[:end + 4 + length]
            connection = headers.get("connection", "").lower()
            close = connection == "close" or (version == "HTTP/1.0" and connection != "keep-alive")
            status, answer, delay = self.provider.handle(method, target, body)
            self._answer(status, answer, delay, close=close)

    def _answer(self, status: int, answer: Any, delay: float, *, close: bool) -> None:
        out = json.dumps(answer).encode()
        head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(out)}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n")
        slot: list[Any] = [None, close]
        self.pending.append(slot)
        if delay > 0:
            self.loop.call_later(delay, self._ready, slot, head.encode() + out)
        else:
            self._ready(slot, head.encode() + out)
        if close:
            self.buffer.clear()

    def _ready(self, slot: list[Any], data: bytes) -> None:
        slot[0] = data
        while self.pending and self.pending[0][0] is not None:
            data, close = self.pending.popleft()
            if self.transport is None:
                continue
            self.transport.write(data)
            if close:
                self.transport.close()
                self.transport = None


async def serve(host: str, port: int, latency_ms: float) -> None:
    provider = Provider(latency_ms)
    open_connections: set[Connection] = set()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(provider, open_connections), host, port,
                                      reuse_address=True, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("LISTENING", flush=True)
    await stop.wait()
    server.close()
    for conn in list(open_connections):
        if conn.transport is not None:
            conn.transport.close()
    await server.wait_closed()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.lean_provider", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before each message answer")
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.latency_ms))


if __name__ == "__main__":
    main()
