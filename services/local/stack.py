"""The whole pipeline on one machine: private PostgreSQL and Redis, migrations, every service.

``postroom run`` (``make run``), the end-to-end tests and ``make bench`` all start the stack
through ``Stack``: real processes — gunicorn for ingest and the sandbox, ``postroom worker`` for
each worker service (one process per stage, serving all its lanes), the scheduler loop — with
their logs under ``<var>/log``. A private server is started only when DATABASE_URL / REDIS_URL
are not set. Stopping goes in reverse order: services first, then Redis, then PostgreSQL.

The stack supervises its services: one that exits is restarted after a backoff (0.5 s doubling
to 10 s), and only a service that crash-loops (more than 5 restarts within 60 s) stops the
stack. ``run_forever`` supervises in its main loop; a harness can call ``supervise_once`` or run
``start_supervisor`` in the background.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests

from common.config import ROOT, SANDBOX_WEBHOOK_SECRETS, Settings, load

BIN = Path(sys.executable).parent
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Service:
    """One process group of the stack: its name, command, and the metrics port it exposes."""

    name: str
    argv: list[str]
    metrics_port: int | None = None


def worker(name: str, stage: str, metrics_port: int, lanes: str | None = None) -> Service:
    """``postroom worker``: one process, one Dramatiq worker per lane of ``stage`` (or of ``lanes``)."""
    return Service(name, [str(BIN / "postroom"), "worker", stage, *(["--lanes", lanes] if lanes else [])], metrics_port)


def services_for(cfg: Settings) -> list[Service]:
    """Every service of the pipeline, in start order (the sandbox first, ingest last).

    One process per stage, each lane with its own worker and threads (greenlets for a sender),
    except SMS's urgent lane, which has a process of its own as in Kubernetes (a Deployment per
    lane with ``--lanes``): behind a campaign's hundreds of calls in one process, an urgent
    message's greenlet waited its turn at every step (a third of a second at the p99 on two cores).
    The AI stage likewise gives the premium plan's lane a process of its own (``ai-premium``):
    its model calls never share greenlets, connections or CPU with the pro and basic plans'.
    """
    base = cfg.postroom_metrics_port_base
    return [
        Service("sandbox", [sys.executable, "-m", "services.sandbox"]),
        worker("processing", "processing", base),
        worker("routing", "routing", base + 1),
        worker("sender-sms-urgent", "sms", base + 10, lanes="urgent"),
        worker("sender-sms", "sms", base + 2, lanes="normal,bulk"),
        worker("sender-http", "http", base + 3),
        worker("webhooks", "webhooks", base + 4),
        worker("sender-email", "email", base + 5),
        worker("sender-whatsapp-cloud", "whatsapp_cloud", base + 6),
        worker("sender-whatsapp-qr", "whatsapp_qr", base + 7),
        worker("receipts", "receipts", base + 8),
        Service("scheduler", [str(BIN / "postroom"), "scheduler"], base + 9),
        worker("ai-premium", "ai", base + 11, lanes="premium"),
        worker("ai", "ai", base + 12, lanes="pro,basic"),
        worker("sender-widget", "widget", base + 13),
        Service("widget", [str(BIN / "postroom"), "widget"]),  # metrics on its HTTP port, like ingest
        Service("ingest", [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "services/ingest/gunicorn_conf.py"),
                           "--no-control-socket", "services.ingest.wsgi:app"]),
    ]


class CrashLoop(RuntimeError):
    """A service exited too often too fast: restarting it again would not help."""


def _terminate_with_parent() -> None:
    """In the child before exec: get SIGTERM if the supervisor dies without stopping us (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def private_env(var_dir: Path | str, metrics_port_base: int, **overrides: str) -> dict[str, str]:
    """The environment of a private ``Stack`` for a test or benchmark run: its own PostgreSQL and
    Redis (whatever the calling environment says), its own sandbox as the provider, free API and
    sandbox ports, and ``overrides`` on top.

    ``metrics_port_base``: the stack uses it up to + 13. Keep it below Linux's ephemeral range
    (32768+), so that no outgoing connection holds one of its ports, and give each suite its own
    range of bases, each ``start + pid % 4000``: start 10000 for tests/test_stack_processes.py,
    10500 tests/test_campaign_e2e.py, 14500 tests/test_e2e.py, 1500 (+ pid % 3400) tests/test_widget_e2e.py, 19000 the chaos harness, 23500 the
    idle benchmark, 28000 the API benchmark; the campaign benchmark takes 27500 + pid % 490.
    """
    if not 1024 <= metrics_port_base <= 32768 - 14:
        raise ValueError(f"metrics port base {metrics_port_base} is outside 1024-32754")
    from services.local import infra as localinfra

    env = {
        "POSTROOM_VAR_DIR": str(var_dir),
        "DATABASE_URL": "",  # always private servers
        "REDIS_URL": "",
        "TWILIO_API_BASE": "",  # always this stack's own sandbox, never a real provider
        "WHATSAPP_API_BASE": "",
        "WAHA_API_BASE": "",
        "SMTP_HOST": "127.0.0.1",
        "POSTROOM_INBOUND_WORKSPACE": "dev",  # the workspace of the stack's dev key
        "POSTROOM_API_PORT": str(localinfra.free_port()),
        "POSTROOM_SANDBOX_PORT": str(localinfra.free_port()),
        "POSTROOM_SANDBOX_SMTP_PORT": str(localinfra.free_port()),
        "POSTROOM_WIDGET_PORT": str(localinfra.free_port()),
        "POSTROOM_METRICS_PORT_BASE": str(metrics_port_base),
        **overrides,
    }
    env.setdefault("POSTROOM_PUBLIC_URL", f"http://127.0.0.1:{env['POSTROOM_API_PORT']}")
    env.setdefault("SMTP_PORT", env["POSTROOM_SANDBOX_SMTP_PORT"])
    return env


@dataclass
class Stack:
    """A running local pipeline. ``env`` overrides the environment for every service.

    ``restart_backoff`` (first, most) seconds between a service's exit and its restart, doubling;
    more than ``crash_loop_restarts`` exits of one service within ``crash_loop_window`` seconds
    is a crash loop.
    """

    env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    infra: list = field(default_factory=list)
    restart_backoff: tuple[float, float] = (0.5, 10.0)
    crash_loop_restarts: int = 5
    crash_loop_window: float = 60.0

    def __post_init__(self) -> None:
        self.cfg = load({**os.environ, **self.env})
        self.var = self.cfg.var_dir
        self.log_dir = self.var / "log"
        self.services: dict[str, Service] = {}
        self.started_at: dict[str, float] = {}
        self.restarts: dict[str, int] = defaultdict(int)
        self.crashed: CrashLoop | None = None  # set when the background supervisor gave up
        self._exits: dict[str, deque[float]] = defaultdict(deque)
        self._backoff: dict[str, float] = {}
        self._due: dict[str, float] = {}  # exited services and when to restart them
        self._lock = threading.RLock()  # the supervisor thread and the harness share processes
        self._supervisor: threading.Thread | None = None
        self._stop_supervisor = threading.Event()

    # -- infrastructure -------------------------------------------------------------------
    def start_infra(self) -> None:
        from services.local import infra as localinfra

        self.log_dir.mkdir(parents=True, exist_ok=True)
        if not self.cfg.database_url:
            pg = localinfra.start_postgres(self.var / "postgres", localinfra.free_port())
            self.infra.append(pg)
            self.env["DATABASE_URL"] = pg.url
        if not self.cfg.redis_url:
            rd = localinfra.start_redis(self.var / "redis", localinfra.free_port())
            self.infra.append(rd)
            self.env["REDIS_URL"] = rd.url
        self.env["TWILIO_API_BASE"] = self.cfg.twilio_api_base or self.cfg.sandbox_url
        # Every other provider is the sandbox too, unless the environment names a real one.
        self.env["WHATSAPP_API_BASE"] = self.cfg.whatsapp_api_base or self.cfg.sandbox_url
        self.env["WAHA_API_BASE"] = self.cfg.waha_api_base or self.cfg.sandbox_url
        if "SMTP_HOST" not in os.environ and "SMTP_HOST" not in self.env:
            self.env["SMTP_PORT"] = str(self.cfg.postroom_sandbox_smtp_port)
        for name, value in SANDBOX_WEBHOOK_SECRETS.items():  # the sandbox signs with these
            self.env.setdefault(name, os.environ.get(name) or value)
        # A local run is development unless told otherwise: the built-in secret key is allowed.
        self.env["POSTROOM_ENV"] = os.environ.get("POSTROOM_ENV") or "development"
        # Webhook endpoints and the http channel may reach this machine's own receivers (the sandbox).
        self.env.setdefault("POSTROOM_WEBHOOK_ALLOWED_NETWORKS",
                            os.environ.get("POSTROOM_WEBHOOK_ALLOWED_NETWORKS") or "127.0.0.0/8,::1/128")
        # A chatbot's model may be this machine's own (the sandbox's OpenAI imitation, a local Ollama).
        self.env.setdefault("POSTROOM_AI_ALLOWED_NETWORKS", os.environ.get("POSTROOM_AI_ALLOWED_NETWORKS") or "127.0.0.0/8,::1/128")
        self.cfg = load({**os.environ, **self.env})
        # For `postroom` commands in another terminal: `export $(cat var/stack.env)`.
        (self.var / "stack.env").write_text(f"DATABASE_URL={self.cfg.database_url}\nREDIS_URL={self.cfg.redis_url}\n"
                                            f"POSTROOM_ENV={self.cfg.postroom_env}\n")

    def migrate_and_seed(self) -> str:
        """Apply migrations and make sure the `dev` workspace has a valid key in <var>/dev-api-key.

        Both run as ``postroom`` commands in their own processes, as an operator would run them,
        so this supervisor holds no database connection of its own.
        """
        env = {**os.environ, **self.env}
        for command in (["migrate"], ["devkey", "--file", str(self.var / "dev-api-key")]):
            subprocess.run([str(BIN / "postroom"), *command], env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        return (self.var / "dev-api-key").read_text().strip()

    # -- services -------------------------------------------------------------------------
    def service_env(self, service: Service) -> dict[str, str]:
        env = {**os.environ, **self.env, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        metrics_dir = self.var / "metrics" / service.name
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        if service.metrics_port is not None:
            env.update(dramatiq_prom_db=str(metrics_dir), dramatiq_prom_port=str(service.metrics_port),
                       dramatiq_prom_host=self.cfg.postroom_metrics_host)
        return env

    def start_services(self, only: list[str] | None = None) -> None:
        for service in services_for(self.cfg):
            if only is None or service.name in only:
                self.start_service(service)

    def start_service(self, service: Service) -> None:
        with self._lock:
            log_file = open(self.log_dir / f"{service.name}.log", "ab")
            self.services[service.name] = service
            self._due.pop(service.name, None)
            self.started_at[service.name] = time.monotonic()
            self.processes[service.name] = subprocess.Popen(
                service.argv, env=self.service_env(service), cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_terminate_with_parent,
            )
            log_file.close()  # the child has its own copy

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        urls = [f"{self.cfg.sandbox_url}/healthz", f"http://{self.cfg.postroom_api_host}:{self.cfg.postroom_api_port}/readyz"]
        if "widget" in self.processes:
            urls.append(f"{self.widget_url}/healthz")
        for url in urls:
            while True:
                self.check_alive()
                try:
                    if requests.get(url, timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{url} did not become ready in {timeout:.0f}s; see logs in {self.log_dir}")
                time.sleep(0.2)

    @property
    def widget_url(self) -> str:
        """The widget service: a workspace's chat page is ``<widget_url>/widget/<inbox_key>``."""
        return f"http://{self.cfg.postroom_widget_host}:{self.cfg.postroom_widget_port}"

    def check_alive(self) -> None:
        """Fail fast during start-up: any service that exited is an error (no restart)."""
        for name, proc in list(self.processes.items()):
            if proc.poll() is not None:
                raise RuntimeError(f"service {name} exited with {proc.returncode}:\n{self.log_tail(name)}")

    def log_tail(self, name: str, size: int = 3000) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace")[-size:] if path.exists() else ""

    # -- supervision ----------------------------------------------------------------------
    def supervise_once(self) -> list[str]:
        """One supervision pass: note services that exited, restart those whose backoff is over.

        Returns the services restarted in this pass. Raises ``CrashLoop`` when a service exited
        more than ``crash_loop_restarts`` times within ``crash_loop_window`` seconds.
        """
        restarted = []
        with self._lock:
            now = time.monotonic()
            for name, proc in list(self.processes.items()):
                if name not in self._due and proc.poll() is not None:
                    self._note_exit(name, proc, now)
            for name, due in list(self._due.items()):
                if now >= due:
                    self.start_service(self.services[name])
                    restarted.append(name)
        return restarted

    def _note_exit(self, name: str, proc: subprocess.Popen[bytes], now: float) -> None:
        _kill_group(proc.pid)  # children the service left behind (gunicorn workers, say)
        exits = self._exits[name]
        exits.append(now)
        while exits and exits[0] < now - self.crash_loop_window:
            exits.popleft()
        if len(exits) > self.crash_loop_restarts:
            raise CrashLoop(f"service {name} exited with {proc.returncode} {len(exits)} times within "
                            f"{self.crash_loop_window:g}s; giving up. Its log ends:\n{self.log_tail(name)}")
        first, most = self.restart_backoff
        if now - self.started_at.get(name, now) > self.crash_loop_window:
            self._backoff[name] = first  # it ran well for a while: start over with a short wait
        delay = self._backoff.get(name, first)
        self._backoff[name] = min(delay * 2, most)
        self.restarts[name] += 1
        self._due[name] = now + delay
        self._announce(f"service {name} exited with {proc.returncode}; restarting in {delay:g}s (restart {self.restarts[name]})")

    def _announce(self, line: str) -> None:
        """Printed for whoever watches `make run`, and kept in the log directory."""
        log.warning(line)
        print(line, flush=True)
        with open(self.log_dir / "supervisor.log", "a") as out:
            out.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")

    def start_supervisor(self, interval: float = 0.5) -> None:
        """Supervise in a background thread until ``stop_supervisor``/``stop`` (for harnesses).

        A crash loop ends the thread and is left in ``crashed`` for the harness to act on.
        """
        if self._supervisor is not None:
            return
        self._stop_supervisor.clear()

        def loop() -> None:
            while not self._stop_supervisor.wait(interval):
                try:
                    self.supervise_once()
                except CrashLoop as exc:
                    self.crashed = exc
                    self._announce(str(exc).splitlines()[0])
                    return

        self._supervisor = threading.Thread(target=loop, name="stack-supervisor", daemon=True)
        self._supervisor.start()

    def supervise(self, should_stop: Callable[[], bool], interval: float = 0.5) -> int:
        """Supervise in this thread until ``should_stop()`` (0) or a crash loop (1), then stop
        everything. A crash loop is printed with the service's log tail."""
        status = 0
        try:
            while not should_stop():
                try:
                    self.supervise_once()
                except CrashLoop as exc:
                    print(exc, flush=True)
                    status = 1
                    break
                time.sleep(interval)
        finally:
            print("stopping...", flush=True)
            self.stop()
            print("stopped.", flush=True)
        return status

    def stop_supervisor(self) -> None:
        if self._supervisor is not None:
            self._stop_supervisor.set()
            self._supervisor.join()
            self._supervisor = None

    def stop_service(self, name: str, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Stop a service on purpose: the supervisor does not restart it."""
        with self._lock:
            proc = self.processes.pop(name, None)
            self._due.pop(name, None)
        if proc is None or proc.poll() is not None:
            if proc is not None:
                _kill_group(proc.pid)
            return
        # Signal the service's main process only: gunicorn's arbiter and the worker runner shut
        # their threads and children down in order; signalling the whole group cuts that short.
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        _kill_group(proc.pid)  # anything of the group that outlived its parent

    def stop(self) -> None:
        self.stop_supervisor()
        for name in reversed(list(self.processes)):
            self.stop_service(name)
        for server in reversed(self.infra):
            server.stop()
        self.infra.clear()

    def start(self) -> str:
        """Start everything and return the dev API key."""
        try:
            self.start_infra()
            key = self.migrate_and_seed()
            self.start_services()
            self.wait_ready()
            return key
        except BaseException:
            self.stop()
            raise

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def run_forever() -> None:
    """``postroom run``: start the stack, print how to use it, restart services that exit, stop
    cleanly on Ctrl-C/SIGTERM; exit non-zero when a service crash-loops."""
    stack = Stack()
    stopping = {"now": False}

    def request_stop(*_: object) -> None:
        stopping["now"] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    key = stack.start()
    cfg = stack.cfg
    api = f"http://{cfg.postroom_api_host}:{cfg.postroom_api_port}"
    print(f"""
postroom is running.
  API       {api}        (key in {stack.var / 'dev-api-key'})
  API key   {key}
  widget    {stack.widget_url}/widget/INBOX_KEY   (PUT /v1/channels/widget gives the key and the embed snippet)
  sandbox   {cfg.sandbox_url}/sandbox/inbox   (webhook receivers: {cfg.sandbox_url}/receiver/NAME)
  metrics   {api}/metrics and {stack.widget_url}/metrics, workers on 127.0.0.1:{cfg.postroom_metrics_port_base}-{cfg.postroom_metrics_port_base + 8} and :{cfg.postroom_metrics_port_base + 10}-{cfg.postroom_metrics_port_base + 13}, scheduler on :{cfg.postroom_metrics_port_base + 9}
  logs      {stack.log_dir}/
  CLI       export $(cat {stack.var / 'stack.env'}); .venv/bin/postroom --help

Try:
  curl -s -X POST {api}/v1/messages -H "Authorization: Bearer $(cat {stack.var / 'dev-api-key'})" \\
       -H 'Content-Type: application/json' -d '{{"channel":"sms","to":"+15005550006","body":"hello"}}'

A service that exits is restarted (see {stack.log_dir / 'supervisor.log'}).
Ctrl-C stops everything.""", flush=True)
    status = stack.supervise(lambda: stopping["now"])
    if status:
        sys.exit(status)
