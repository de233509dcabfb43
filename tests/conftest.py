"""The test session's real infrastructure: a private PostgreSQL, Redis and provider sandbox.

They start before any postroom module is imported, because settings are read from the
environment at import time; every test then talks to real servers on 127.0.0.1. Nothing is
skipped when they cannot start: the session fails instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
_state: dict = {}


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput") or _state:
        return
    from services.local import infra as localinfra  # imports nothing that reads settings

    base = Path(tempfile.mkdtemp(prefix="postroom-test-"))
    pg = localinfra.start_postgres(base / "postgres", localinfra.free_port(), durable=False)  # a throw-away cluster
    rd = localinfra.start_redis(base / "redis", localinfra.free_port())
    sandbox_port = localinfra.free_port()
    smtp_port = localinfra.free_port()
    api_port = localinfra.free_port()
    _state.update(base=base, pg=pg, redis=rd)
    os.environ.update(
        DATABASE_URL=pg.url,
        REDIS_URL=rd.url,
        POSTROOM_VAR_DIR=str(base / "var"),
        POSTROOM_SANDBOX_PORT=str(sandbox_port),
        POSTROOM_API_PORT=str(api_port),
        POSTROOM_PUBLIC_URL=f"http://127.0.0.1:{api_port}",
        TWILIO_API_BASE=f"http://127.0.0.1:{sandbox_port}",
        WHATSAPP_API_BASE=f"http://127.0.0.1:{sandbox_port}",
        WAHA_API_BASE=f"http://127.0.0.1:{sandbox_port}",
        POSTROOM_SANDBOX_SMTP_PORT=str(smtp_port),
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=str(smtp_port),
        POSTROOM_INBOUND_WORKSPACE="acme",
        EMAIL_WEBHOOK_SECRET="whsec_c2FuZGJveC1lbWFpbC13ZWJob29rLXNlY3JldA==",  # the sandbox's (common.config)
        WHATSAPP_APP_SECRET="sandbox-app-secret",
        WHATSAPP_VERIFY_TOKEN="sandbox-verify-token",
        WAHA_WEBHOOK_SECRET="sandbox-waha-hmac-key",  # the workspace fixture's: inbound to the default accounts lands there
        POSTROOM_RETRY_BASE_SECONDS="0.2",
        POSTROOM_RETRY_MAX_SECONDS="2",
        POSTROOM_STAGE_DEADLINE_SECONDS="2",
        POSTROOM_SENDING_TIMEOUT_SECONDS="5",
        POSTROOM_LOG_LEVEL="WARNING",
        POSTROOM_ENV="development",
        POSTROOM_PROVIDER_TIMEOUT_SECONDS="3",
        POSTROOM_WEBHOOK_ALLOWED_NETWORKS="127.0.0.0/8,::1/128",
        POSTROOM_AI_ALLOWED_NETWORKS="127.0.0.0/8,::1/128",
        POSTROOM_WEBHOOK_RETRY_SCHEDULE="0,1,1,1,2",
        POSTROOM_WEBHOOK_TIMEOUT_SECONDS="3",
    )
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    from common.db.connection import connect_database, db
    from common.db.migrate import apply_migrations

    connect_database(pg.url, max_connections=64)
    apply_migrations()
    db.close()


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop everything the session started, each step independent of the others' failures."""
    server = _state.pop("ingest_server", None)
    if server is not None:
        server.shutdown()
    proc = _state.pop("sandbox_proc", None)
    if proc is not None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    for key in ("redis", "pg"):
        infra = _state.pop(key, None)
        if infra is not None:
            try:
                infra.stop()
            except Exception as exc:  # keep stopping the rest; say what was left behind
                print(f"could not stop the test {key} server: {exc}")
    base = _state.pop("base", None)
    if base is not None:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def sandbox_url() -> Iterator[str]:
    """The provider sandbox as a real gunicorn process, shared by the session."""
    port = os.environ["POSTROOM_SANDBOX_PORT"]
    log = open(_state["base"] / "sandbox.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "services.sandbox"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    _state["sandbox_proc"] = proc
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(f"{url}/healthz", timeout=1).ok:
                break
        except requests.RequestException:
            pass
        assert proc.poll() is None, (_state["base"] / "sandbox.log").read_text()[-2000:]
        assert time.monotonic() < deadline, "sandbox did not start"
        time.sleep(0.1)
    yield url


@pytest.fixture(scope="session")
def ingest_url(broker) -> str:
    """The ingest app served over real HTTP in this process, so provider callbacks reach it."""
    import threading

    from werkzeug.serving import make_server

    from services.ingest.app import create_app

    server = make_server("127.0.0.1", int(os.environ["POSTROOM_API_PORT"]), create_app(), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _state["ingest_server"] = server
    return os.environ["POSTROOM_PUBLIC_URL"]


@pytest.fixture
def sandbox(sandbox_url: str, ingest_url: str) -> Iterator[Any]:
    from tests.support import Sandbox

    box = Sandbox(sandbox_url)
    box.reset()
    yield box
    box.reset()


@pytest.fixture(scope="module", autouse=True)
def no_consumer_left_running() -> Iterator[None]:
    """A module leaves no Dramatiq consumer thread running: a leaked one polls its queue for the
    rest of the session and takes the CPU that timing-sensitive tests later need."""
    yield
    from tests.support import live_consumer_threads, wait_for

    wait_for(lambda: not live_consumer_threads(), timeout=10,
             what=f"consumer threads to stop: {[t.queue_name for t in live_consumer_threads()]}")


@pytest.fixture(scope="session")
def broker():
    """The real Redis broker with every stage's actors declared, as the workers have them."""
    import common.broker as broker_module
    import services.ingest.actors  # noqa: F401
    import services.processing.actors  # noqa: F401
    import services.processing.ai_actors  # noqa: F401
    import services.routing.actors  # noqa: F401
    import services.senders.email.actors  # noqa: F401
    import services.senders.http.actors  # noqa: F401
    import services.senders.sms.actors  # noqa: F401
    import services.senders.whatsapp_cloud.actors  # noqa: F401
    import services.senders.whatsapp_qr.actors  # noqa: F401
    import services.senders.widget.actors  # noqa: F401
    import services.webhooks.actors  # noqa: F401

    broker_module.broker.emit_after("process_boot")
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)  # Dramatiq's middleware sets it for workers
    os.environ.pop("prometheus_multiproc_dir", None)
    return broker_module.broker


@pytest.fixture
def clean_db(broker) -> Iterator[None]:
    """Empty tables and queues before a test, so its assertions see only its own rows."""
    from common.db.connection import db, fetch, transaction

    with transaction():
        fetch("TRUNCATE message, message_event, provider_event, outbox, webhook_attempt, webhook_delivery, webhook_endpoint,"
              " channel_config, conversation, suppression, channel_session, campaign_tally, usage_log, ai_reservation, api_key,"
              " workspace RESTART IDENTITY CASCADE")
    broker.flush_all()
    broker.client.flushall()
    from common.providers.accounts import forget_cached_accounts

    forget_cached_accounts()  # workspace ids restart at 1 in every test
    yield
    db.close()


@pytest.fixture
def workspace(clean_db) -> dict:
    """A workspace and an API key for it."""
    from common import apikeys
    from common.db.connection import transaction

    with transaction():
        ws = apikeys.create_workspace("acme")
        key = apikeys.issue(ws)
    return {"id": ws, "key": key, "auth": {"Authorization": f"Bearer {key}"}}


@pytest.fixture
def api(broker):
    from services.ingest.app import create_app

    app = create_app()
    app.testing = True
    return app.test_client()
