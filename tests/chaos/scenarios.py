"""The chaos scenarios: each posts messages through the API while one fault hits the pipeline.

A scenario's fault function runs while the poster works in the background and returns the
fault's window (monotonic start and end). Then the run settles: it waits until every accepted
message has left the waiting statuses, which gives the recovery time (from the fault's end), waits
a quiet moment more for late duplicates, and counts both sides (``outcome``). Within the same
settle window it then waits until the run's webhook endpoint has nothing left to get (no event
waiting for the fan-out, no delivery pending or delivering) and counts the webhooks the
scenario's messages caused against what the endpoint's sandbox receiver got.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from tests.chaos.harness import ChaosStack
from tests.chaos.outcome import WEBHOOK_EVENTS, Row, count, count_webhooks, describe_api
from tests.chaos.traffic import Poster, Traffic

POLL_SECONDS = 0.25
PROVIDER_COUNTS = {  # sandbox counters worth showing: evidence that a fault really happened
    "rejected_by_fault": "sends refused (5xx/429)",
    "answers_delayed": "answers held past the timeout",
    "answers_dropped": "connections cut",
    "lookups": "message-list lookups",
}


@dataclass(frozen=True)
class Params:
    """Sizes and durations of a run; ``python -m tests.chaos --help`` describes each."""

    messages: int = 5000
    spread_seconds: float = 10.0
    fault_at: float = 3.0
    kill_every: float = 2.0
    kill_seconds: float = 30.0
    down_seconds: float = 3.0
    freeze_seconds: float = 10.0
    provider_seconds: float = 30.0
    settle_seconds: float = 180.0
    quiet_seconds: float = 3.0


@dataclass(frozen=True)
class Subscription:
    """The run's webhook endpoint (subscribed to ``WEBHOOK_EVENTS``) and the sandbox receiver it points at."""

    endpoint_id: int
    receiver: str


def subscribe(cs: ChaosStack, receiver: str = "chaos") -> Subscription:
    return Subscription(cs.subscribe(receiver, list(WEBHOOK_EVENTS)), receiver)


Window = tuple[float, float]
Fault = Callable[[ChaosStack, Traffic, Params], tuple[Window, list[str]]]


def _wait_until(moment: float) -> None:
    """Sleep until the monotonic ``moment`` (the stack's own supervisor restarts what exits meanwhile)."""
    time.sleep(max(0.0, moment - time.monotonic()))


def kill_workers(cs: ChaosStack, traffic: Traffic, p: Params) -> tuple[Window, list[str]]:
    """SIGKILL a random worker process every ``kill_every`` s for ``kill_seconds`` (or until done)."""
    start = time.monotonic()
    restarts_before = cs.restarts()
    killed: Counter[str] = Counter()
    while time.monotonic() - start < p.kill_seconds:
        if traffic.finished.is_set() and cs.unsettled(traffic.ids()) == 0:
            break  # nothing left to disturb
        name = cs.kill_random_worker()
        if name:
            killed[name] += 1
        _wait_until(time.monotonic() + p.kill_every)
    end = time.monotonic()
    restarts = {k: n - restarts_before.get(k, 0) for k, n in cs.restarts().items() if n > restarts_before.get(k, 0)}
    return (start, end), [f"killed {sum(killed.values())} worker processes ({_counts(killed)}); "
                          f"restarts by the supervisor: {_counts(restarts) or 'none seen'}"]


def kill_ingest(cs: ChaosStack, traffic: Traffic, p: Params) -> tuple[Window, list[str]]:
    """SIGKILL an ingest worker every ``kill_every`` s for ``kill_seconds``: requests die without an
    answer, the client repeats them with the same Idempotency-Key, waits out the dead claim's lease
    (409 idempotency_in_progress) and then gets the message the dead request made, or makes it."""
    start = time.monotonic()
    killed = 0
    while time.monotonic() - start < p.kill_seconds and not traffic.finished.is_set():
        if cs.kill_ingest_worker() is not None:
            killed += 1
        _wait_until(time.monotonic() + p.kill_every)
    end = time.monotonic()
    return (start, end), [f"killed {killed} ingest workers mid-traffic"]


def flush_redis(cs: ChaosStack, traffic: Traffic, p: Params) -> tuple[Window, list[str]]:
    _wait_until(time.monotonic() + p.fault_at)
    moment = time.monotonic()
    cs.flush_redis()
    return (moment, moment), [f"FLUSHALL after {len(traffic.ids())} messages were accepted"]


RESTARTED = {  # server -> how a restart shows in the notes
    "redis": "Redis down {:.1f} s (restarted empty)",
    "postgres": "PostgreSQL down {:.1f} s (fast shutdown, restart)",
}


def restart_server(server: str) -> Fault:
    """The fault: stop the ``server`` (redis, postgres) ``fault_at`` s in, start it ``down_seconds`` later."""
    def restart(cs: ChaosStack, traffic: Traffic, p: Params) -> tuple[Window, list[str]]:
        _wait_until(time.monotonic() + p.fault_at)
        start = time.monotonic()
        cs.stop_server(server)
        _wait_until(start + p.down_seconds)
        cs.start_server(server)
        return (start, time.monotonic()), [RESTARTED[server].format(time.monotonic() - start)]

    return restart


def freeze_postgres(cs: ChaosStack, traffic: Traffic, p: Params) -> tuple[Window, list[str]]:
    _wait_until(time.monotonic() + p.fault_at)
    start = time.monotonic()
    frozen = cs.signal_postgres(signal.SIGSTOP)
    try:
        _wait_until(start + p.freeze_seconds)
    finally:
        cs.signal_postgres(signal.SIGCONT)
    return (start, time.monotonic()), [f"{frozen} PostgreSQL processes stopped for {p.freeze_seconds:g} s"]


def bad_provider(cs: ChaosStack, traffic: Traffic, p: Params) -> tuple[Window, list[str]]:
    """20 % of sends 500, 5 % of answers lost to timeouts, and a 429 burst every few seconds."""
    start = time.monotonic()
    cs.provider_faults(error_rate=0.2, http_status=500)
    cs.provider_faults(timeout_rate=0.05)
    bursts = 0
    try:
        while time.monotonic() - start < p.provider_seconds:
            cs.provider_faults(throttle_burst=20, retry_after=1)
            bursts += 1
            _wait_until(time.monotonic() + 3.0)
            if traffic.finished.is_set() and cs.unsettled(traffic.ids()) == 0:
                break
    finally:
        cs.reset_provider()
    return (start, time.monotonic()), [f"provider: 20 % HTTP 500, 5 % answers held past the timeout, "
                                       f"{bursts} bursts of 20 × 429 (Retry-After 1)"]


def cut_connections(cs: ChaosStack, traffic: Traffic, p: Params) -> tuple[Window, list[str]]:
    """5 % of sends are taken by the provider, then the connection is cut before the answer."""
    start = time.monotonic()
    cs.provider_faults(drop_rate=0.05)
    try:
        while time.monotonic() - start < p.provider_seconds:
            _wait_until(time.monotonic() + 1.0)
            if traffic.finished.is_set() and cs.unsettled(traffic.ids()) == 0:
                break
    finally:
        cs.reset_provider()
    return (start, time.monotonic()), ["provider: 5 % of sends recorded, then the connection cut without an answer"]


SCENARIOS: dict[str, tuple[str, Fault]] = {
    "kill": ("SIGKILL a worker every 2 s", kill_workers),
    "ingest-kill": ("SIGKILL an ingest worker every 2 s", kill_ingest),
    "flush": ("Redis FLUSHALL mid-run", flush_redis),
    "redis-restart": ("Redis restart mid-run", restart_server("redis")),
    "pg-restart": ("PostgreSQL restart mid-run", restart_server("postgres")),
    "pg-freeze": ("PostgreSQL frozen (SIGSTOP)", freeze_postgres),
    "provider": ("provider 5xx, timeouts, 429s", bad_provider),
    "drop": ("provider cuts answers", cut_connections),
}


def _spread(name: str, p: Params) -> float:
    """Post for at least as long as the fault lasts, so requests meet it."""
    if name in ("kill", "ingest-kill"):
        return p.spread_seconds
    if name in ("provider", "drop"):
        return max(p.spread_seconds, p.provider_seconds * 0.8)
    outage = {"pg-freeze": p.freeze_seconds, "flush": 0.0}.get(name, p.down_seconds)
    return max(p.spread_seconds, p.fault_at + outage + 2.0)


def settle(cs: ChaosStack, traffic: Traffic, fault_end: float, timeout: float) -> float | None:
    """Seconds from the fault's end until no accepted message waits for a stage (None: never)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cs.unsettled(traffic.ids()) == 0:
            return round(max(0.0, time.monotonic() - fault_end), 1)
        time.sleep(POLL_SECONDS)
    return None


def settle_webhooks(cs: ChaosStack, webhooks: Subscription, deadline: float) -> float | None:
    """Seconds until the endpoint has nothing left to get, waiting until ``deadline`` (None: never)."""
    start = time.monotonic()
    while True:
        if cs.webhooks_unsettled(webhooks.endpoint_id) == 0:
            return round(time.monotonic() - start, 1)
        if time.monotonic() >= deadline:
            return None
        time.sleep(POLL_SECONDS)


def check_webhooks(cs: ChaosStack, webhooks: Subscription, row: Row, traffic: Traffic, deadline: float) -> None:
    """Count the webhooks of the scenario's messages once the endpoint has settled (or ``deadline``)."""
    ids = traffic.ids()
    # The history first: a step recorded after this is not yet owed to the endpoint.
    histories = cs.histories(ids, [event.removeprefix("message.") for event in WEBHOOK_EVENTS])
    row.webhooks_settle_seconds = settle_webhooks(cs, webhooks, deadline)
    lost = count_webhooks(row, traffic, histories, cs.receiver_requests(webhooks.receiver))
    cs.forget_receiver(webhooks.receiver)  # it keeps a bounded number: the next scenario starts empty
    if row.webhooks_settle_seconds is None:
        remaining = cs.webhooks_unsettled(webhooks.endpoint_id)
        row.notes.append(f"{'some' if remaining is None else remaining} webhook events still waiting for the fan-out, "
                         "pending or delivering at the end of the settle window")
    if lost:
        where = cs.webhook_deliveries(webhooks.endpoint_id, lost[:5])
        examples = ", ".join(f"#{mid} {event} ({where.get((mid, event), 'no delivery row')})" for mid, event in lost[:5])
        row.notes.append(f"webhooks lost, e.g.: {examples}")
    interrupted = cs.interrupted_webhook_attempts(webhooks.endpoint_id, ids)
    if interrupted:
        row.notes.append(f"{interrupted} webhook attempts never recorded (the webhooks process was killed or lost "
                         "PostgreSQL mid-attempt), handed back by the scheduler after the timeout + 30 s")


def run_scenario(cs: ChaosStack, run_id: str, name: str, p: Params, webhooks: Subscription) -> tuple[Row, Traffic]:
    label, fault = SCENARIOS[name]
    cs.reset_provider()
    provider_before = cs.provider_stats()
    tag = f"chaos {run_id} {name}"
    poster = Poster(cs.api, cs.key, tag)
    posting = poster.start(p.messages, _spread(name, p))
    (fault_start, fault_end), notes = fault(cs, poster.traffic, p)
    posting.join()
    settling = time.monotonic()
    recovery = settle(cs, poster.traffic, fault_end, p.settle_seconds)
    time.sleep(p.quiet_seconds)  # a late second send would show now
    provider = {k: v - provider_before.get(k, 0) for k, v in cs.provider_stats().items() if k in PROVIDER_COUNTS}
    if any(provider.values()):
        notes.append("at the provider: " + ", ".join(f"{PROVIDER_COUNTS[k]} {v}" for k, v in provider.items() if v))
    row = Row(scenario=f"{name}: {label}", posted=p.messages, messages=len(poster.traffic.accepted),
              recovery_seconds=recovery, notes=notes)
    # Requests started during the fault, and those started in the second after an instant one.
    describe_api(row, poster.traffic.calls_between(fault_start, max(fault_end, fault_start + 1.0)))
    count(row, poster.traffic, cs.received_bodies(), tag, cs.statuses(poster.traffic.ids()))
    check_webhooks(cs, webhooks, row, poster.traffic, settling + p.settle_seconds)
    return row, poster.traffic


def _counts(counter: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items()))
