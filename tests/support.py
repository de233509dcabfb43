"""Helpers the tests share: waiting on a condition, draining stages, reading the sandbox."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import dramatiq
import requests

from common.db.connection import fetch_dicts, transaction


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def start_worker(worker: dramatiq.Worker) -> None:
    """Start ``worker`` and wait until every consumer thread runs. A consumer thread sets its
    ``running`` flag when it begins, so a stop that came before that would be undone."""
    worker.start()
    wait_for(lambda: all(getattr(thread, "running", False) for thread in worker.consumers.values()),
             timeout=30, what="the worker's consumer threads to start")


def stop_worker(worker: dramatiq.Worker) -> None:
    """Stop ``worker`` and take its middleware off the broker. Dramatiq's Worker.start adds a
    middleware that starts a consumer for every queue declared later and never removes it, so
    without this every stopped worker in the session started (and never stopped) a consumer
    thread for each queue a later test module declared."""
    worker.stop(timeout=10_000)
    worker.broker.middleware[:] = [m for m in worker.broker.middleware if getattr(m, "worker", None) is not worker]
    for thread in worker.consumers.values():
        thread.running = False  # in case one began after the stop
        thread.join(timeout=5)


def live_consumer_threads() -> list[Any]:
    """Dramatiq consumer threads still alive in this process."""
    from dramatiq.worker import _ConsumerThread

    return [thread for thread in threading.enumerate() if isinstance(thread, _ConsumerThread)]


@contextmanager
def running_workers(broker: dramatiq.Broker, threads: int = 4) -> Iterator[dramatiq.Worker]:
    """Real Dramatiq workers in this process consuming every stage's queues."""
    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=threads)
    start_worker(worker)
    try:
        yield worker
    finally:
        stop_worker(worker)


def apply_kept_receipts(broker: dramatiq.Broker) -> None:
    """Run the receipts stage until every status receipt ingest has kept so far is applied."""
    from common import dispatch

    dispatch.handoff.flush()  # the ids ingest is still gathering into a batch
    worker = dramatiq.Worker(broker, queues={"receipts_normal"}, worker_timeout=50, worker_threads=1)
    start_worker(worker)
    try:
        broker.join("receipts_normal", timeout=10_000)
        worker.join()
    finally:
        stop_worker(worker)


def message(message_id: int) -> dict[str, Any]:
    with transaction():
        return fetch_dicts("SELECT * FROM message WHERE id = %s", (message_id,))[0]


def history(message_id: int) -> list[str]:
    with transaction():
        return [r["status"] for r in fetch_dicts("SELECT status FROM message_event WHERE message_id = %s ORDER BY id", (message_id,))]


def status_of(message_id: int) -> str:
    return message(message_id)["status"]


FAULT_CHANNELS = ("sms", "email", "whatsapp_cloud", "whatsapp_qr")  # each provider imitation's fault plan


class Sandbox:
    """The sandbox's control API."""

    def __init__(self, url: str):
        self.url = url

    def reset(self) -> None:
        wait_for(lambda: requests.get(f"{self.url}/sandbox/stats", timeout=5).json()["deliveries_in_flight"] == 0,
                 timeout=10, what="sandbox callbacks to finish")
        for channel in FAULT_CHANNELS:
            requests.delete(f"{self.url}/sandbox/faults", params={"channel": channel}, timeout=5).raise_for_status()
        requests.delete(f"{self.url}/sandbox/messages", timeout=5).raise_for_status()
        requests.delete(f"{self.url}/sandbox/whatsapp_cloud", timeout=5).raise_for_status()  # numbers, marks, bodies
        requests.delete(f"{self.url}/sandbox/waha", timeout=5).raise_for_status()  # sessions, numbers, bodies
        requests.delete(f"{self.url}/sandbox/receivers", timeout=5).raise_for_status()
        requests.delete(f"{self.url}/sandbox/openai", timeout=5).raise_for_status()  # the model: keys, records, faults

    def fault(self, **spec: Any) -> None:
        requests.post(f"{self.url}/sandbox/faults", json=spec, timeout=5).raise_for_status()

    def messages(self, to: str | None = None) -> list[dict[str, Any]]:
        params = {"to": to} if to else {}
        return requests.get(f"{self.url}/sandbox/messages", params=params, timeout=5).json()["messages"]

    def stats(self) -> dict[str, Any]:
        return requests.get(f"{self.url}/sandbox/stats", timeout=5).json()
