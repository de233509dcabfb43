"""Benchmark: COUNT messages due in the same second, and how late the scheduler gets them out.

Each run posts COUNT single SMS through the API with one ``send_at``, so each is stored
``scheduled``. The due time is fixed before the first post: start + COUNT at a conservative
POSTING_RATE_ESTIMATE requests/s + MARGIN_SECONDS, rounded up to a whole second; the run checks
that posting ended before it and every message was still scheduled for it. At that second the
scheduler hands the batch to processing → routing → the sender → the sandbox, which stamps each
message's ``received_at``. A run reports the lag (received − due) at p50/p95/p99/max against the
goal of p99 < GOAL_P99_SECONDS; duplicates and messages missing or received early; the hand-off lag
(the ``queued`` event − due); when the last message passed each stage; messages/s over the drain
(due → last received); CPU ms per message of every process group over the drain (and while
posting: each scheduled post NOTIFYs the scheduler); and, when the goal is missed, the lower bound
the measured drain rate puts on the p99, the stage the last message trailed most at, and how busy
the cores were. Runs: bulk with the sandbox answering at once, bulk with the 150 ms provider
latency of the other scenarios, urgent answering at once, and bulk answering at once with no
delivery receipts (the sandbox's three status callbacks per message, which ingest takes in on the
same cores during the drain).
"""

from __future__ import annotations

import contextlib
import math
import time
from datetime import UTC, datetime
from typing import Any

import psutil
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

# (priority, provider latency ms, delivery receipts): the last run drops the sandbox's status
# callbacks, so that the send path has the cores to itself (on one machine, the provider imitation
# and ingest taking its receipts share them).
SCENARIOS = (("bulk", 0, True), ("bulk", 150, True), ("urgent", 0, True), ("bulk", 0, False))
GOAL_P99_SECONDS = 0.5
POSTING_RATE_ESTIMATE = 300.0  # requests/s: a third of what the API took on 2 cores; each run checks it held
MARGIN_SECONDS = 10.0
DUE_RULE = (f"start + COUNT / {POSTING_RATE_ESTIMATE:g} requests/s + {MARGIN_SECONDS:g} s, rounded up to a second,"
            " fixed before the first post")
SENDER = "sender-sms"  # the process group that makes the provider calls
STAGES = ("queued", "routed", "sending", "sent")
# The last message's path: each step's last arrival against the step before it (due, first).
STEPS = (("scheduler + processing", "queued"), ("routing", "routed"), ("sender claim", "sending"),
         ("provider call", "received"))


def machine_busy(before: Any, after: Any) -> float:
    """Percent of all cores busy between two ``psutil.cpu_times()``, whoever used them."""
    counted = [f for f in after._fields if f not in ("guest", "guest_nice")]  # already inside user and nice
    total = sum(getattr(after, f) - getattr(before, f) for f in counted)
    idle = sum(getattr(after, f) - getattr(before, f) for f in ("idle", "iowait") if f in counted)
    return round(100 * (total - idle) / total, 1) if total > 0 else 0.0


def stage_lags(cur: Any, ids: list[int], due: int) -> dict[str, list[float]]:
    """Seconds from the due time to each message's first event of each stage."""
    cur.execute("SELECT status, extract(epoch FROM min(at)) - %s FROM message_event WHERE message_id = ANY(%s)"
                " AND status = ANY(%s) GROUP BY message_id, status", (due, ids, list(STAGES)))
    lags: dict[str, list[float]] = {status: [] for status in STAGES}
    for status, lag in cur.fetchall():
        lags[status].append(float(lag))
    return lags


def provider_receipts(stack: Stack, tag: str, due: int) -> tuple[list[float], int]:
    """Seconds from the due time to the sandbox's first receipt of each of this run's messages, and
    how many receipts repeated a message (bodies are unique)."""
    listed = requests.get(f"{stack.cfg.sandbox_url}/sandbox/messages", timeout=120).json()["messages"]
    first: dict[str, float] = {}
    mine = [m for m in listed if m["body"].startswith(f"{tag} #")]
    for m in mine:
        at = datetime.fromisoformat(m["received_at"].replace("Z", "+00:00")).timestamp() - due
        first[m["body"]] = min(at, first.get(m["body"], at))
    return sorted(first.values()), len(mine) - len(first)


def goal(lags: list[float], drain_rate: float) -> dict[str, Any]:
    """Whether p99 < GOAL_P99_SECONDS, and what the measured drain rate allows: the p99 message is
    the k-th to arrive, so at ``drain_rate`` it cannot arrive sooner than k / rate after due."""
    k = int(round(0.99 * (len(lags) - 1))) + 1
    return {"p99_seconds": GOAL_P99_SECONDS, "met": percentile(lags, 99) < GOAL_P99_SECONDS, "p99_message": k,
            "p99_lower_bound_s_at_drain_rate": round(k / drain_rate, 2) if drain_rate else None,
            "messages_per_s_needed": round(k / GOAL_P99_SECONDS)}


def run_scenario(stack: Stack, key: str, count: int, priority: str, latency_ms: int, receipts: bool = True) -> dict[str, Any]:
    tag = f"due together {priority} {latency_ms}ms{'' if receipts else ' no receipts'}"
    provider_answers_in(stack, latency_ms)
    if not receipts:
        requests.post(f"{stack.cfg.sandbox_url}/sandbox/faults", json={"drop_callbacks": True}, timeout=10).raise_for_status()
    due = math.ceil(time.time() + count / POSTING_RATE_ESTIMATE + MARGIN_SECONDS)
    cpu_before_posting = cpu_snapshot(stack)
    ids, started, posted = post_all(api_url(stack), key, count, tag, priority=priority,
                                    fields={"send_at": datetime.fromtimestamp(due, UTC).isoformat()})
    cpu_posting = cpu_used(cpu_before_posting, cpu_snapshot(stack))
    if posted >= due - 0.5:
        raise RuntimeError(f"posting {count} messages took {posted - started:.1f} s and ended at or after their due time:"
                           f" this machine takes fewer than {POSTING_RATE_ESTIMATE:g} requests/s; lower POSTING_RATE_ESTIMATE")
    with contextlib.closing(psycopg2.connect(stack.cfg.database_url)) as conn, conn.cursor() as cur:
        conn.autocommit = True
        scheduled = one_value(cur, "SELECT count(*) FROM message WHERE id = ANY(%s) AND status = 'scheduled'"
                                   " AND due_at = to_timestamp(%s)", (ids, due))
        time.sleep(max(0.0, due - 0.1 - time.time()))
        cpu_before, machine_before, window_started = cpu_snapshot(stack), psutil.cpu_times(), time.time()
        wait_for_progress(lambda: sandbox_received(stack), count)
        cpu = cpu_used(cpu_before, cpu_snapshot(stack))
        machine_percent, window = machine_busy(machine_before, psutil.cpu_times()), time.time() - window_started
        recorded = "SELECT count(*) FROM message WHERE id = ANY(%s) AND {} IS NOT NULL"
        sent = wait_for_progress(lambda: one_value(cur, recorded.format("sent_at"), (ids,)), count, every=0.25)
        if receipts:  # the receipts that follow: let them land, so that the next run starts on a quiet stack
            wait_for_progress(lambda: one_value(cur, recorded.format("delivered_at"), (ids,)), count, stall=10, every=0.25)
        by_stage = stage_lags(cur, ids, due)
    lags, duplicates = provider_receipts(stack, tag, due)
    cores, slots = psutil.cpu_count() or 1, stack.cfg.postroom_sender_concurrency
    drain = lags[-1] if lags else 0.0
    rate = len(lags) / drain if drain > 0 else 0.0
    last = {status: round(max(by_stage[status]), 3) for status in STAGES if by_stage[status]}
    last["received"] = round(drain, 3)
    ms = [lag * 1000 for lag in lags]
    handoff = [lag * 1000 for lag in by_stage["queued"]]
    result: dict[str, Any] = {
        "scenario": f"{count} {priority} SMS due in the same second, provider {latency_ms} ms"
                    + ("" if receipts else ", no delivery receipts"),
        "priority": priority,
        "provider_latency_ms": latency_ms,
        "delivery_receipts": receipts,
        "messages": count,
        "due_at": datetime.fromtimestamp(due, UTC).isoformat(),
        "posting_s": round(posted - started, 2),
        "api_requests_per_s": round(count / (posted - started), 1),
        "posting_ended_before_due_s": round(due - posted, 2),
        "stored_scheduled": scheduled,
        "sandbox_received": len(lags),
        "duplicates_at_provider": duplicates,
        "missing": count - len(lags),
        "received_before_due": sum(1 for lag in lags if lag < 0),
        "handed_on_before_due": sum(1 for lag in by_stage["queued"] if lag < 0),
        "sent": sent,
        "lag_ms": {**spread(ms), "min": round(min(ms), 1)} if ms else {},
        "handoff_lag_ms": {k: v for k, v in spread(handoff).items() if k != "p95"},
        "last_after_due_s": last,
        "first_received_after_due_s": round(lags[0], 3) if lags else None,
        "drain_s": round(drain, 3),
        "drain_messages_per_s": round(rate, 1),
        "cpu_ms_per_message": {g: round(seconds * 1000 / count, 3) for g, seconds in cpu.items()},
        "cpu_ms_per_message_while_posting": {g: round(seconds * 1000 / count, 3) for g, seconds in cpu_posting.items()},
        "cores": cores,
        "stack_cpu_percent_of_all_cores": round(100 * sum(cpu.values()) / (window * cores), 1),
        "cpu_ceiling_messages_per_s": round(cores * count / sum(cpu.values()), 1) if sum(cpu.values()) else None,
        # One sender process runs Python under one GIL: about one core, whatever the machine has.
        "sender_process_ceiling_messages_per_s": round(count / cpu[SENDER], 1) if cpu.get(SENDER) else None,
        "call_slots": slots,
        "call_slot_ceiling_messages_per_s": round(slots * 1000 / latency_ms, 1) if latency_ms else None,
        "machine_busy_percent": machine_percent,
        "goal": goal(lags, rate) if lags else {"p99_seconds": GOAL_P99_SECONDS, "met": False},
    }
    result["goal"]["verdict"], result["goal"]["limit"] = verdict(result)
    return result


def trailing_step(r: dict[str, Any]) -> tuple[str, float]:
    """The step the last message lost most time at: its last arrival there after the step before."""
    before, worst = 0.0, ("", -math.inf)
    for name, status in STEPS:
        if status in r["last_after_due_s"]:
            at = r["last_after_due_s"][status]
            worst = max(worst, (name, at - before), key=lambda step: step[1])
            before = at
    return worst


def verdict(r: dict[str, Any]) -> tuple[str, str]:
    """The goal line — met or missed — and, when missed, what bounds the p99, from the run's own figures."""
    g, lag = r["goal"], r["lag_ms"]
    if not lag:
        return f"goal p99 < {GOAL_P99_SECONDS:g} s: MISSED, nothing was received", ""
    p99 = lag["p99"] / 1000
    if g["met"]:
        return f"goal p99 < {GOAL_P99_SECONDS:g} s: met (p99 {p99:.3f} s)", ""
    rate, k, first = r["drain_messages_per_s"], g["p99_message"], r["first_received_after_due_s"]
    step, behind = trailing_step(r)
    top = max(r["cpu_ms_per_message"].items(), key=lambda kv: kv[1])
    slots, sender = r["call_slot_ceiling_messages_per_s"], r["sender_process_ceiling_messages_per_s"]
    return f"goal p99 < {GOAL_P99_SECONDS:g} s: MISSED (p99 {p99:.2f} s)", (
        f"what limits it: the batch drained at {rate:g} messages/s, so the p99 message (the {k:,}th) cannot reach the provider"
        f" sooner than {k:,} / {rate:g} = {g['p99_lower_bound_s_at_drain_rate']} s after due; {GOAL_P99_SECONDS:g} s needs"
        f" {g['messages_per_s_needed']:,} messages/s ({g['messages_per_s_needed'] / rate:.1f}× that)"
        + (f", and even the first arrived {first:.2f} s after due" if first > GOAL_P99_SECONDS else "")
        + f". The batch waited longest for: {step} (its last message {behind:.2f} s after the step before). Over the drain"
        f" the stack used {r['stack_cpu_percent_of_all_cores']} % of the {r['cores']} cores (the machine"
        f" {r['machine_busy_percent']} %): at {sum(r['cpu_ms_per_message'].values()):.2f} ms of CPU per message they allow"
        f" at most {r['cpu_ceiling_messages_per_s']:g} messages/s; the largest share is {top[0]}'s, {top[1]:.2f} ms"
        + (f"; the one {SENDER} process, at {r['cpu_ms_per_message'][SENDER]:.2f} ms per message on about one core"
           f" (one GIL), at most {sender:g} messages/s" if sender else "")
        + (f". The lane's {r['call_slots']} call slots at {r['provider_latency_ms']} ms per call allow at most"
           f" {slots:g} messages/s" if slots else "") + ".")


def run(stack: Stack, key: str, count: int) -> dict[str, Any]:
    return {"goal_p99_seconds": GOAL_P99_SECONDS, "due_rule": DUE_RULE, "cores": psutil.cpu_count(),
            "runs": [run_scenario(stack, key, count, *scenario) for scenario in SCENARIOS]}


def table(report: dict[str, Any]) -> str:
    lines = []
    for r in report["runs"]:
        lag, hand, last = r["lag_ms"], r["handoff_lag_ms"], r["last_after_due_s"]
        groups = sorted(r["cpu_ms_per_message"].items(), key=lambda kv: -kv[1])
        lines += [
            f"scenario: {r['scenario']} (due {r['due_at']})",
            f"  posted in {r['posting_s']} s ({r['api_requests_per_s']} requests/s), {r['posting_ended_before_due_s']} s before due;"
            f" {r['stored_scheduled']} of {r['messages']} stored scheduled for it",
            f"  received by the sandbox {r['sandbox_received']} of {r['messages']}: {r['duplicates_at_provider']} duplicates,"
            f" {r['missing']} missing, {r['received_before_due']} before due ({r['handed_on_before_due']} handed on before due);"
            f" {r['sent']} recorded sent",
            f"  lag due → received p50/p95/p99/max {lag.get('p50')} / {lag.get('p95')} / {lag.get('p99')} / {lag.get('max')} ms",
            f"  hand-off due → queued p50/p99/max  {hand.get('p50')} / {hand.get('p99')} / {hand.get('max')} ms",
            "  last message after due: " + ", ".join(f"{status} {at:g} s" for status, at in last.items())
            + f" (first received {r['first_received_after_due_s']} s)",
            f"  drain due → last received {r['drain_s']} s: {r['drain_messages_per_s']} messages/s",
            f"  CPU ms per message by process group, over the drain (while posting); stack {r['stack_cpu_percent_of_all_cores']} %"
            f" of {report['cores']} cores, machine {r['machine_busy_percent']} %:",
            *[f"    {g:<18} {v:>8.3f} ({r['cpu_ms_per_message_while_posting'].get(g, 0):.3f})" for g, v in groups],
            f"    {'total':<18} {sum(r['cpu_ms_per_message'].values()):>8.3f}"
            f" ({sum(r['cpu_ms_per_message_while_posting'].values()):.3f})",
            "  " + r["goal"]["verdict"],
            *(["  " + r["goal"]["limit"]] if r["goal"]["limit"] else []),
            "",
        ]
    return "\n".join(lines)
