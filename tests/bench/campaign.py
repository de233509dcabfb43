"""Benchmark: one campaign of COUNT SMS recipients (100,000 by default), fanned out and sent.

Runs on a private stack of its own (its own PostgreSQL, Redis and services; metrics ports from
PORT_BASE + pid % 490, a range no other suite uses: 27500-27998), whose SMS sender talks to a
Twilio imitation: ``tests.bench.lean_provider`` started here, or with ``--provider-url`` (env
POSTROOM_BENCH_PROVIDER_URL) one already running, such as the peers' ``fake_provider.js``. No pace
of our own (TWILIO_RATE_LIMIT_PER_SECOND=0). For a provider latency of 0 ms and then 150 ms (when
the imitation can be told its latency), and again at 0 ms with one recipient in ten on the
suppression list, one campaign each, to fresh numbers:

- fan-out: ``POST /v1/campaigns`` with every recipient and ``start: true`` until its 201 (every
  recipient is a message row and every id is enqueued for processing); the client's JSON
  encoding is timed apart;
- end to end: messages/s from that request's start until the imitation has received every one of
  them (``/__stats`` polled every 100 ms), and until PostgreSQL records every one sent (its last
  ``sent_at``) — the peers' figure is the second kind (every row recorded);
- exactly once: the imitation got N + probes requests from N + probes distinct numbers;
- CPU ms per message of every process group over the run (request → all sent), the imitation's
  and this client's apart, and peak RSS per group and per process (sampled every 0.5 s);
- urgent probes: while the campaign runs, a single urgent SMS every 100 ms; latency = the
  imitation's first receipt of its number − the time it was posted (without ``/__seen``: its
  ``sent_at`` in PostgreSQL − posted);
- Redis per queued message right after the fan-out: ``MEMORY USAGE`` of every Dramatiq queue
  list and ``.msgs`` hash, over the message ids their broker messages carry;
- the write budget per message: SQL statements (``postroom_db_statements_total`` of every
  service), rows inserted/updated/deleted by table (``pg_stat_user_tables``), HTTP requests;
- the goals, against the peers' figures when given (``--peers-summary`` or the explicit ones).

Per-message figures divide by every message sent in the run: the campaign's and the probes'.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import psycopg2
import redis
import requests

from common.config import ROOT, SETTINGS
from common.phones import normalize
from services.local.infra import free_port
from services.local.stack import Stack, private_env, services_for
from tests.bench.channels import UNPACED
from tests.bench.idle import cpu_seconds, cpu_used, settle, stack_processes
from tests.bench.load import api_url, cpu_snapshot, percentile, wait_for_progress

PORT_BASE = 27500  # + pid % 490: between the idle benchmark's range (23500-27499) and the API benchmark's (28000+)
# The runs: (provider latency, every how many recipients is suppressed; 0 for none). The third has
# one recipient in ten on the suppression list: routing must end those set-wise, and the rest must
# still go out at the first run's pace.
RUNS = ((0, 0), (150, 0), (0, 10))
TEXT = "Your order has shipped. Track it in the app. Reply STOP to opt out."
PROBE_EVERY_S = 0.1
CAMPAIGN_AREA, PROBE_AREA = "415", "628"  # San Francisco: real area codes, every exchange below valid
EXCHANGES = [e for e in range(200, 1000) if e % 100 != 11 and e not in (555, 950, 958, 959, 976)]
IMITATION, CLIENT = "provider imitation", "bench client"
NOT_COUNTED = ("sandbox", CLIENT, IMITATION)  # not postroom: idle here, the provider, the load
STORES = ("postgres", "redis")
TABLES = ("message", "message_event", "outbox", "campaign_tally", "campaign_recipient", "provider_event")
STATEMENTS_METRIC = "postroom_db_statements_total"
STALL_S = 60.0
WARM_UP = 20_000  # recipients of the unreported first campaign
PG_STAT_IDLE_FLUSH_S = 11.0  # PostgreSQL's PGSTAT_IDLE_INTERVAL (10 s) and a margin

# The goals; figures of the peers (tests/bench README: /work/shared/bench/peers) are ratios' bases.
GOAL_VS_BULLMQ, GOAL_VS_DRAMATIQ, GOAL_SLOW_PROVIDER = 1.05, 2.5, 0.75
GOAL_URGENT_P99_S, GOAL_FANOUT_S, GOAL_FANOUT_COUNT, GOAL_REDIS_BYTES = 0.5, 5.0, 100_000, 200.0


def phone(area: str, n: int) -> str:
    """The n-th number of ``area``: +1 AREA EXCHANGE LINE, exchange by exchange."""
    return f"+1{area}{EXCHANGES[n // 10_000]}{n % 10_000:04d}"


def numbers(area: str, first: int, count: int) -> list[str]:
    """``count`` distinct numbers from the ``first``-th; the first and last of each exchange used
    and a stride through the rest are checked with ``normalize`` (they must be stored as sent)."""
    out = [phone(area, n) for n in range(first, first + count)]
    sample = set(range(0, count, max(1, count // 200))) | {count - 1}
    sample |= {i for i in range(count) if (first + i) % 10_000 in (0, 9_999)}
    for i in sorted(sample):
        if normalize(out[i]) != out[i]:
            raise RuntimeError(f"{out[i]} is not stored as given; pick other test numbers")
    return out


# -- the provider imitation ---------------------------------------------------------------------

class Imitation:
    """The Twilio imitation the stack sends to: ours (started here) or one already running."""

    def __init__(self, url: str, process: subprocess.Popen[bytes] | None = None):
        self.url, self.process = url.rstrip("/"), process
        self.session = requests.Session()
        self.kind = "tests.bench.lean_provider" if process else "external"
        self.controls_latency = self._post("/__latency", {"latency_ms": 0}) == 200
        self.can_reset = self._post("/__reset", None) == 200
        self.has_seen = self._get_status("/__seen?to=") == 200
        self.pid = process.pid if process else _listening_pid(url)
        self.base: dict[str, int] = {}

    @classmethod
    def start_lean(cls) -> Imitation:
        port = free_port()
        process = subprocess.Popen([sys.executable, "-m", "tests.bench.lean_provider", "--port", str(port)],
                                   cwd=ROOT, stdout=subprocess.PIPE, start_new_session=True)
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 15)
        if not ready or process.stdout.readline().strip() != b"LISTENING":
            process.kill()
            raise RuntimeError("tests.bench.lean_provider did not start")
        return cls(f"http://127.0.0.1:{port}", process)

    def _post(self, path: str, body: Any) -> int:
        with contextlib.suppress(requests.RequestException):
            return self.session.post(self.url + path, json=body, timeout=10).status_code
        return 0

    def _get_status(self, path: str) -> int:
        with contextlib.suppress(requests.RequestException):
            return self.session.get(self.url + path, timeout=10).status_code
        return 0

    def stats(self) -> dict[str, int]:
        got = self.session.get(self.url + "/__stats", timeout=10).json()
        out = {k: int(got.get(k, 0)) for k in ("requests", "distinct_to", "bad")}
        out["duplicates"] = out["requests"] - out["distinct_to"]
        return out

    def begin_run(self, latency_ms: int) -> None:
        """Cleared if it can be, at ``latency_ms`` if it can be told; counts from here on."""
        if self.can_reset:
            self._post("/__reset", None)
        if self.controls_latency and self._post("/__latency", {"latency_ms": latency_ms}) != 200:
            raise RuntimeError("the imitation refused its latency")
        self.base = self.stats()

    def since_run(self) -> dict[str, int]:
        now = self.stats()
        out = {k: now[k] - self.base.get(k, 0) for k in ("requests", "distinct_to", "bad")}
        out["duplicates"] = out["requests"] - out["distinct_to"]
        return out

    def seen(self, wanted: list[str]) -> dict[str, float]:
        if not wanted:
            return {}
        answer = self.session.post(self.url + "/__seen", json=wanted, timeout=30)
        answer.raise_for_status()
        return {k: float(v) for k, v in answer.json().items() if v is not None}

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def _listening_pid(url: str) -> int | None:
    """The process listening on the url's port (for its CPU and memory), if this user may see it."""
    port = int(url.rsplit(":", 1)[1].split("/")[0]) if url.count(":") >= 2 else 80
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections("tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return int(conn.pid)
    return None


# -- what the run measures besides time ---------------------------------------------------------

class Probes(threading.Thread):
    """Posts one urgent SMS every PROBE_EVERY_S, each to a number of its own, until stopped."""

    def __init__(self, api: str, key: str, first: int):
        super().__init__(name="urgent-probes", daemon=True)
        self.api, self.first = api, first
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        self.posted: list[dict[str, Any]] = []  # to, at (posted), id (from the 202), error
        self.halt = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        session, due, n = requests.Session(), time.monotonic(), 0
        while not self.halt.is_set():
            to = phone(PROBE_AREA, self.first + n)
            n += 1
            entry: dict[str, Any] = {"to": to, "at": time.time(), "id": None, "error": None}
            with self.lock:  # listed before it is posted: the provider may have it before the 202
                self.posted.append(entry)
            try:
                answer = session.post(f"{self.api}/v1/messages", headers=self.headers, timeout=30, data=json.dumps(
                    {"channel": "sms", "to": to, "body": f"Your code is {n:06d}", "priority": "urgent"}))
                if answer.status_code == 202:
                    entry["id"] = answer.json()["id"]
                else:
                    entry["error"] = f"{answer.status_code}: {answer.text[:200]}"
            except requests.RequestException as exc:
                entry["error"] = repr(exc)
            due += PROBE_EVERY_S
            self.halt.wait(max(0.0, due - time.monotonic()))

    def snapshot(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.posted)

    def stop(self) -> list[dict[str, Any]]:
        self.halt.set()
        self.join(60)
        return [p for p in self.snapshot() if p["error"] is None and p["id"] is not None]


# Each hop of an urgent probe, from its history: the API's post to the row, then each stage.
HOPS = (("post → accepted", None, "accepted"), ("processing: accepted → queued", "accepted", "queued"),
        ("routing: queued → routed", "queued", "routed"), ("sender claim: routed → sending", "routed", "sending"),
        ("provider call and record: sending → sent", "sending", "sent"))


def probe_hops(cur: Any, probes: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """p50/p99/max seconds of each hop of the urgent probes (``HOPS``), from their first event of
    each status; the post time is the client's."""
    if not probes:
        return {}
    posted = {p["id"]: p["at"] for p in probes}
    cur.execute("SELECT message_id, status, extract(epoch FROM min(at)) FROM message_event WHERE message_id = ANY(%s)"
                " GROUP BY 1, 2", (list(posted),))
    at: dict[int, dict[str, float]] = {}
    for message_id, status, when in cur.fetchall():
        at.setdefault(message_id, {})[status] = float(when)
    out = {}
    for name, start, end in HOPS:
        spans = [steps[end] - (posted[m] if start is None else steps[start]) for m, steps in at.items()
                 if end in steps and (start is None or start in steps)]
        if spans:
            out[name] = {"p50": round(percentile(spans, 50), 3), "p99": round(percentile(spans, 99), 3),
                         "max": round(max(spans), 3)}
    return out


class RssSampler(threading.Thread):
    """Peak RSS of every process of the stack (and of the imitation), sampled every 0.5 s: per
    process, and per group as the largest sum of its processes at one sample."""

    def __init__(self, stack: Stack, extra: dict[str, list[psutil.Process]]):
        super().__init__(name="rss-sampler", daemon=True)
        self.stack, self.extra = stack, extra
        self.halt = threading.Event()
        self.group_peak: dict[str, int] = {}
        self.process_peak: dict[int, dict[str, Any]] = {}

    def run(self) -> None:
        while True:
            for group, procs in {**stack_processes(self.stack), **self.extra}.items():
                total = 0
                for proc in procs:
                    try:
                        rss = proc.memory_info().rss
                        name = proc.name()
                    except psutil.Error:
                        continue
                    total += rss
                    seen = self.process_peak.setdefault(proc.pid, {"group": group, "pid": proc.pid, "name": name, "rss": 0})
                    seen["rss"] = max(seen["rss"], rss)
                self.group_peak[group] = max(self.group_peak.get(group, 0), total)
            if self.halt.wait(0.5):
                return

    def stop(self) -> dict[str, Any]:
        self.halt.set()
        self.join(10)
        mb = 1024 * 1024
        by_group: dict[str, Any] = {}
        for group, peak in self.group_peak.items():
            procs = sorted((p for p in self.process_peak.values() if p["group"] == group), key=lambda p: -p["rss"])
            by_group[group] = {"peak_mb": round(peak / mb, 1), "processes": len(procs),
                               "largest": {"pid": procs[0]["pid"], "name": procs[0]["name"],
                                           "peak_mb": round(procs[0]["rss"] / mb, 1)} if procs else None}
        return {"by_group": by_group,
                "by_process": [{"group": p["group"], "pid": p["pid"], "name": p["name"], "peak_mb": round(p["rss"] / mb, 1)}
                               for p in sorted(self.process_peak.values(), key=lambda p: (p["group"], -p["rss"]))]}


def broker_memory(client: redis.Redis) -> dict[str, Any]:
    """Bytes of every Dramatiq queue key (``dramatiq:<queue>`` lists, ``dramatiq:<queue>.msgs``
    hashes, also their ``.DQ`` delay queues) and the message ids the broker messages carry; the
    ack sets of messages being worked on are counted apart."""
    queue_bytes = acks_bytes = broker_messages = ids = 0
    keys: dict[str, int] = {}
    for raw in client.scan_iter(match="dramatiq:*", count=1000):
        key = raw.decode() if isinstance(raw, bytes) else str(raw)
        kind = client.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        size = int(client.memory_usage(key, samples=0) or 0)
        if key.startswith("dramatiq:__acks__."):
            acks_bytes += size
        elif kind == "list" and not key.startswith("dramatiq:__"):
            queue_bytes += size
            keys[key] = size
        elif kind == "hash" and key.endswith(".msgs"):
            queue_bytes += size
            keys[key] = size
            for _, body in client.hscan_iter(key, count=1000):
                broker_messages += 1
                args = json.loads(body).get("args") or [[]]
                ids += len(args[0]) if isinstance(args[0], list) else 1
    return {"queue_keys": keys, "queue_bytes": queue_bytes, "ack_set_bytes": acks_bytes,
            "broker_messages": broker_messages, "message_ids": ids,
            "bytes_per_queued_message": round(queue_bytes / ids, 1) if ids else None}


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def metrics_endpoints(stack: Stack) -> dict[str, str]:
    """Where each service exposes its metrics: workers and the scheduler on their ports, ingest
    on the API's /metrics (its gunicorn workers aggregated in multiprocess mode)."""
    host = stack.cfg.postroom_metrics_host
    found = {s.name: f"http://{host}:{s.metrics_port}/metrics" for s in services_for(stack.cfg) if s.metrics_port is not None}
    found["ingest"] = api_url(stack) + "/metrics"
    return found


def statements(stack: Stack) -> tuple[dict[str, float], list[str]]:
    """``postroom_db_statements_total`` of every service that exposes it, and the services that
    could not be read."""
    counts, missing = {}, []
    for name, url in metrics_endpoints(stack).items():
        try:
            text = requests.get(url, timeout=10).text
        except requests.RequestException:
            missing.append(name)
            continue
        values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                  if line.startswith(STATEMENTS_METRIC) and not line.startswith("#")]
        if values:
            counts[name] = sum(values)
        else:
            missing.append(name)
    return counts, missing


def table_writes(cur: Any) -> dict[str, dict[str, int]]:
    cur.execute("SELECT relname, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables")
    return {name: {"ins": int(i), "upd": int(u), "del": int(d)} for name, i, u, d in cur.fetchall()}


def settled_table_writes(cur: Any) -> tuple[dict[str, dict[str, int]], float]:
    """Table write counters once every backend has flushed its own: a PostgreSQL 15+ backend
    flushes its pending statistics at most once a second, and one that goes idle within a second
    of its last flush keeps them for PGSTAT_IDLE_INTERVAL (10 s). Two reads that agree prove
    nothing, so wait that long once the work is done (and before it starts)."""
    time.sleep(PG_STAT_IDLE_FLUSH_S)
    return table_writes(cur), PG_STAT_IDLE_FLUSH_S


def rows_written(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]], messages: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    other = 0
    for table, now in after.items():
        was = before.get(table, {"ins": 0, "upd": 0, "del": 0})
        delta = {k: now[k] - was[k] for k in ("ins", "upd", "del")}
        if table in TABLES:
            out[table] = {**delta, "per_message": round(sum(delta.values()) / messages, 3)}
        else:
            other += sum(delta.values())
    for table in TABLES:
        out.setdefault(table, {"ins": 0, "upd": 0, "del": 0, "per_message": 0.0})
    out["other tables"] = {"per_message": round(other / messages, 3)}
    out["total_per_message"] = round(sum(v["per_message"] for v in out.values()), 3)
    return out


def effective_settings(stack: Stack) -> dict[str, Any]:
    """Every POSTROOM_* setting as the stack's services read it, and the Twilio ones that matter."""
    wanted = [s.env for s in SETTINGS if s.env.startswith("POSTROOM_")] + ["TWILIO_API_BASE", "TWILIO_RATE_LIMIT_PER_SECOND"]
    return {name: "(set, not shown)" if "SECRET" in name else str(getattr(stack.cfg, name.lower(), "")) for name in wanted}


# -- one run ---------------------------------------------------------------------------------

def suppress(cur: Any, addresses: list[str]) -> None:
    """Put ``addresses`` on the SMS suppression list of the bench's workspace (the warm-up
    campaign's), as an operator's import would, before the campaign is posted."""
    cur.execute("INSERT INTO suppression (workspace_id, channel, address, reason, source)"
                " SELECT (SELECT workspace_id FROM campaign ORDER BY id LIMIT 1), 'sms', a, 'manual', 'bench'"
                " FROM unnest(%s::text[]) AS a ON CONFLICT DO NOTHING", (addresses,))


def run_once(stack: Stack, key: str, imitation: Imitation, count: int, latency_ms: int, index: int,
             suppressed_every: int = 0) -> dict[str, Any]:
    api = api_url(stack)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    session = requests.Session()
    to = numbers(CAMPAIGN_AREA, index * count, count)
    client = redis.Redis.from_url(stack.cfg.redis_url)
    conn = psycopg2.connect(stack.cfg.database_url)
    conn.autocommit = True
    cur = conn.cursor()
    extra = {IMITATION: [psutil.Process(imitation.pid)]} if imitation.pid else {}
    here = {CLIENT: [psutil.Process(os.getpid())]}

    def snapshot() -> dict[str, dict[int, float]]:
        return {**cpu_snapshot(stack), **cpu_seconds(extra)}

    suppressed = to[::suppressed_every] if suppressed_every else []
    sendable = count - len(suppressed)
    if suppressed:
        suppress(cur, suppressed)
    imitation.begin_run(latency_ms)
    if index:  # the dead row versions the earlier run left are cleared now (not counted), not by
        # autovacuum in the middle of this run, and the statistics describe a campaign's history
        cur.execute("VACUUM (ANALYZE) message, message_event, campaign_tally, campaign_recipient")
    writes_before, _ = settled_table_writes(cur)  # also lets the stack go quiet
    statements_before, _ = statements(stack)
    memory_before = used_memory(client)
    rss = RssSampler(stack, {**extra, **here})
    rss.start()
    probes = Probes(api, key, first=(index * 100_000))

    encode_started = time.perf_counter()
    body = json.dumps({"name": f"bench: {count:,} recipients, provider {latency_ms} ms", "channel": "sms", "body": TEXT,
                       "recipients": [{"to": n} for n in to], "start": True}).encode()
    encode_s = time.perf_counter() - encode_started
    cpu_before = snapshot()
    started = time.time()
    probes.start()  # from right after the campaign request is sent until the campaign is done
    answer = session.post(f"{api}/v1/campaigns", data=body, headers=headers, timeout=900)
    answered = time.time()
    cpu_fan_out = cpu_used(cpu_before, snapshot())
    if answer.status_code != 201:
        probes.stop()
        rss.stop()
        raise RuntimeError(f"POST /v1/campaigns answered {answer.status_code}: {answer.text[:2000]}")
    broker = broker_memory(client)
    memory_after = used_memory(client)
    campaign = answer.json()
    campaign_id = campaign["id"]
    api_requests = 1

    def campaign_received() -> int:
        """Distinct campaign numbers the imitation has: its distinct numbers less the probes'."""
        distinct = imitation.since_run()["distinct_to"]
        posted = probes.snapshot()
        if distinct < sendable:
            return max(0, distinct - len(posted))  # a lower bound, cheap while far from done
        if imitation.has_seen:
            return distinct - len(imitation.seen([p["to"] for p in posted]))
        ids = [p["id"] for p in posted if p["id"] is not None]
        cur.execute("SELECT count(*) FROM message WHERE id = ANY(%s) AND sent_at IS NOT NULL", (ids,))
        return distinct - int(cur.fetchone()[0])

    received = wait_for_progress(campaign_received, sendable, stall=STALL_S, every=0.1)
    received_at = time.time()

    def recorded_sent() -> int:
        nonlocal api_requests, campaign
        api_requests += 1
        campaign = session.get(f"{api}/v1/campaigns/{campaign_id}", headers=headers, timeout=30).json()
        progress = campaign["progress"]
        return int(progress["sent"] + progress["delivered"] + progress["read"])

    sent = wait_for_progress(recorded_sent, sendable, stall=STALL_S, every=0.1)
    cpu = cpu_used(cpu_before, snapshot())
    window = time.time() - started
    accepted = probes.stop()
    api_requests += len(probes.posted)
    peaks = rss.stop()
    cur.execute("SELECT extract(epoch FROM max(sent_at)), count(sent_at) FROM message WHERE campaign_id = %s", (campaign_id,))
    last_sent, sent_rows = cur.fetchone()
    expected = sendable + len(accepted)
    # The probes posted last: let them arrive, then the imitation's counts are final.
    wait_for_progress(lambda: imitation.since_run()["distinct_to"], expected, stall=30, every=0.1)
    provider = imitation.since_run()

    completed_after = None
    deadline = time.time() + 30
    while time.time() < deadline:
        api_requests += 1
        campaign = session.get(f"{api}/v1/campaigns/{campaign_id}", headers=headers, timeout=30).json()
        if campaign["status"] in ("completed", "cancelled"):
            completed_after = round(time.time() - started, 2)
            break
        time.sleep(0.25)
    statements_after, unread = statements(stack)
    writes_after, flush_wait = settled_table_writes(cur)

    reached = len(imitation.seen(suppressed)) if suppressed and imitation.has_seen else None
    cur.execute("SELECT count(*) FROM message WHERE campaign_id = %s AND status = 'suppressed'", (campaign_id,))
    suppressed_rows = int(cur.fetchone()[0])
    hops = probe_hops(cur, accepted)
    cur.execute("SELECT e.status, count(*) FROM message_event e JOIN message m ON m.id = e.message_id"
                " WHERE m.campaign_id = %s GROUP BY 1 ORDER BY 2 DESC", (campaign_id,))
    events = {status: round(int(n) / count, 3) for status, n in cur.fetchall()}
    if imitation.has_seen:
        first = imitation.seen([p["to"] for p in accepted])
        latencies = [first[p["to"]] - p["at"] for p in accepted if p["to"] in first]
        method = "imitation's first receipt − posted"
    else:
        cur.execute("SELECT id, extract(epoch FROM sent_at) FROM message WHERE id = ANY(%s) AND sent_at IS NOT NULL",
                    ([p["id"] for p in accepted],))
        when = {int(i): float(at) for i, at in cur.fetchall()}
        latencies = [when[p["id"]] - p["at"] for p in accepted if p["id"] in when]
        method = "sent_at in PostgreSQL − posted (the imitation has no /__seen)"
    conn.close()
    client.close()

    messages = expected
    statement_delta = {name: statements_after[name] - statements_before.get(name, 0.0) for name in statements_after}
    ms = {g: round(s * 1000 / messages, 3) for g, s in cpu.items()}
    counted = {g: v for g, v in ms.items() if g not in NOT_COUNTED}
    to_pg = float(last_sent) - started if last_sent is not None else None
    return {
        "provider_latency_ms": latency_ms,
        "recipients": count,
        "suppressed": {"listed": len(suppressed), "rows": suppressed_rows,
                       "progress": campaign["progress"].get("suppressed"), "reached_provider": reached},
        "campaign_id": campaign_id,
        "campaign_status": campaign["status"],
        "campaign_progress": campaign["progress"],
        "completed_after_s": completed_after,
        "request_bytes": len(body),
        "json_encode_s": round(encode_s, 3),
        "fan_out_s": round(answered - started, 3),  # the request: sent → 201
        "fan_out_with_encoding_s": round(answered - started + encode_s, 3),
        "fan_out_recipients_per_s": round(count / (answered - started), 1),
        # Everything the stack did while the request ran (the probes' and the first sends' too).
        "fan_out_cpu_ms_per_recipient": {g: round(v * 1000 / count, 4) for g, v in cpu_fan_out.items()},
        "imitation_received": received,
        "recorded_sent": sent,
        "sent_rows": int(sent_rows),
        "to_imitation_s": round(received_at - started, 2),
        "to_imitation_messages_per_s": round(sendable / (received_at - started), 1),
        "to_postgres_sent_s": round(to_pg, 2) if to_pg else None,
        "end_to_end_messages_per_s": round(sendable / to_pg, 1) if to_pg else None,  # sent, suppressed not counted
        "end_to_end_recipients_per_s": round(count / to_pg, 1) if to_pg else None,
        "exactly_once": {
            "expected": expected, "requests": provider["requests"], "distinct_to": provider["distinct_to"],
            "duplicates": provider["duplicates"], "missing": expected - provider["distinct_to"], "bad": provider["bad"],
            "ok": (provider["requests"] == provider["distinct_to"] == expected and provider["bad"] == 0
                   and suppressed_rows == len(suppressed) and not reached),
        },
        "urgent_probes": {
            "posted": len(probes.posted), "accepted": len(accepted), "measured": len(latencies), "method": method,
            "errors": [p["error"] for p in probes.posted if p["error"]][:5],
            "latency_s": ({"p50": round(percentile(latencies, 50), 3), "p99": round(percentile(latencies, 99), 3),
                           "max": round(max(latencies), 3), "mean": round(statistics.fmean(latencies), 3)}
                          if latencies else {}),
            "hops_s": hops,
        },
        "redis": {**broker, "used_memory_before": memory_before, "used_memory_after": memory_after,
                  "used_memory_delta_per_recipient": round((memory_after - memory_before) / count, 1)},
        "call_slots": stack.cfg.postroom_sender_concurrency,
        "call_slot_ceiling_messages_per_s": (round(stack.cfg.postroom_sender_concurrency * 1000 / latency_ms, 1)
                                             if latency_ms else None),
        "cpu_window_s": round(window, 2),
        "cpu_ms_per_message": ms,
        "cpu_ms_per_message_postroom_services": round(sum(v for g, v in counted.items() if g not in STORES), 3),
        "cpu_ms_per_message_total": round(sum(counted.values()), 3),  # postroom + PostgreSQL + Redis
        "cpu_ms_per_message_imitation": ms.get(IMITATION),
        "peak_rss": peaks,
        "write_budget": {
            "messages": messages,
            "sql_statements_per_message": round(sum(statement_delta.values()) / messages, 3),
            "sql_statements_per_message_by_service": {k: round(v / messages, 3) for k, v in sorted(statement_delta.items())},
            "sql_statements_unread_services": sorted(set(unread)),
            "rows_written": rows_written(writes_before, writes_after, messages),
            "campaign_events_per_message_by_status": events,
            "pg_stat_flush_wait_s": flush_wait,
            "http_requests_per_message": {"provider": round(provider["requests"] / messages, 4),
                                          "api": round(api_requests / messages, 4)},
        },
    }


# -- goals -------------------------------------------------------------------------------------

def peer_figures(path: str | None, bullmq_rate: float | None, dramatiq_rate: float | None,
                 bullmq_cpu_ms: float | None) -> dict[str, Any]:
    """The peers' figures: medians over the successful runs of a bench_same.py result (JSONL, a
    JSON list of its records, or one record), overridden by the explicit figures."""
    peers: dict[str, Any] = {"source": path}
    if path:
        text = Path(path).read_text()
        try:
            data = json.loads(text)
            records = data if isinstance(data, list) else [data]
        except json.JSONDecodeError:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        for system in ("same_bullmq", "same_dramatiq"):
            runs = [r for r in records if r.get("system") == system and r.get("ok") and r.get("e2e_rate")]
            if runs:
                cpu = [sum(r.get("cpu_s", {}).get(k, 0.0) for k in ("workers", "postgres", "redis")) * 1000 / r["n"] for r in runs]
                peers[system] = {"runs": len(runs), "e2e_rate": statistics.median(r["e2e_rate"] for r in runs),
                                 "cpu_ms_workers_pg_redis": round(statistics.median(cpu), 3)}
    for system, field, value in (("same_bullmq", "e2e_rate", bullmq_rate), ("same_dramatiq", "e2e_rate", dramatiq_rate),
                                 ("same_bullmq", "cpu_ms_workers_pg_redis", bullmq_cpu_ms)):
        if value is not None:
            peers.setdefault(system, {})[field] = value
    return peers


def hottest(run: dict[str, Any], fan_out: bool = False) -> str:
    """The process group that used the most CPU over the run (or while the fan-out request ran)."""
    figures = run["fan_out_cpu_ms_per_recipient" if fan_out else "cpu_ms_per_message"]
    groups = {g: v for g, v in figures.items() if g not in NOT_COUNTED}
    if not groups:
        return ""
    name, value = max(groups.items(), key=lambda kv: kv[1])
    if fan_out:
        return (f"hottest process group while the request ran: {name}, {value:.4f} ms per recipient of"
                f" {sum(groups.values()):.4f}")
    return f"hottest process group: {name}, {value:.3f} ms/msg of {run['cpu_ms_per_message_total']:.3f}"


def goals(runs: list[dict[str, Any]], peers: dict[str, Any], count: int) -> list[dict[str, Any]]:
    fast = next((r for r in runs if r.get("provider_latency_ms") == 0 and "skipped" not in r
                 and not r["suppressed"]["listed"]), None)
    screened = next((r for r in runs if "skipped" not in r and r["suppressed"]["listed"]), None)
    slow = next((r for r in runs if r.get("provider_latency_ms") == 150 and "skipped" not in r), None)
    out: list[dict[str, Any]] = []

    def goal(name: str, measured: float | None, target: float | None, compare: str, run: dict[str, Any] | None,
             unit: str = "", note: str = "") -> None:
        met: bool | None = None
        if measured is None or target is None:
            verdict = "no figure" if measured is None else "no peer figure"
        else:
            met = {">=": measured >= target, "<=": measured <= target, "<": measured < target}[compare]
            verdict = "met" if met else "MISSED"
        if met is False and run is not None:
            note = "; ".join(n for n in (note, hottest(run, fan_out=name.startswith("fan-out"))) if n)
        out.append({"goal": name, "target": None if target is None else round(target, 3), "measured": measured,
                    "unit": unit, "met": met, "verdict": verdict, "note": note})

    bull, dram = peers.get("same_bullmq", {}), peers.get("same_dramatiq", {})
    e2e = fast["end_to_end_messages_per_s"] if fast else None
    goal(f"end to end, provider 0 ms ≥ {GOAL_VS_BULLMQ}× same_bullmq", e2e,
         GOAL_VS_BULLMQ * bull["e2e_rate"] if bull.get("e2e_rate") else None, ">=", fast, "msg/s",
         f"same_bullmq {bull['e2e_rate']:g} msg/s" if bull.get("e2e_rate") else "")
    goal(f"end to end, provider 0 ms ≥ {GOAL_VS_DRAMATIQ}× same_dramatiq", e2e,
         GOAL_VS_DRAMATIQ * dram["e2e_rate"] if dram.get("e2e_rate") else None, ">=", fast, "msg/s",
         f"same_dramatiq {dram['e2e_rate']:g} msg/s" if dram.get("e2e_rate") else "")
    if screened is not None:
        listed = screened["suppressed"]["listed"]
        goal(f"end to end with {listed:,} of {screened['recipients']:,} recipients suppressed, provider 0 ms ≥ {GOAL_VS_BULLMQ}×"
             " same_bullmq (messages sent per second)", screened["end_to_end_messages_per_s"],
             GOAL_VS_BULLMQ * bull["e2e_rate"] if bull.get("e2e_rate") else None, ">=", screened, "msg/s",
             f"{_n(screened['end_to_end_recipients_per_s'], 0)} recipients/s; the run without suppression"
             f" {_n(e2e, 0)} msg/s")
    ratio = round(slow["end_to_end_messages_per_s"] / e2e, 3) if slow and e2e and slow["end_to_end_messages_per_s"] else None
    goal(f"provider 150 ms ≥ {GOAL_SLOW_PROVIDER}× the 0 ms run", ratio, GOAL_SLOW_PROVIDER, ">=", slow, "×",
         (f"{_n(slow['end_to_end_messages_per_s'], 0)} vs {_n(e2e, 0)} msg/s; the sender's {slow['call_slots']} call slots"
          f" at 150 ms per call allow at most {slow['call_slot_ceiling_messages_per_s']:,.0f} msg/s") if slow
         else "no 150 ms run (the imitation cannot be told its latency)")
    goal("CPU ms/msg postroom + PostgreSQL + Redis ≤ same_bullmq's workers + PostgreSQL + Redis",
         fast["cpu_ms_per_message_total"] if fast else None, bull.get("cpu_ms_workers_pg_redis"), "<=", fast, "ms/msg")
    for run in (fast, slow, screened):
        if run is None:
            continue
        lat = run["urgent_probes"]["latency_s"]
        which = f"provider {run['provider_latency_ms']} ms" + (", suppression" if run["suppressed"]["listed"] else "")
        goal(f"urgent p99 < {GOAL_URGENT_P99_S:g} s ({which})", lat.get("p99"),
             GOAL_URGENT_P99_S, "<", run, "s")
    for run in (fast, slow):
        if run is None:
            continue
        target = GOAL_FANOUT_S * count / GOAL_FANOUT_COUNT
        note = "" if count == GOAL_FANOUT_COUNT else (
            f"scaled from {GOAL_FANOUT_S:g} s for {GOAL_FANOUT_COUNT:,} to {count:,} recipients; fixed costs weigh more at a small count")
        goal(f"fan-out of {count:,} ≤ {target:.3g} s (provider {run['provider_latency_ms']} ms)", run["fan_out_s"], target,
             "<=", run, "s", note)
    for run in (fast, slow):
        if run is None:
            continue
        goal(f"Redis ≤ {GOAL_REDIS_BYTES:g} B per queued message (provider {run['provider_latency_ms']} ms)",
             run["redis"]["bytes_per_queued_message"], GOAL_REDIS_BYTES, "<=", run, "B")
    return out


# -- the scenario on its own stack -------------------------------------------------------------

def run(var_dir: Path, count: int, provider_url: str | None = None, peers: dict[str, Any] | None = None) -> dict[str, Any]:
    """Start a fresh private stack under ``var_dir`` with its SMS sender pointed at the imitation,
    run the campaign at each provider latency, and return every figure and the goals."""
    shutil.rmtree(var_dir, ignore_errors=True)
    provider_url = provider_url or os.environ.get("POSTROOM_BENCH_PROVIDER_URL") or None
    imitation = Imitation(provider_url) if provider_url else Imitation.start_lean()
    report: dict[str, Any] = {"recipients": count, "cores": psutil.cpu_count(), "imitation": imitation.kind,
                              "imitation_url": imitation.url, "imitation_latency_control": imitation.controls_latency,
                              "imitation_seen": imitation.has_seen, "notes": [], "runs": []}
    if imitation.pid is None:
        report["notes"].append("the imitation's process was not found: its CPU and memory are not reported")
    try:
        # 512 calls in flight per lane: at 150 ms a call the default 256 caps a sender at ~1,700/s.
        env = private_env(var_dir, PORT_BASE + os.getpid() % 490, POSTROOM_LOG_LEVEL="WARNING",
                          TWILIO_API_BASE=imitation.url,
                          **{"POSTROOM_SENDER_CONCURRENCY": os.environ.get("POSTROOM_SENDER_CONCURRENCY", "512"), **UNPACED})
        with Stack(env=env) as stack:
            key = stack.start()
            settle()
            report["settings"] = effective_settings(stack)
            # A warm-up campaign, not reported: every measured run then starts from tables that hold
            # a campaign's history and were vacuumed and analysed, not from an empty database whose
            # autovacuum and statistics catch up in the middle of the first run.
            warm = run_once(stack, key, imitation, min(count, WARM_UP), 0, 0)
            report["notes"].append(f"a warm-up campaign of {warm['recipients']:,} ran first and is not reported"
                                   f" ({warm['end_to_end_messages_per_s']:,.0f} msg/s); each run starts after VACUUM (ANALYZE)")
            for index, (latency, every) in enumerate(RUNS, start=1):
                if latency and not imitation.controls_latency:
                    note = f"provider {latency} ms run skipped: the imitation at {imitation.url} has no /__latency"
                    report["notes"].append(note)
                    report["runs"].append({"provider_latency_ms": latency, "skipped": note})
                    continue
                report["runs"].append(run_once(stack, key, imitation, count, latency, index, every))
    finally:
        imitation.stop()
    report["peers"] = peers or {}
    report["goals"] = goals(report["runs"], report["peers"], count)
    return report


def _n(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _fig(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"


def table(report: dict[str, Any]) -> str:
    lines = []
    for r in report["runs"]:
        if "skipped" in r:
            lines += [f"campaign, provider {r['provider_latency_ms']} ms: {r['skipped']}", ""]
            continue
        once, probes, red, budget = r["exactly_once"], r["urgent_probes"], r["redis"], r["write_budget"]
        lat = probes["latency_s"]
        rows = budget["rows_written"]
        groups = sorted(r["cpu_ms_per_message"].items(), key=lambda kv: -kv[1])
        rss = r["peak_rss"]["by_group"]
        listed = r["suppressed"]["listed"]
        lines += [
            f"campaign: {r['recipients']:,} SMS recipients in one POST /v1/campaigns (start: true), "
            + (f"{listed:,} of them on the suppression list, " if listed else "")
            + (f"{report['imitation']} answering in {r['provider_latency_ms']} ms" if report["imitation_latency_control"]
               else f"the imitation at {report['imitation_url']} answering as it does (no latency control)"),
            f"  fan-out: POST → 201 in {r['fan_out_s']:.2f} s ({r['fan_out_recipients_per_s']:,.0f} recipients/s, body"
            f" {r['request_bytes'] / 1e6:.1f} MB; client JSON encoding {r['json_encode_s']:.3f} s apart); CPU ms per recipient"
            " while it ran: " + ", ".join(f"{g} {v:.4f}" for g, v in sorted(r["fan_out_cpu_ms_per_recipient"].items(),
                                                                           key=lambda kv: -kv[1])[:4]),
            f"  end to end: the imitation had all {r['recipients'] - listed:,} after {r['to_imitation_s']} s"
            f" ({r['to_imitation_messages_per_s']:,.0f} msg/s); PostgreSQL recorded the last sent after {r['to_postgres_sent_s']} s"
            f" ({_n(r['end_to_end_messages_per_s'], 0)} msg/s); campaign {r['campaign_status']}"
            + (f" after {r['completed_after_s']} s" if r["completed_after_s"] else "")
            + (f"; {r['suppressed']['rows']:,} ended suppressed (progress says {r['suppressed']['progress']}),"
               f" {r['suppressed']['reached_provider']} reached the imitation;"
               f" {_n(r['end_to_end_recipients_per_s'], 0)} recipients/s" if listed else ""),
            f"  exactly once: {once['requests']:,} requests from {once['distinct_to']:,} numbers for {once['expected']:,} expected"
            f" (campaign + probes): {once['duplicates']} duplicates, {once['missing']} missing, {once['bad']} bad:"
            f" {'ok' if once['ok'] else 'FAILED'}",
            f"  urgent probes every {PROBE_EVERY_S * 1000:.0f} ms: {probes['accepted']} of {probes['posted']} accepted,"
            f" latency ({probes['method']}) p50/p99/max {_n(lat.get('p50'), 3)} / {_n(lat.get('p99'), 3)} /"
            f" {_n(lat.get('max'), 3)} s",
            "    each hop, p50/p99/max s: " + "; ".join(f"{name} {h['p50']:.3f} / {h['p99']:.3f} / {h['max']:.3f}"
                                                     for name, h in probes.get("hops_s", {}).items()),
            f"  Redis right after the fan-out: {red['queue_bytes']:,} B in {len(red['queue_keys'])} queue keys for"
            f" {red['message_ids']:,} queued ids in {red['broker_messages']} broker messages = {_n(red['bytes_per_queued_message'])}"
            f" B per queued message (ack sets {red['ack_set_bytes']:,} B apart); used_memory {red['used_memory_before'] / 1e6:.2f}"
            f" → {red['used_memory_after'] / 1e6:.2f} MB",
            f"  write budget per message ({budget['messages']:,} messages): {budget['sql_statements_per_message']:.2f} SQL statements ("
            + ", ".join(f"{k} {v:.2f}" for k, v in budget["sql_statements_per_message_by_service"].items() if v >= 0.005)
            + (f"; not read: {', '.join(budget['sql_statements_unread_services'])}" if budget["sql_statements_unread_services"] else "")
            + f"); HTTP {budget['http_requests_per_message']['provider']:.3f} to the provider,"
            f" {budget['http_requests_per_message']['api']:.4f} to the API",
            "    rows written per message: " + ", ".join(
                f"{t} {rows[t]['per_message']:.2f} (+{rows[t]['ins']:,} ~{rows[t]['upd']:,} -{rows[t]['del']:,})" for t in TABLES)
            + f", other tables {rows['other tables']['per_message']:.2f}; total {rows['total_per_message']:.2f}",
            "    campaign events per message: " + ", ".join(f"{k} {v:.2f}" for k, v in budget["campaign_events_per_message_by_status"].items()),
            f"  CPU ms per message over {r['cpu_window_s']} s (request → all recorded sent), peak RSS (a group's: the"
            " largest sum over its processes, so PostgreSQL's counts shared buffers once per backend):",
            f"    {'group':<22} {'CPU ms/msg':>10} {'peak RSS MB':>12}  largest process",
            *[f"    {g:<22} {v:>10.3f} {_n(rss.get(g, {}).get('peak_mb')):>12}  "
              + (f"{rss[g]['largest']['name']} {rss[g]['largest']['peak_mb']} MB of {rss[g]['processes']}"
                 if rss.get(g, {}).get("largest") else "")
              + ("  (not counted)" if g in NOT_COUNTED else "") for g, v in groups],
            f"    {'postroom services':<22} {r['cpu_ms_per_message_postroom_services']:>10.3f}",
            f"    {'postroom + PG + Redis':<22} {r['cpu_ms_per_message_total']:>10.3f}",
            "",
        ]
    peers = report.get("peers", {})
    given = any(k in peers for k in ("same_bullmq", "same_dramatiq"))
    source = (peers.get("source") or "explicit figures") if given else "none given"
    lines.append(f"campaign goals (peers: {source})")
    for g in report["goals"]:
        measured = "-" if g["measured"] is None else f"{_fig(g['measured'])} {g['unit']}".strip()
        target = "" if g["target"] is None else f" (target {_fig(g['target'])} {g['unit']})".replace(" )", ")")
        lines.append(f"  {g['verdict']:<14} {g['goal']}: {measured}{target}" + (f" — {g['note']}" if g["note"] else ""))
    for note in report.get("notes", []):
        lines.append(f"  note: {note}")
    return "\n".join(lines) + "\n"
