"""The chaos run's API client: posts messages at a steady pace, on several channels, retrying the
way a real client would.

Every message has a unique body (``chaos <run> <scenario> <n>``) so the provider's side can be
counted, and an ``Idempotency-Key``, so retrying a request whose answer was lost cannot create a
second message. A 503 is retried after its ``Retry-After`` (capped), a connection error or a
timeout after a second, all within a bounded time per message; any other refusal is final. Every
request is logged — when it started, how long it took, its status, its ``Retry-After`` — so a
scenario can show how the API answered during its fault.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import requests

CLIENT_THREADS = 16
# Message n goes out on CHANNELS[n % 4]: every sender takes its share of every fault. WhatsApp
# Cloud is left out: a broadcast there is a template, whose text the provider's side cannot
# match to a message (its delivery is covered end to end by tests/test_channels_e2e.py).
CHANNELS = ("sms", "email", "sms", "whatsapp_qr")
REQUEST_TIMEOUT_SECONDS = 10.0  # longer than any answer should take: a slow answer is measured, not cut
GIVE_UP_AFTER_SECONDS = 90.0  # per message: then it counts as refused
MAX_RETRY_AFTER_SECONDS = 5.0


@dataclass(frozen=True)
class ApiCall:
    """One HTTP request: its start (monotonic), duration, status (0: no answer), Retry-After."""

    started: float
    seconds: float
    status: int
    retry_after: str | None


@dataclass
class Traffic:
    """What was posted: accepted message ids by body, refusals, and every request made."""

    accepted: dict[str, int] = field(default_factory=dict)
    channels: dict[str, str] = field(default_factory=dict)  # the channel of each accepted body
    refused: dict[str, str] = field(default_factory=dict)
    calls: list[ApiCall] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    finished: threading.Event = field(default_factory=threading.Event)

    def ids(self) -> list[int]:
        with self.lock:
            return list(self.accepted.values())

    def calls_between(self, start: float, end: float) -> list[ApiCall]:
        """Requests that were started from ``start`` to ``end`` (monotonic seconds)."""
        with self.lock:
            return [c for c in self.calls if start <= c.started <= end]


class Poster:
    """Posts ``count`` messages over at least ``spread_seconds`` from a pool of client threads."""

    def __init__(self, api: str, key: str, tag: str, priority: str = "bulk") -> None:
        self.api, self.tag, self.priority = api, tag, priority
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self.traffic = Traffic()
        self._local = threading.local()

    def body(self, n: int) -> str:
        return f"{self.tag} {n}"

    def run(self, count: int, spread_seconds: float = 0.0) -> Traffic:
        """Post every message (message n not before start + n × spread / count); blocks."""
        started = time.monotonic()
        try:
            with ThreadPoolExecutor(CLIENT_THREADS, thread_name_prefix="chaos-client") as pool:
                for n in range(count):
                    pool.submit(self._post_one, n, started + spread_seconds * n / max(count, 1))
        finally:
            self.traffic.finished.set()
        return self.traffic

    def start(self, count: int, spread_seconds: float = 0.0) -> threading.Thread:
        """``run`` in a background thread."""
        thread = threading.Thread(target=self.run, args=(count, spread_seconds), name="chaos-poster", daemon=True)
        thread.start()
        return thread

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _post_one(self, n: int, not_before: float) -> None:
        time.sleep(max(0.0, not_before - time.monotonic()))
        body = self.body(n)
        channel = CHANNELS[n % len(CHANNELS)]
        to = f"reader{n % 1000}@example.com" if channel == "email" else f"+15005551{n % 1000:03d}"
        payload = json.dumps({"channel": channel, "to": to, "body": body, "priority": self.priority})
        headers = {**self.headers, "Idempotency-Key": f"{self.tag} {n}".replace(" ", "-")}
        deadline = time.monotonic() + GIVE_UP_AFTER_SECONDS
        outcome = "never answered"
        while time.monotonic() < deadline:
            began = time.monotonic()
            try:
                answer = self._session().post(f"{self.api}/v1/messages", data=payload, headers=headers,
                                              timeout=REQUEST_TIMEOUT_SECONDS)
            except requests.RequestException as exc:
                self._log(ApiCall(began, time.monotonic() - began, 0, None))
                outcome = f"no answer: {type(exc).__name__}"
                self._local.session = None  # a fresh connection for the next attempt
                time.sleep(1.0)
                continue
            retry_after = answer.headers.get("Retry-After")
            self._log(ApiCall(began, time.monotonic() - began, answer.status_code, retry_after))
            if answer.status_code in (200, 201, 202):
                with self.traffic.lock:
                    self.traffic.accepted[body] = int(answer.json()["id"])
                    self.traffic.channels[body] = channel
                return
            outcome = f"HTTP {answer.status_code}: {answer.text[:200]}"
            if not _retryable(answer):
                break
            time.sleep(min(_seconds(retry_after), MAX_RETRY_AFTER_SECONDS))
        with self.traffic.lock:
            self.traffic.refused[body] = outcome

    def _log(self, call: ApiCall) -> None:
        with self.traffic.lock:
            self.traffic.calls.append(call)


def _retryable(answer: requests.Response) -> bool:
    """What a careful client retries with the same key: an outage (503), a rate limit (429), and
    the same key's first attempt still running (409 ``idempotency_in_progress``: its answer was
    lost, or it is still at work)."""
    if answer.status_code in (429, 503):
        return True
    if answer.status_code != 409:
        return False
    try:
        return bool(answer.json()["error"]["code"] == "idempotency_in_progress")
    except (ValueError, KeyError, TypeError):
        return False


def _seconds(value: str | None) -> float:
    try:
        return max(0.1, float(value)) if value else 1.0
    except ValueError:
        return 1.0
