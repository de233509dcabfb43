"""What every benchmark scenario shares: the load client that posts messages through the API, the
sandbox set up as the provider, CPU snapshots of the stack's process groups, percentiles, and
waiting for a count to reach its target while it still moves."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil
import requests

from services.local.stack import Stack
from tests.bench.idle import cpu_seconds, stack_processes
from tests.support import FAULT_CHANNELS

CLIENT_THREADS = 32
STALL_SECONDS = 60.0  # nothing moved for this long: report what arrived instead of waiting on


def api_url(stack: Stack) -> str:
    return f"http://{stack.cfg.postroom_api_host}:{stack.cfg.postroom_api_port}"


def provider_answers_in(stack: Stack, latency_ms: int, channel: str = "sms") -> None:
    """A fresh sandbox as the provider: nothing received, no faults on any channel, every call on
    ``channel`` answered after ``latency_ms``."""
    sandbox = stack.cfg.sandbox_url
    requests.delete(f"{sandbox}/sandbox/messages", timeout=10).raise_for_status()
    for each in FAULT_CHANNELS:
        requests.delete(f"{sandbox}/sandbox/faults", params={"channel": each}, timeout=10).raise_for_status()
    requests.post(f"{sandbox}/sandbox/faults", params={"channel": channel}, json={"latency_ms": latency_ms},
                  timeout=10).raise_for_status()


def sandbox_received(stack: Stack) -> int:
    """Messages the sandbox received as the provider since it was last cleared."""
    return requests.get(f"{stack.cfg.sandbox_url}/sandbox/stats", timeout=10).json()["received"]


def cpu_snapshot(stack: Stack) -> dict[str, dict[int, float]]:
    """CPU seconds (user + system) of every process of the stack's groups and of this client, by pid."""
    groups = stack_processes(stack)
    groups["bench client"] = [psutil.Process(os.getpid())]
    return cpu_seconds(groups)


def one_value(cur: Any, sql: str, params: tuple[Any, ...]) -> int:
    """The single number a query answers."""
    cur.execute(sql, params)
    return int(cur.fetchone()[0])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def spread(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"p50": round(percentile(values, 50), 1), "p95": round(percentile(values, 95), 1),
            "p99": round(percentile(values, 99), 1), "max": round(max(values), 1)}


def wait_for_progress(read: Callable[[], int], target: int, stall: float = STALL_SECONDS, every: float = 0.1) -> int:
    """Poll ``read`` until it reaches ``target`` or has not moved for ``stall`` seconds; its last value."""
    last, moved = read(), time.monotonic()
    while last < target:
        time.sleep(every)
        value = read()
        if value != last:
            last, moved = value, time.monotonic()
        elif time.monotonic() - moved > stall:
            break
    return last


def post_all(api: str, key: str, count: int, tag: str, priority: str = "urgent", threads: int = CLIENT_THREADS,
             pause: float = 0.0, fields: dict[str, Any] | None = None,
             payload: Callable[[int], dict[str, Any]] | None = None) -> tuple[list[int], float, float]:
    """POST ``count`` messages from ``threads`` threads, each with ``fields`` added (``send_at``,
    say) and, for message ``n``, ``payload(n)`` (another channel and address); return ids, start
    and end times."""
    local = threading.local()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def one(n: int) -> int:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        body = json.dumps({"channel": "sms", "to": f"+15005551{n % 1000:03d}", "body": f"{tag} #{n}", "priority": priority,
                           **(fields or {}), **(payload(n) if payload else {})})
        if pause:
            time.sleep(pause)
        response = session.post(f"{api}/v1/messages", data=body, headers=headers, timeout=30)
        if response.status_code != 202:
            raise RuntimeError(f"API answered {response.status_code}: {response.text}")
        return response.json()["id"]

    started = time.time()
    with ThreadPoolExecutor(threads) as pool:
        ids = list(pool.map(one, range(count)))
    return ids, started, time.time()
