"""Benchmark: one bulk batch per channel through every stage, at a provider latency of 150 ms.

For each channel (sms, email, whatsapp_cloud, whatsapp_qr) posts COUNT bulk messages through the
API and measures end-to-end messages/s (first request → last send recorded), accepted → sent
latency, and CPU milliseconds per message of each process group. Pacing of our own is switched
off for the run (the WhatsApp Cloud number's 80/s and the WAHA session pace are settings), so the
figures say what the pipeline can carry, not what a provider allows. WhatsApp Cloud messages are templates, as a broadcast there must be.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg2
import requests

from services.local.stack import Stack
from tests.bench.idle import cpu_used
from tests.bench.load import api_url, cpu_snapshot, post_all, provider_answers_in, spread

CHANNELS = ("sms", "email", "whatsapp_cloud", "whatsapp_qr")
LATENCY_MS = 150
# What the stack running this scenario must set: no pace of our own on any account.
UNPACED = {"WHATSAPP_RATE_LIMIT_PER_SECOND": "0", "WAHA_PACE_SECONDS": "0", "WAHA_PACE_JITTER_SECONDS": "0",
           "SMTP_RATE_LIMIT_PER_SECOND": "0", "TWILIO_RATE_LIMIT_PER_SECOND": "0",
           # The API's rate limits stay on (their Redis round trip is part of every request's cost)
           # but far above what one client on two cores can ask: the benchmarks measure throughput.
           "POSTROOM_API_KEY_RATE_PER_SECOND": "100000", "POSTROOM_API_WORKSPACE_RATE_PER_SECOND": "100000"}


def _fields(channel: str, n: int) -> dict[str, Any]:
    if channel == "email":
        return {"channel": "email", "to": f"reader{n % 1000}@example.com", "subject": f"Issue #{n}",
                "html": f"<p>bench #{n}</p>"}
    if channel == "whatsapp_cloud":  # a broadcast on WhatsApp Cloud is an approved template (no open window needed)
        return {"channel": channel, "to": f"+15005551{n % 1000:03d}",
                "template": {"name": "order_update", "language": "en_US", "body_parameters": [f"#{n}"]}}
    return {"channel": channel, "to": f"+15005551{n % 1000:03d}"}


def _sent(cur: Any, ids: list[int]) -> int:
    cur.execute("SELECT count(*) FROM message WHERE id = ANY(%s) AND sent_at IS NOT NULL", (ids,))
    return int(cur.fetchone()[0])


def run_channel(stack: Stack, key: str, channel: str, count: int) -> dict[str, Any]:
    provider_answers_in(stack, LATENCY_MS, channel)
    cpu_before = cpu_snapshot(stack)
    ids, started, posted = post_all(api_url(stack), key, count, f"{channel} bench", priority="bulk",
                                    payload=lambda n: _fields(channel, n))
    with psycopg2.connect(stack.cfg.database_url) as conn, conn.cursor() as cur:
        deadline, last, moved = time.time() + 600, -1, time.time()
        while (done := _sent(cur, ids)) < count and time.time() < deadline and time.time() - moved < 60:
            if done != last:
                last, moved = done, time.time()
            conn.rollback()
            time.sleep(0.2)
        cpu = cpu_used(cpu_before, cpu_snapshot(stack))
        cur.execute("SELECT extract(epoch FROM max(sent_at)), array_agg(extract(epoch FROM sent_at - created_at) * 1000)"
                    " FROM message WHERE id = ANY(%s) AND sent_at IS NOT NULL", (ids,))
        last_sent, latencies = cur.fetchone()
        cur.execute("SELECT status, count(*) FROM message WHERE id = ANY(%s) GROUP BY status", (ids,))
        statuses = dict(cur.fetchall())
    received = len(requests.get(f"{stack.cfg.sandbox_url}/sandbox/messages", params={"channel": channel}, timeout=60)
                   .json()["messages"])
    return {
        "channel": channel, "messages": count, "provider_latency_ms": LATENCY_MS, "sent": done, "statuses": statuses,
        "sandbox_received": received,
        "api_requests_per_s": round(count / (posted - started), 1),
        "end_to_end_messages_per_s": round(done / (float(last_sent) - started), 1) if last_sent else 0.0,
        "accepted_to_sent_ms": spread([float(v) for v in latencies or []]),
        "cpu_ms_per_message": {g: round(seconds * 1000 / max(1, done), 3) for g, seconds in cpu.items()},
    }


def run(stack: Stack, key: str, count: int) -> list[dict[str, Any]]:
    return [run_channel(stack, key, channel, count) for channel in CHANNELS]


def table(results: list[dict[str, Any]]) -> str:
    groups = sorted({g for r in results for g in r["cpu_ms_per_message"]})
    lines = [f"scenario: {results[0]['messages']} bulk messages per channel, provider answers in {LATENCY_MS} ms, "
             "no pacing of our own",
             f"  {'channel':<16} {'msg/s':>7} {'sent':>6} {'at provider':>11} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms/msg':>10}"]
    for r in results:
        lat = r["accepted_to_sent_ms"]
        lines.append(f"  {r['channel']:<16} {r['end_to_end_messages_per_s']:>7} {r['sent']:>6} {r['sandbox_received']:>11} "
                     f"{lat.get('p50', '-'):>8} {lat.get('p99', '-'):>8} {sum(r['cpu_ms_per_message'].values()):>10.2f}")
    lines.append("  CPU ms per message by process group:")
    lines.append("    " + f"{'group':<22}" + "".join(f"{r['channel']:>16}" for r in results))
    for g in groups:
        if any(r["cpu_ms_per_message"].get(g, 0) >= 0.01 for r in results):
            lines.append("    " + f"{g:<22}" + "".join(f"{r['cpu_ms_per_message'].get(g, 0):>16.3f}" for r in results))
    return "\n".join(lines + [""])
