"""The chaos run's private stack and the faults it can suffer: kills, flushes, restarts, freezes.

``ChaosStack`` starts the whole pipeline through ``Stack`` with settings that make recovery
observable within seconds (short stage deadline, sending timeout and lookup delay, a webhook retry
schedule of seconds), supervises it in the background (a killed worker is restarted by the
stack's own supervisor, as under ``make run``), and offers each fault as a method: SIGKILL one
worker process, FLUSHALL Redis, stop and start Redis or PostgreSQL on the same port and data
directory (``stop_server``, ``start_server``), SIGSTOP and SIGCONT every PostgreSQL process, and
change the sandbox's fault plan. It also reads both sides of the webhooks stage: the deliveries
and message histories in PostgreSQL, and what a sandbox receiver got.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import psycopg2
import redis
import requests

from services.local import infra as localinfra
from services.local.stack import Stack, private_env

SERVER_STARTERS: dict[str, Callable[[Path, int], localinfra.LocalServer]] = {
    "redis": localinfra.start_redis,
    "postgres": localinfra.start_postgres,
}
NOT_WORKERS = frozenset({"sandbox", "ingest", "scheduler"})  # the services a kill may not pick
UNSETTLED = ("accepted", "scheduled", "queued", "routed", "sending")
WEBHOOKS_UNSETTLED = ("pending", "delivering")

# Settings under which every recovery path shows within seconds, not the production minutes.
CHAOS_SETTINGS = {
    "POSTROOM_SANDBOX_LATENCY_MS": "150",  # real providers answer in 100-300 ms
    "POSTROOM_STAGE_DEADLINE_SECONDS": "5",
    "POSTROOM_PROVIDER_TIMEOUT_SECONDS": "3",
    "POSTROOM_SENDING_TIMEOUT_SECONDS": "10",  # must stay above the provider timeout
    "POSTROOM_RECONCILE_INTERVAL_SECONDS": "1",
    "POSTROOM_UNKNOWN_LOOKUP_DELAY_SECONDS": "2",
    "POSTROOM_RETRY_BASE_SECONDS": "0.5",
    "POSTROOM_RETRY_MAX_SECONDS": "5",
    # At 20 % 5xx, 5 attempts fail a message once in 3,000; 8 make that a few in a million, so
    # the provider scenario measures duplicates and losses rather than an exhausted retry budget.
    "POSTROOM_MAX_ATTEMPTS": "8",
    # WAHA sessions unpaced: the run measures the pipeline under faults, not a QR account's safe
    # pace (tests/test_waha.py covers that).
    "WAHA_PACE_SECONDS": "0",
    "WAHA_PACE_JITTER_SECONDS": "0",
    # A webhooks process killed mid-attempt leaves its deliveries to the scheduler after the timeout
    # + 30 s; a 5 s timeout and retries within 15 s let a scenario's webhooks settle in under a minute.
    "POSTROOM_WEBHOOK_TIMEOUT_SECONDS": "5",
    "POSTROOM_WEBHOOK_RETRY_SCHEDULE": "0,1,2,4,8",
    # The sandbox is one process imitating every provider for every sender lane at once; 256 calls
    # in flight per lane from each sender overload it, its answers come after the provider timeout
    # and its own control requests wait past theirs. 64 per lane keep it a fast provider, which is
    # what the run needs: it measures faults of the pipeline, not of the imitation.
    "POSTROOM_SENDER_CONCURRENCY": "64",
    # An ingest worker killed mid-request leaves its Idempotency-Key claim running: the client's
    # repeats wait it out (409) and take it over after 10 s, not the production minute.
    "POSTROOM_IDEMPOTENCY_LEASE_SECONDS": "10",
    # A worker killed mid-turn holds its conversation until the AI lease ends (2 min in production,
    # above the 30 s model timeout); 5 s calls and a 15 s lease show that recovery within the run.
    "POSTROOM_AI_TIMEOUT_SECONDS": "5",
    "POSTROOM_AI_LEASE_SECONDS": "15",
    "POSTROOM_LOG_LEVEL": "WARNING",
    "POSTROOM_ENV": "development",
}


class ChaosStack:
    """A private pipeline for one chaos run, with its faults."""

    def __init__(self, var_dir: Path, overrides: dict[str, str] | None = None) -> None:
        shutil.rmtree(var_dir, ignore_errors=True)  # a fresh stack: nothing left from an earlier run
        env = private_env(var_dir, 19000 + os.getpid() % 4000, **{**CHAOS_SETTINGS, **(overrides or {})})
        self.stack = Stack(env=env)
        # Kills are the point here: a killed service must come back however often it is killed.
        # A kill every 2 s would otherwise grow the restart delay to its 10 s ceiling (it resets only
        # after a minute of uptime); a 2 s ceiling keeps the measured recovery about the pipeline.
        self.stack.crash_loop_restarts = 1_000_000
        self.stack.restart_backoff = (0.5, 2.0)
        self.key = ""
        self.kills: list[str] = []
        self._random = random.Random()
        self._bag: list[str] = []  # worker services still to be killed in this round

    # -- life cycle -----------------------------------------------------------------------
    def start(self) -> None:
        self.key = self.stack.start()
        self.stack.start_supervisor(interval=0.25)

    def stop(self) -> None:
        self.stack.stop()

    def __enter__(self) -> ChaosStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.stack.cfg.postroom_api_port}"

    @property
    def sandbox(self) -> str:
        return self.stack.cfg.sandbox_url

    @property
    def database_url(self) -> str:
        return self.stack.cfg.database_url

    def restarts(self) -> dict[str, int]:
        """Service restarts the stack's supervisor made, by service."""
        return dict(self.stack.restarts)

    # -- worker kills ---------------------------------------------------------------------
    def worker_processes(self) -> list[tuple[str, psutil.Process]]:
        """The processes doing a worker service's work: each one's leaves (itself if it has none)."""
        found = []
        for name, popen in list(self.stack.processes.items()):
            if name in NOT_WORKERS or popen.poll() is not None:
                continue
            try:
                root = psutil.Process(popen.pid)
                tree = [root, *root.children(recursive=True)]
                found += [(name, p) for p in tree if not p.children()]
            except psutil.NoSuchProcess:
                continue
        return found

    def kill_random_worker(self, among: frozenset[str] | None = None) -> str | None:
        """SIGKILL one worker process picked at random (of the services ``among``, if given);
        returns its service's name.

        Services are drawn from a shuffled bag, so that a short run with a few kills still hits
        every worker service rather than, by chance, the same one each time.
        """
        candidates = [c for c in self.worker_processes() if among is None or c[0] in among]
        if not candidates:
            return None
        services = sorted({name for name, _ in candidates})
        if not set(services) & set(self._bag):
            self._bag = self._random.sample(services, len(services))
        wanted = next(name for name in self._bag if name in services)
        self._bag.remove(wanted)
        name, proc = self._random.choice([c for c in candidates if c[0] == wanted])
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            return None
        self.kills.append(name)
        return name

    def kill_ingest_worker(self) -> int | None:
        """SIGKILL one of ingest's gunicorn workers, mid-request as likely as not (its arbiter
        starts another); returns its pid. Requests it held die unanswered, their Idempotency-Key
        claims left running until their lease ends."""
        popen = self.stack.processes.get("ingest")
        if popen is None or popen.poll() is not None:
            return None
        try:
            workers = psutil.Process(popen.pid).children()
        except psutil.NoSuchProcess:
            return None
        if not workers:
            return None
        victim = self._random.choice(workers)
        try:
            victim.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            return None
        self.kills.append("ingest")
        return victim.pid

    # -- Redis and PostgreSQL -------------------------------------------------------------
    def _server(self, name: str) -> localinfra.LocalServer:
        return next(s for s in self.stack.infra if s.name == name)

    def stop_server(self, name: str) -> None:
        """Stop the stack's ``redis`` or ``postgres`` server."""
        self._server(name).stop()

    def start_server(self, name: str) -> None:
        """Start the ``redis`` or ``postgres`` server again on its port and data directory (Redis
        comes back empty: the local server keeps nothing on disk)."""
        old = self._server(name)
        new = SERVER_STARTERS[name](self.stack.var / name, old.port)
        self.stack.infra[self.stack.infra.index(old)] = new

    def flush_redis(self) -> None:
        client = redis.Redis.from_url(self.stack.cfg.redis_url, socket_timeout=5)
        try:
            client.flushall()
        finally:
            client.close()

    def postgres_processes(self) -> list[psutil.Process]:
        root = psutil.Process(self._server("postgres").pid)
        return [root, *root.children(recursive=True)]

    def signal_postgres(self, sig: int) -> int:
        """Send ``sig`` to the postmaster and every backend; returns how many got it."""
        sent = 0
        for proc in self.postgres_processes():
            try:
                proc.send_signal(sig)
                sent += 1
            except psutil.NoSuchProcess:
                pass
        return sent

    # -- the provider ---------------------------------------------------------------------
    def provider_faults(self, **fault: Any) -> None:
        requests.post(f"{self.sandbox}/sandbox/faults", json=fault, timeout=30).raise_for_status()

    def reset_provider(self) -> None:
        requests.delete(f"{self.sandbox}/sandbox/faults", timeout=30).raise_for_status()

    def provider_stats(self) -> dict[str, int]:
        answer = requests.get(f"{self.sandbox}/sandbox/stats", timeout=10)
        answer.raise_for_status()
        return dict(answer.json())

    def received_bodies(self) -> list[str]:
        """The body of every send the sandbox recorded, duplicates included."""
        answer = requests.get(f"{self.sandbox}/sandbox/messages", timeout=60)
        answer.raise_for_status()
        return [str(m["body"]) for m in answer.json()["messages"]]

    # -- webhook receivers ----------------------------------------------------------------
    def subscribe(self, receiver: str, event_types: list[str]) -> int:
        """Subscribe an endpoint pointing at the sandbox receiver ``receiver``; returns its id."""
        answer = requests.post(f"{self.api}/v1/webhook-endpoints", timeout=10,
                               headers={"Authorization": f"Bearer {self.key}"},
                               json={"url": f"{self.sandbox}/receiver/{receiver}", "event_types": event_types})
        if answer.status_code != 201:
            raise RuntimeError(f"subscribing the chaos endpoint: HTTP {answer.status_code}: {answer.text[:300]}")
        return int(answer.json()["id"])

    def receiver_requests(self, receiver: str) -> list[dict[str, Any]]:
        """Every request the receiver kept, in arrival order (headers, ``json`` body, ``status`` answered)."""
        answer = requests.get(f"{self.sandbox}/sandbox/receivers/{receiver}/requests", timeout=120)
        answer.raise_for_status()
        return list(answer.json()["requests"])

    def forget_receiver(self, receiver: str) -> None:
        """Drop what the receiver kept (it keeps a bounded number of requests)."""
        requests.delete(f"{self.sandbox}/sandbox/receivers/{receiver}", timeout=10).raise_for_status()

    # -- the database ---------------------------------------------------------------------
    def statuses(self, ids: list[int]) -> dict[int, tuple[str, str | None, str | None]]:
        """id -> (status, error_code, last_error) for the given messages."""
        conn = psycopg2.connect(self.database_url, connect_timeout=3, options="-c statement_timeout=10000")
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT id, status, error_code, last_error FROM message WHERE id = ANY(%s)", (ids,))
                return {int(r[0]): (r[1], r[2], r[3]) for r in cur.fetchall()}
        finally:
            conn.close()

    def unsettled(self, ids: list[int]) -> int | None:
        """How many of ``ids`` still wait for a stage (None while the database does not answer)."""
        try:
            conn = psycopg2.connect(self.database_url, connect_timeout=2, options="-c statement_timeout=5000")
        except psycopg2.Error:
            return None
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM message WHERE id = ANY(%s) AND status = ANY(%s)",
                            (ids, list(UNSETTLED)))
                row = cur.fetchone()
                return int(row[0]) if row else None
        except psycopg2.Error:
            return None
        finally:
            conn.close()

    def histories(self, ids: list[int], statuses: list[str]) -> dict[int, set[str]]:
        """id -> which of ``statuses`` the message's history records (each public one is an event)."""
        rows = self._query("SELECT message_id, status FROM message_event WHERE message_id = ANY(%s) AND status = ANY(%s)",
                           (ids, statuses))
        found: dict[int, set[str]] = {}
        for message_id, status in rows:
            found.setdefault(int(message_id), set()).add(status)
        return found

    def webhooks_unsettled(self, endpoint_id: int) -> int | None:
        """Events the endpoint may still get: its workspace's outbox rows not yet fanned out, and
        its deliveries pending (due now or waiting for a retry) or delivering (None while the
        database does not answer)."""
        try:
            rows = self._query(
                """SELECT (SELECT count(*) FROM outbox WHERE dispatched_at IS NULL
                             AND workspace_id = (SELECT workspace_id FROM webhook_endpoint WHERE id = %(e)s))
                        + (SELECT count(*) FROM webhook_delivery WHERE endpoint_id = %(e)s AND status = ANY(%(s)s))""",
                {"e": endpoint_id, "s": list(WEBHOOKS_UNSETTLED)}, timeout_ms=5000)
        except psycopg2.Error:
            return None
        return int(rows[0][0])

    def webhook_deliveries(self, endpoint_id: int, keys: list[tuple[int, str]]) -> dict[tuple[int, str], str]:
        """(message id, event type) -> how its delivery to the endpoint stands, for the given events."""
        rows = self._query(
            """SELECT (body::jsonb -> 'data' ->> 'id')::bigint, event_type, status, attempts, last_error
               FROM webhook_delivery WHERE endpoint_id = %s AND (body::jsonb -> 'data' ->> 'id')::bigint = ANY(%s)""",
            (endpoint_id, [mid for mid, _ in keys]))
        return {(int(r[0]), r[1]): f"{r[2]} after {r[3]} attempts" + (f" ({r[4]})" if r[4] else "") for r in rows}

    def interrupted_webhook_attempts(self, endpoint_id: int, ids: list[int]) -> int:
        """Attempts the scheduler handed back as ``interrupted``: their outcome was never recorded
        (the webhooks process died, or lost the database, after claiming them)."""
        rows = self._query(
            """SELECT count(*) FROM webhook_attempt a JOIN webhook_delivery d ON d.id = a.delivery_id
               WHERE d.endpoint_id = %s AND (d.body::jsonb -> 'data' ->> 'id')::bigint = ANY(%s)
                 AND a.error LIKE 'interrupted:%%'""", (endpoint_id, ids))
        return int(rows[0][0])

    def _query(self, sql: str, args: Any, timeout_ms: int = 30000) -> list[tuple[Any, ...]]:
        conn = psycopg2.connect(self.database_url, connect_timeout=3, options=f"-c statement_timeout={timeout_ms}")
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return list(cur.fetchall())
        finally:
            conn.close()
