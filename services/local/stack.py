"""The whole pipeline on one machine: private PostgreSQL and Redis, migrations, every service.

``postroom run`` (``make run``), the end-to-end tests and ``make bench`` all start the stack
through ``Stack``: real processes — gunicorn for ingest and the sandbox, ``postroom worker`` for
each worker service (one process per stage, serving all its lanes), the scheduler loop — with
their logs under ``<var>/log``. A private server is started only when DATABASE_URL / REDIS_URL
are not set. Stopping goes in reverse
order: services first, then Redis, then PostgreSQL.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from common.config import ROOT, Settings, load

BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Service:
    """One process group of the stack: its name, command, and the metrics port it exposes."""

    name: str
    argv: list[str]
    metrics_port: int | None = None


def worker(name: str, stage: str, metrics_port: int, *, lanes: list[str] | None = None, gevent: bool = False) -> Service:
    """``postroom worker``: one process, one Dramatiq worker per lane of ``stage`` (all by default)."""
    argv = [str(BIN / "postroom"), "worker", stage]
    if lanes:
        argv += ["--lanes", ",".join(lanes)]
    if gevent:
        argv.append("--gevent")
    return Service(name, argv, metrics_port)


def services_for(cfg: Settings) -> list[Service]:
    """Every service of the pipeline, in start order (the sandbox first, ingest last).

    One process per stage: a sender serves all its lanes, each with its own worker and
    greenlets (Kubernetes splits the sender into a Deployment per lane with ``--lanes``).
    """
    base = cfg.postroom_metrics_port_base
    return [
        Service("sandbox", [sys.executable, "-m", "services.sandbox"]),
        worker("processing", "processing", base),
        worker("routing", "routing", base + 1),
        worker("sender-sms", "sms", base + 2, gevent=True),
        Service("scheduler", [str(BIN / "postroom"), "scheduler"], base + 9),
        Service("ingest", [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "services/ingest/gunicorn_conf.py"),
                           "--no-control-socket", "services.ingest.wsgi:app"]),
    ]


def _terminate_with_parent() -> None:
    """In the child before exec: get SIGTERM if the supervisor dies without stopping us (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Stack:
    """A running local pipeline. ``env`` overrides the environment for every service."""

    env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    infra: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.cfg = load({**os.environ, **self.env})
        self.var = self.cfg.var_dir
        self.log_dir = self.var / "log"

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
        # A local run is development unless told otherwise: the built-in secret key is allowed.
        self.env["POSTROOM_ENV"] = os.environ.get("POSTROOM_ENV") or "development"
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
        log = open(self.log_dir / f"{service.name}.log", "ab")
        self.processes[service.name] = subprocess.Popen(
            service.argv, env=self.service_env(service), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_terminate_with_parent,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        urls = [f"{self.cfg.sandbox_url}/healthz", f"http://{self.cfg.postroom_api_host}:{self.cfg.postroom_api_port}/readyz"]
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

    def check_alive(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                tail = (self.log_dir / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"service {name} exited with {proc.returncode}:\n{tail}")

    def stop_service(self, name: str, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        proc = self.processes.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        # Signal the service's main process only: gunicorn's arbiter and the worker runner shut
        # their threads and children down in order; signalling the whole group cuts that short.
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything of the group that outlived its parent

    def stop(self) -> None:
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


def run_forever() -> None:
    """``postroom run``: start the stack, print how to use it, stop it cleanly on Ctrl-C."""
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
  sandbox   {cfg.sandbox_url}/sandbox/messages
  metrics   {api}/metrics, workers on 127.0.0.1:{cfg.postroom_metrics_port_base}-{cfg.postroom_metrics_port_base + 2}, scheduler on :{cfg.postroom_metrics_port_base + 9}
  logs      {stack.log_dir}/
  CLI       export $(cat {stack.var / 'stack.env'}); .venv/bin/postroom --help

Try:
  curl -s -X POST {api}/v1/messages -H "Authorization: Bearer $(cat {stack.var / 'dev-api-key'})" \\
       -H 'Content-Type: application/json' -d '{{"channel":"sms","to":"+15005550006","body":"hello"}}'

Ctrl-C stops everything.""", flush=True)
    try:
        while not stopping["now"]:
            stack.check_alive()
            time.sleep(0.5)
    finally:
        print("stopping...", flush=True)
        stack.stop()
        print("stopped.", flush=True)
