"""Benchmark: a bulk campaign whose every event goes out to a webhook endpoint answering in 100 ms.

Campaigns do not exist yet, so the campaign is COUNT messages posted through the API with
priority ``bulk``; the sandbox answers each send after 150 ms and sends Twilio delivery
receipts, so every message produces ``message.accepted``, ``message.sent`` and
``message.delivered``. The campaign runs twice in the same sitting on the same stack: first as a
baseline with no endpoint at all (no outbox rows, no deliveries), then with one endpoint — the
sandbox receiver ``bench``, answering every POST after 100 ms — subscribed to ``*``. Both runs
report messages/s from the first ``accepted`` event to the last ``delivered`` one (from
``message_event``) and CPU ms per message of every process group, measured until the last
message was delivered (and, with the endpoint, until its last delivery was received). The
webhook run also reports what the receiver got: deliveries against the 3 expected per message,
events missing, duplicates (a webhook-id answered 2xx more than once), deliveries/s, and each
delivery's lag — its receive time at the receiver minus the time of the ``message_event`` it
reports — at p50/p95/p99/max, per event type and by tenth of the run (a growing lag shows there).
"""

from __future__ import annotations

import contextlib
from typing import Any

import psycopg2
import requests

from services.local.stack import Stack
from tests.bench.idle import cpu_used
from tests.bench.load import (
    api_url,
    cpu_snapshot,
    one_value,
    percentile,
    post_all,
    provider_answers_in,
    sandbox_received,
    spread,
    wait_for_progress,
)

PROVIDER_LATENCY_MS = 150
RECEIVER = "bench"
RECEIVER_DELAY_MS = 100
EVENT_TYPES = ("message.accepted", "message.sent", "message.delivered")


def run_campaign(stack: Stack, key: str, count: int, tag: str, cur: Any) -> tuple[list[int], dict[str, dict[int, float]]]:
    """Post the campaign and wait until the sandbox has every message and every one is recorded as
    delivered (or that stalls); returns the ids and the CPU snapshot taken before the first post."""
    provider_answers_in(stack, PROVIDER_LATENCY_MS)
    cpu_before = cpu_snapshot(stack)
    ids, _, _ = post_all(api_url(stack), key, count, tag, priority="bulk")
    wait_for_progress(lambda: sandbox_received(stack), count)
    wait_for_progress(lambda: one_value(cur, "SELECT count(*) FROM message WHERE id = ANY(%s) AND delivered_at IS NOT NULL",
                                        (ids,)), count, every=0.25)
    return ids, cpu_before


def campaign_figures(stack: Stack, cur: Any, ids: list[int], cpu: dict[str, float]) -> dict[str, Any]:
    """Counts and messages/s of one campaign run, from the database and the sandbox."""
    cur.execute("""SELECT count(*) FILTER (WHERE sent_at IS NOT NULL), count(*) FILTER (WHERE delivered_at IS NOT NULL)
                   FROM message WHERE id = ANY(%s)""", (ids,))
    sent, delivered = cur.fetchone()
    cur.execute("""SELECT extract(epoch FROM min(at) FILTER (WHERE status = 'accepted')),
                          extract(epoch FROM max(at) FILTER (WHERE status = 'sent')),
                          extract(epoch FROM max(at) FILTER (WHERE status = 'delivered'))
                   FROM message_event WHERE message_id = ANY(%s)""", (ids,))
    first_accepted, last_sent, last_delivered = (float(v) for v in cur.fetchone())
    count = len(ids)
    return {
        "messages": count,
        "sandbox_received": sandbox_received(stack),
        "sent": sent,
        "delivered": delivered,
        "first_accepted_to_last_delivered_s": round(last_delivered - first_accepted, 2),
        "end_to_end_messages_per_s": round(delivered / (last_delivered - first_accepted), 1),
        "messages_sent_per_s": round(sent / (last_sent - first_accepted), 1),
        "last_delivered_at": last_delivered,
        "cpu_ms_per_message": {g: round(seconds * 1000 / count, 3) for g, seconds in cpu.items()},
    }


def delivery_figures(received: list[dict[str, Any]], event_at: dict[tuple[int, str], float], ids: list[int],
                     last_delivered: float) -> dict[str, Any]:
    """What the receiver got, against what the campaign's events call for, and how late."""
    succeeded = [r for r in received if 200 <= r["status"] < 300]
    first: dict[str, dict[str, Any]] = {}  # the first 2xx answer per webhook-id: the delivery
    for r in succeeded:
        first.setdefault(r["headers"].get("Webhook-Id", ""), r)
    expected = {(i, t) for i in ids for t in EVENT_TYPES}
    got: set[tuple[int, str]] = set()
    lags: list[tuple[float, str, float]] = []  # (event time, type, lag ms)
    for r in first.values():
        payload = r["json"] or {}
        event = (payload.get("data", {}).get("id"), payload.get("type", ""))
        got.add(event)
        happened = event_at.get((event[0], event[1].removeprefix("message.")))
        if happened is not None:
            lags.append((happened, event[1], (r["at"] - happened) * 1000))
    lags.sort()
    tenths = [lags[len(lags) * k // 10:len(lags) * (k + 1) // 10] for k in range(10)] if len(lags) >= 10 else []
    times = [r["at"] for r in first.values()]
    window = max(times) - min(times) if len(times) > 1 else 0.0
    return {
        "expected": len(expected),
        "received": len(received),
        "delivered": len(first),
        "missing": len(expected - got),
        "unexpected": len(got - expected),
        "duplicates": len(succeeded) - len(first),
        "not_2xx": len(received) - len(succeeded),
        "deliveries_per_s": round(len(first) / window, 1) if window else None,
        "last_received_after_last_delivered_s": round(max(times) - last_delivered, 2) if times else None,
        "lag_ms": spread([lag for _, _, lag in lags]),
        "lag_ms_by_type": {t: spread([lag for _, kind, lag in lags if kind == t]) for t in EVENT_TYPES},
        "lag_p50_ms_by_tenth": [round(percentile([lag for _, _, lag in part], 50), 1) for part in tenths],
        "without_event_time": len(first) - len(lags),
    }


def calls_in_flight(received: list[dict[str, Any]], call_ms: list[float]) -> float | None:
    """How many calls the webhooks stage had open on average while deliveries arrived (Little's law:
    the time spent in calls over the window); against its endpoint concurrency, it tells whether
    the cap or the time between calls bounds the deliveries/s."""
    times = [r["at"] for r in received]
    window = max(times) - min(times) if len(times) > 1 else 0.0
    return round(sum(call_ms) / 1000 / window, 1) if window else None


def run(stack: Stack, key: str, count: int) -> dict[str, Any]:
    """The baseline campaign, then the same campaign with one endpoint subscribed to every event."""
    sandbox, api = stack.cfg.sandbox_url, api_url(stack)
    auth = {"Authorization": f"Bearer {key}"}
    with contextlib.closing(psycopg2.connect(stack.cfg.database_url)) as conn, conn.cursor() as cur:
        conn.autocommit = True
        ids, cpu_before = run_campaign(stack, key, count, "campaign without webhooks", cur)
        baseline = campaign_figures(stack, cur, ids, cpu_used(cpu_before, cpu_snapshot(stack)))

        requests.delete(f"{sandbox}/sandbox/receivers", timeout=10).raise_for_status()
        requests.put(f"{sandbox}/sandbox/receivers/{RECEIVER}", json={"delay_ms": RECEIVER_DELAY_MS}, timeout=10).raise_for_status()
        created = requests.post(f"{api}/v1/webhook-endpoints", headers=auth, timeout=10,
                                json={"url": f"{sandbox}/receiver/{RECEIVER}", "event_types": ["*"]})
        if created.status_code != 201:
            raise RuntimeError(f"subscribing the endpoint failed: {created.status_code} {created.text}")
        endpoint_id = created.json()["id"]

        def receiver_count() -> int:
            listed = requests.get(f"{sandbox}/sandbox/receivers", timeout=10).json()["receivers"]
            return sum(r["requests"] for r in listed if r["name"] == RECEIVER)

        def still_open() -> int:
            return one_value(cur, "SELECT count(*) FROM webhook_delivery WHERE endpoint_id = %s"
                                  " AND status IN ('pending', 'delivering')", (endpoint_id,))

        ids, cpu_before = run_campaign(stack, key, count, "campaign with webhooks", cur)
        wait_for_progress(receiver_count, len(EVENT_TYPES) * count)
        # Until no delivery row is open, a retry or a late duplicate may still arrive.
        wait_for_progress(lambda: -still_open(), 0)
        with_webhooks = campaign_figures(stack, cur, ids, cpu_used(cpu_before, cpu_snapshot(stack)))

        cur.execute("SELECT message_id, status, extract(epoch FROM min(at)) FROM message_event WHERE message_id = ANY(%s)"
                    " AND status IN ('accepted', 'sent', 'delivered') GROUP BY message_id, status", (ids,))
        event_at = {(message_id, status): float(at) for message_id, status, at in cur.fetchall()}
        cur.execute("SELECT status, count(*) FROM webhook_delivery WHERE endpoint_id = %s GROUP BY status", (endpoint_id,))
        rows_by_status = dict(cur.fetchall())
        cur.execute("SELECT count(*), count(*) FILTER (WHERE status_code IS NULL OR status_code NOT BETWEEN 200 AND 299)"
                    " FROM webhook_attempt WHERE endpoint_id = %s", (endpoint_id,))
        attempts, failed_attempts = cur.fetchone()
        cur.execute("SELECT latency_ms FROM webhook_attempt WHERE endpoint_id = %s AND latency_ms IS NOT NULL", (endpoint_id,))
        call_ms = [float(v) for v, in cur.fetchall()]
    received = requests.get(f"{sandbox}/sandbox/receivers/{RECEIVER}/requests", timeout=120).json()["requests"]
    webhooks = delivery_figures(received, event_at, ids, with_webhooks["last_delivered_at"])
    webhooks.update(delivery_rows=rows_by_status, attempts=attempts, failed_attempts=failed_attempts,
                    call_ms=spread(call_ms), calls_in_flight_mean=calls_in_flight(received, call_ms))
    requests.delete(f"{api}/v1/webhook-endpoints/{endpoint_id}", headers=auth, timeout=30).raise_for_status()
    requests.delete(f"{sandbox}/sandbox/receivers/{RECEIVER}", timeout=10).raise_for_status()
    for run_figures in (baseline, with_webhooks):
        del run_figures["last_delivered_at"]
    concurrency = stack.cfg.postroom_webhook_endpoint_concurrency
    return {
        "scenario": "bulk campaign, one endpoint subscribed to every event",
        "messages": count,
        "priority": "bulk",
        "provider_latency_ms": PROVIDER_LATENCY_MS,
        "receiver_delay_ms": RECEIVER_DELAY_MS,
        "endpoint_concurrency": concurrency,
        "baseline": "the same campaign without any endpoint, run just before on the same stack",
        "without_webhooks": baseline,
        "with_webhooks": with_webhooks,
        "throughput_change_percent": round(100 * (with_webhooks["end_to_end_messages_per_s"]
                                                  / baseline["end_to_end_messages_per_s"] - 1), 1),
        "webhooks": webhooks,
    }


def counts(run: dict[str, Any]) -> str:
    return f"{run['sent']} / {run['delivered']}"


def table(r: dict[str, Any]) -> str:
    base, wh, d = r["without_webhooks"], r["with_webhooks"], r["webhooks"]
    lag, c = d["lag_ms"], d["call_ms"]
    verdict = "ok" if not d["missing"] and not d["duplicates"] else f"{d['missing']} MISSING, {d['duplicates']} DUPLICATES"
    ceiling = r["endpoint_concurrency"] * 1000 / r["receiver_delay_ms"]
    groups = sorted(set(base["cpu_ms_per_message"]) | set(wh["cpu_ms_per_message"]), key=lambda g: -wh["cpu_ms_per_message"].get(g, 0))
    return "\n".join([
        f"scenario: {r['scenario']} ({r['messages']} bulk SMS, provider {r['provider_latency_ms']} ms, "
        f"receiver {r['receiver_delay_ms']} ms)",
        f"  {'':<34} {'no endpoint':>12} {'with webhooks':>14}",
        f"  {'sent / delivered':<34} {counts(base):>12} {counts(wh):>14}",
        f"  {'messages/s, accepted → delivered':<34} {base['end_to_end_messages_per_s']:>12} {wh['end_to_end_messages_per_s']:>14}"
        f"   ({r['throughput_change_percent']:+.1f} %)",
        f"  {'messages/s, accepted → sent':<34} {base['messages_sent_per_s']:>12} {wh['messages_sent_per_s']:>14}",
        f"  webhook deliveries received {d['delivered']} of {d['expected']} expected: {verdict} "
        f"({d['received']} requests, {d['not_2xx']} not 2xx, {d['attempts']} attempts recorded, {d['failed_attempts']} failed)",
        f"  deliveries/s                {d['deliveries_per_s']}   (ceiling {ceiling:g}/s: {r['endpoint_concurrency']} in flight"
        f" × {r['receiver_delay_ms']} ms)",
        f"  each call as the webhooks stage timed it p50/p95/p99/max {c.get('p50')} / {c.get('p95')} / {c.get('p99')} / "
        f"{c.get('max')} ms; {d['calls_in_flight_mean']} calls in flight on average",
        f"  lag event → received p50/p95/p99/max {lag.get('p50')} / {lag.get('p95')} / {lag.get('p99')} / {lag.get('max')} ms",
        *[f"    {t:<18} p50/p99 {s.get('p50')} / {s.get('p99')} ms" for t, s in d["lag_ms_by_type"].items()],
        f"    p50 by tenth of the run: {' '.join(f'{v:g}' for v in d['lag_p50_ms_by_tenth'])} ms",
        f"  last delivery received {d['last_received_after_last_delivered_s']} s after the last message was delivered",
        "  CPU ms per message by process group:",
        *[f"    {g:<18} {base['cpu_ms_per_message'].get(g, 0):>8.3f} {wh['cpu_ms_per_message'].get(g, 0):>14.3f}" for g in groups],
        f"    {'total':<18} {sum(base['cpu_ms_per_message'].values()):>8.3f} {sum(wh['cpu_ms_per_message'].values()):>14.3f}",
        "",
    ])
