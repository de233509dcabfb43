"""Benchmark: single SMS posted through the API as fast as it takes them, end to end.

Starts a private stack (as ``make run`` does), measures its idle cost (``tests.bench.idle``), then
for each scenario — the sandbox answering at
once, and after 150 ms per call as real providers do — posts COUNT messages from a pool of client
threads and measures API requests/s, end-to-end messages/s (first request → last message
received by the sandbox), accepted → sent latency percentiles (from the database), and CPU
seconds per message of each process group. A last scenario posts COUNT bulk messages and, while
they are a backlog, urgent ones one at a time: the urgent lane's latency behind the backlog.
Results are printed as tables and written as JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import psycopg2
import requests

from common.config import ROOT
from services.local.stack import Stack, private_env
from tests.bench.idle import (
    cpu_seconds,
    cpu_used,
    idle_table,
    measure_idle,
    settle,
    stack_processes,
)

CLIENT_THREADS = 32
SCENARIOS = (("instant provider", 0), ("provider answers in 150 ms", 150))


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


def wait_until_recorded(database_url: str, ids: list[int], timeout: float = 60.0) -> None:
    """The sandbox has every message; wait until the senders have recorded every send too."""
    deadline = time.time() + timeout
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        while True:
            cur.execute("SELECT count(*) FROM message WHERE id = ANY(%s) AND sent_at IS NOT NULL", (ids,))
            if cur.fetchone()[0] == len(ids):
                return
            if time.time() > deadline:
                raise RuntimeError("sends reached the sandbox but were not recorded within 60 s")
            conn.rollback()
            time.sleep(0.05)


def wait_before_status(cur: Any, ids: list[int]) -> dict[str, dict[str, float]]:
    """Where the time goes: mean and p95 wait before each status, from the event history."""
    cur.execute("""
        SELECT status, avg(wait) * 1000, percentile_cont(0.95) WITHIN GROUP (ORDER BY wait) * 1000 FROM (
            SELECT status, extract(epoch FROM at - lag(at) OVER (PARTITION BY message_id ORDER BY id)) AS wait
            FROM message_event WHERE message_id = ANY(%s)) w
        WHERE wait IS NOT NULL AND status IN ('queued', 'routed', 'sending', 'sent') GROUP BY status""", (ids,))
    return {row[0]: {"mean": round(float(row[1]), 1), "p95": round(float(row[2]), 1)} for row in cur.fetchall()}


def waits_line(waits: dict[str, dict[str, float]]) -> str:
    return "wait before each status, mean / p95 ms: " + ", ".join(
        f"{st} {waits[st]['mean']} / {waits[st]['p95']}" for st in ("queued", "routed", "sending", "sent") if st in waits)


def run_scenario(stack: Stack, key: str, count: int, name: str, latency_ms: int) -> dict[str, Any]:
    sandbox = stack.cfg.sandbox_url
    api = f"http://{stack.cfg.postroom_api_host}:{stack.cfg.postroom_api_port}"
    requests.delete(f"{sandbox}/sandbox/messages", timeout=10)
    requests.delete(f"{sandbox}/sandbox/faults", timeout=10)
    requests.post(f"{sandbox}/sandbox/faults", json={"latency_ms": latency_ms}, timeout=10).raise_for_status()
    cpu_before = cpu_snapshot(stack)
    ids, started, posted = post_all(api, key, count, name)
    deadline = time.time() + 300
    while requests.get(f"{sandbox}/sandbox/stats", timeout=10).json()["received"] < count:
        if time.time() > deadline:
            raise RuntimeError("the sandbox did not receive every message within 300 s")
        time.sleep(0.05)
    received = requests.get(f"{sandbox}/sandbox/messages", timeout=30).json()["messages"]
    last_received = max(datetime.fromisoformat(m["received_at"].replace("Z", "+00:00")).timestamp() for m in received)
    cpu = cpu_used(cpu_before, cpu_snapshot(stack))
    wait_until_recorded(stack.cfg.database_url, ids)
    with psycopg2.connect(stack.cfg.database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT extract(epoch FROM sent_at - created_at) FROM message WHERE id = ANY(%s) AND sent_at IS NOT NULL", (ids,))
        latencies = [float(r[0]) * 1000 for r in cur.fetchall()]
        cur.execute("SELECT count(*) FROM message WHERE id = ANY(%s) AND status IN ('sent', 'delivered')", (ids,))
        sent = cur.fetchone()[0]
        stage_ms = wait_before_status(cur, ids)
    duplicates = len(received) - len({m["body"] for m in received})
    return {
        "scenario": name,
        "provider_latency_ms": latency_ms,
        "messages": count,
        "sent_or_delivered": sent,
        "sandbox_received": len(received),
        "duplicates_at_provider": duplicates,
        "api_requests_per_s": round(count / (posted - started), 1),
        "end_to_end_messages_per_s": round(count / (last_received - started), 1),
        "accepted_to_sent_ms": {
            "p50": round(percentile(latencies, 50), 1),
            "p95": round(percentile(latencies, 95), 1),
            "p99": round(percentile(latencies, 99), 1),
            "mean": round(statistics.fmean(latencies), 1),
        },
        "wait_before_status_ms": stage_ms,
        "cpu_ms_per_message": {g: round(seconds * 1000 / count, 3) for g, seconds in cpu.items()},
    }


def run_lanes_scenario(stack: Stack, key: str, count: int, latency_ms: int = 150, urgent: int = 40) -> dict[str, Any]:
    """``count`` bulk messages, and while they are a backlog, ``urgent`` OTP-like ones trickling in."""
    sandbox = stack.cfg.sandbox_url
    api = f"http://{stack.cfg.postroom_api_host}:{stack.cfg.postroom_api_port}"
    requests.delete(f"{sandbox}/sandbox/messages", timeout=10)
    requests.delete(f"{sandbox}/sandbox/faults", timeout=10)
    requests.post(f"{sandbox}/sandbox/faults", json={"latency_ms": latency_ms}, timeout=10).raise_for_status()
    urgent_ids: list[int] = []

    def trickle() -> None:
        time.sleep(0.5)  # let the bulk backlog build first
        urgent_ids.extend(post_all(api, key, urgent, "otp", threads=1, pause=0.05)[0])

    side = threading.Thread(target=trickle)
    side.start()
    bulk_ids, started, _ = post_all(api, key, count, "campaign", priority="bulk")
    side.join()
    deadline = time.time() + 300
    while requests.get(f"{sandbox}/sandbox/stats", timeout=10).json()["received"] < count + urgent:
        if time.time() > deadline:
            raise RuntimeError("the sandbox did not receive every message within 300 s")
        time.sleep(0.05)
    wait_until_recorded(stack.cfg.database_url, bulk_ids + urgent_ids)
    with psycopg2.connect(stack.cfg.database_url) as conn, conn.cursor() as cur:
        def latencies(ids: list[int]) -> list[float]:
            cur.execute("SELECT extract(epoch FROM sent_at - created_at) * 1000 FROM message WHERE id = ANY(%s)", (ids,))
            return [float(r[0]) for r in cur.fetchall()]

        urgent_ms, bulk_ms = latencies(urgent_ids), latencies(bulk_ids)
        urgent_waits = wait_before_status(cur, urgent_ids)
        cur.execute("SELECT extract(epoch FROM max(sent_at)) FROM message WHERE id = ANY(%s)", (bulk_ids,))
        bulk_done = float(cur.fetchone()[0])
    return {
        "scenario": "urgent behind a bulk backlog",
        "provider_latency_ms": latency_ms,
        "bulk_messages": count,
        "urgent_messages": urgent,
        "bulk_messages_per_s": round(count / (bulk_done - started), 1),
        "urgent_accepted_to_sent_ms": {"p50": round(percentile(urgent_ms, 50), 1), "p95": round(percentile(urgent_ms, 95), 1),
                                       "max": round(max(urgent_ms), 1)},
        "urgent_wait_before_status_ms": urgent_waits,
        "bulk_accepted_to_sent_ms": {"p50": round(percentile(bulk_ms, 50), 1), "p95": round(percentile(bulk_ms, 95), 1),
                                     "max": round(max(bulk_ms), 1)},
    }


def lanes_table(r: dict[str, Any]) -> str:
    u, b = r["urgent_accepted_to_sent_ms"], r["bulk_accepted_to_sent_ms"]
    return "\n".join([
        f"scenario: {r['scenario']} ({r['bulk_messages']} bulk + {r['urgent_messages']} urgent posted meanwhile, "
        f"provider {r['provider_latency_ms']} ms)",
        f"  bulk messages/s (sent)    {r['bulk_messages_per_s']:>9}",
        f"  urgent accepted→sent p50/p95/max {u['p50']} / {u['p95']} / {u['max']} ms",
        "  urgent " + waits_line(r["urgent_wait_before_status_ms"]),
        f"  bulk   accepted→sent p50/p95/max {b['p50']} / {b['p95']} / {b['max']} ms",
        "",
    ])


def table(results: list[dict[str, Any]]) -> str:
    lines = []
    for r in results:
        lat = r["accepted_to_sent_ms"]
        lines += [
            f"scenario: {r['scenario']} ({r['messages']} single SMS, {r['sandbox_received']} received by the sandbox, "
            f"{r['duplicates_at_provider']} duplicates)",
            f"  API requests/s            {r['api_requests_per_s']:>9}",
            f"  end-to-end messages/s     {r['end_to_end_messages_per_s']:>9}",
            f"  accepted→sent p50/p95/p99 {lat['p50']:>7} / {lat['p95']} / {lat['p99']} ms",
            "  " + waits_line(r["wait_before_status_ms"]),
            "  CPU ms per message by process group:",
            *[f"    {g:<18} {v:>8.3f}" for g, v in sorted(r["cpu_ms_per_message"].items(), key=lambda kv: -kv[1])],
            f"    {'total':<18} {sum(r['cpu_ms_per_message'].values()):>8.3f}",
            "",
        ]
    return "\n".join(lines)


def main(count: int = 2000, output: str = "var/bench/api_sms.json", idle_seconds: float = 20.0) -> None:
    out = Path(output) if Path(output).is_absolute() else ROOT / output
    out.parent.mkdir(parents=True, exist_ok=True)
    stack_dir = out.parent / "stack"
    shutil.rmtree(stack_dir, ignore_errors=True)  # a fresh private stack: nothing left from an earlier run
    with Stack(env=private_env(stack_dir, 28000 + os.getpid() % 4000, POSTROOM_LOG_LEVEL="WARNING")) as stack:
        key = stack.start()
        settle()
        idle = measure_idle(stack, idle_seconds)
        print(idle_table(idle), flush=True)
        results = [run_scenario(stack, key, count, name, latency) for name, latency in SCENARIOS]
        lanes = run_lanes_scenario(stack, key, count)
    report = {"benchmark": "api_single_sms", "cores": psutil.cpu_count(), "client_threads": CLIENT_THREADS,
              "settings": {k: v for k, v in os.environ.items() if k.startswith("POSTROOM_")}, "idle": idle,
              "results": results, "lanes": lanes}
    out.write_text(json.dumps(report, indent=2))
    print(idle_table(idle))
    print(table(results))
    print(lanes_table(lanes))
    print(f"written to {out}")
