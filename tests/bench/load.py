"""What every benchmark scenario shares: the load client that posts messages through the API, the
sandbox set up as the provider, CPU snapshots of the stack's process groups, and percentiles."""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import requests

from services.local.stack import Stack
from tests.bench.idle import cpu_seconds, stack_processes

CLIENT_THREADS = 32


def api_url(stack: Stack) -> str:
    return f"http://{stack.cfg.postroom_api_host}:{stack.cfg.postroom_api_port}"


def provider_answers_in(stack: Stack, latency_ms: int) -> None:
    """A fresh sandbox as the provider: nothing received, no faults, every call answered after ``latency_ms``."""
    sandbox = stack.cfg.sandbox_url
    requests.delete(f"{sandbox}/sandbox/messages", timeout=10).raise_for_status()
    requests.delete(f"{sandbox}/sandbox/faults", timeout=10).raise_for_status()
    requests.post(f"{sandbox}/sandbox/faults", json={"latency_ms": latency_ms}, timeout=10).raise_for_status()


def sandbox_received(stack: Stack) -> int:
    """Messages the sandbox received as the provider since it was last cleared."""
    return requests.get(f"{stack.cfg.sandbox_url}/sandbox/stats", timeout=10).json()["received"]


def cpu_snapshot(stack: Stack) -> dict[str, dict[int, float]]:
    """CPU seconds (user + system) of every process of the stack's groups and of this client, by pid."""
    groups = stack_processes(stack)
    groups["bench client"] = [psutil.Process(os.getpid())]
    return cpu_seconds(groups)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def post_all(api: str, key: str, count: int, tag: str, priority: str = "urgent", threads: int = CLIENT_THREADS,
             pause: float = 0.0) -> tuple[list[int], float, float]:
    """POST ``count`` messages from ``threads`` threads; return ids, start and end times."""
    local = threading.local()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def one(n: int) -> int:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        body = json.dumps({"channel": "sms", "to": f"+1500555{n % 10000:04d}", "body": f"{tag} #{n}", "priority": priority})
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
