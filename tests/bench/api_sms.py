"""Benchmark: single SMS posted through the API as fast as it takes them, end to end.

For each scenario — the sandbox answering at once, and after 150 ms per call as real providers
do — posts COUNT messages from a pool of client threads and measures API requests/s, end-to-end
messages/s (first request → last message received by the sandbox), accepted → sent latency
percentiles (from the database), and CPU seconds per message of each process group. A last
scenario posts COUNT bulk messages and, while they are a backlog, urgent ones one at a time: the
urgent lane's latency behind the backlog. ``python -m tests.bench`` runs them on a private stack.
"""

from __future__ import annotations

import statistics
import threading
import time
from datetime import datetime
from typing import Any

import psycopg2
import requests

from services.local.stack import Stack
from tests.bench.idle import cpu_used
from tests.bench.load import (
    api_url,
    cpu_snapshot,
    percentile,
    post_all,
    provider_answers_in,
    sandbox_received,
)

SCENARIOS = (("instant provider", 0), ("provider answers in 150 ms", 150))


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
    provider_answers_in(stack, latency_ms)
    cpu_before = cpu_snapshot(stack)
    ids, started, posted = post_all(api_url(stack), key, count, name)
    deadline = time.time() + 300
    while sandbox_received(stack) < count:
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
    api = api_url(stack)
    provider_answers_in(stack, latency_ms)
    urgent_ids: list[int] = []

    def trickle() -> None:
        time.sleep(0.5)  # let the bulk backlog build first
        urgent_ids.extend(post_all(api, key, urgent, "otp", threads=1, pause=0.05)[0])

    side = threading.Thread(target=trickle)
    side.start()
    bulk_ids, started, _ = post_all(api, key, count, "campaign", priority="bulk")
    side.join()
    deadline = time.time() + 300
    while sandbox_received(stack) < count + urgent:
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
