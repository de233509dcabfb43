"""Webhook delivery in this process against the session's database, broker and sandbox receivers:
the SSRF guard at creation and at dial time, what events cost, the disable window, and the
scheduler's webhook duties."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import requests

from common import crypto, events, lifecycle, signing
from common.config import settings
from common.db.connection import DatabaseUnavailable, fetch, fetch_dicts, transaction
from common.providers import config as channel_config
from services.scheduler import webhooks as duties
from services.webhooks import delivery, fanout

PRIVATE_NAME = "crm.internal.example"


@pytest.fixture
def no_loopback(monkeypatch) -> None:
    """Deployment settings: only public addresses may be reached (what production runs with)."""
    from services.ingest import webhook_api

    strict = replace(settings, postroom_webhook_allowed_networks="")
    monkeypatch.setattr(webhook_api, "settings", strict)
    monkeypatch.setattr(delivery, "settings", strict)  # its session is the one for these networks: none
    real = socket.getaddrinfo

    def resolve(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == PRIVATE_NAME:  # a name whose DNS answer is a private address
            return real("10.20.30.40", *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)


@pytest.fixture
def listener() -> Iterator[dict[str, Any]]:
    """A TCP server on 127.0.0.1 that counts every connection it accepts."""
    server = socket.create_server(("127.0.0.1", 0))
    seen = {"port": server.getsockname()[1], "connections": 0}

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            seen["connections"] += 1
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    yield seen
    server.close()


def refused_urls(port: int) -> list[str]:
    return [f"http://127.0.0.1:{port}/hook", "http://10.0.0.1/hook", "http://169.254.169.254/latest/meta-data/",
            f"http://[::ffff:127.0.0.1]:{port}/hook", f"http://{PRIVATE_NAME}:{port}/hook"]


def test_internal_addresses_are_refused_at_creation(api, workspace, no_loopback, listener):
    for url in refused_urls(listener["port"]):
        response = api.post("/v1/webhook-endpoints", json={"url": url, "event_types": ["*"]}, headers=workspace["auth"])
        assert response.status_code == 422, url
        error = response.get_json()["error"]
        assert error["field"] == "url" and "refused" in error["message"], error
    with transaction():
        assert fetch("SELECT count(*) FROM webhook_endpoint")[0][0] == 0
    assert listener["connections"] == 0


def endpoint_row(workspace_id: int, url: str, event_types: tuple[str, ...] = ("*",), **columns: Any) -> int:
    """An endpoint stored directly, as if its URL had passed the check and DNS changed since."""
    names = ", ".join(columns)
    values = "".join(f", %({k})s" for k in columns)
    with transaction():
        return fetch(f"INSERT INTO webhook_endpoint (workspace_id, url, event_types, secret{', ' + names if names else ''})"
                     f" VALUES (%(ws)s, %(url)s, %(types)s, %(secret)s{values}) RETURNING id",
                     {"ws": workspace_id, "url": url, "types": list(event_types),
                      "secret": crypto.seal({"secret": signing.new_secret()}), **columns})[0][0]


def delivery_row(workspace_id: int, endpoint_id: int, event_type: str = "message.sent") -> int:
    body = events.body(event_type, {"id": 1})
    with transaction():
        return fetch("INSERT INTO webhook_delivery (endpoint_id, workspace_id, event_key, event_type, body)"
                     " VALUES (%s, %s, 'evt_test', %s, %s) RETURNING id", (endpoint_id, workspace_id, event_type, body))[0][0]


def deliveries(endpoint_id: int) -> list[dict[str, Any]]:
    with transaction():
        return fetch_dicts("SELECT d.*, (SELECT array_agg(error ORDER BY id) FROM webhook_attempt a WHERE a.delivery_id = d.id)"
                           " AS errors FROM webhook_delivery d WHERE endpoint_id = %s ORDER BY id", (endpoint_id,))


def test_internal_addresses_are_refused_again_at_dial_time(workspace, no_loopback, listener, broker):
    for url in refused_urls(listener["port"]):
        endpoint_id = endpoint_row(workspace["id"], url)
        delivery_row(workspace["id"], endpoint_id)
        delivery.work_endpoint(endpoint_id, "urgent")
        [row] = deliveries(endpoint_id)
        assert row["status"] == "pending" and row["failures"] == 1, url  # the next step of the schedule
        assert row["errors"][0].startswith("refused: ") and "address" in row["errors"][0], row["errors"]
    assert listener["connections"] == 0  # no request left for any of them


def test_a_claim_that_fails_gives_its_call_slots_back(workspace, sandbox, broker, monkeypatch):
    # Given an endpoint with a delivery, and PostgreSQL gone just as the loop claims it
    requests.put(f"{sandbox.url}/sandbox/receivers/slots", json={}, timeout=5).raise_for_status()
    endpoint_id = endpoint_row(workspace["id"], f"{sandbox.url}/receiver/slots")
    delivery_row(workspace["id"], endpoint_id)
    free = delivery._calls._value  # type: ignore[attr-defined]

    def gone(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        raise DatabaseUnavailable("database unavailable: Connection refused")

    with monkeypatch.context() as patched:
        patched.setattr(delivery, "claim", gone)
        with pytest.raises(DatabaseUnavailable):
            delivery.work_endpoint(endpoint_id, "urgent")
    # Then the process's call slots are all free again, and the next run delivers
    assert delivery._calls._value == free  # type: ignore[attr-defined]
    delivery.work_endpoint(endpoint_id, "urgent")
    assert [d["status"] for d in deliveries(endpoint_id)] == ["succeeded"]


def test_the_guard_lets_configured_networks_through(workspace, sandbox, broker):
    requests.put(f"{sandbox.url}/sandbox/receivers/local", json={}, timeout=5).raise_for_status()
    endpoint_id = endpoint_row(workspace["id"], f"{sandbox.url}/receiver/local")
    delivery_row(workspace["id"], endpoint_id)
    delivery.work_endpoint(endpoint_id, "urgent")  # the session's settings allow 127.0.0.0/8
    assert [d["status"] for d in deliveries(endpoint_id)] == ["succeeded"]


def outbox() -> list[str]:
    with transaction():
        return [r[0] for r in fetch("SELECT event_type FROM outbox ORDER BY id")]


def move_through_every_status(workspace_id: int) -> None:
    with transaction():
        message_id = fetch("INSERT INTO message (workspace_id, channel, to_addr, body, status) VALUES (%s, 'sms', '+15005550006',"
                           " 'x', 'accepted') RETURNING id", (workspace_id,))[0][0]
        for before, after in [("accepted", "queued"), ("queued", "routed"), ("routed", "sending"), ("sending", "sent"),
                              ("sent", "delivered")]:
            assert lifecycle.advance([message_id], [before], after)


def test_events_cost_a_row_only_when_an_endpoint_wants_them(workspace, broker):
    move_through_every_status(workspace["id"])
    assert outbox() == []  # no endpoint: no event rows at all
    endpoint_row(workspace["id"], "https://hooks.example.com/failed", ("message.failed",))
    move_through_every_status(workspace["id"])
    assert outbox() == []  # an endpoint that wants only failures: nothing for a delivered message
    endpoint_row(workspace["id"], "https://hooks.example.com/all", ("*",), enabled=False)
    move_through_every_status(workspace["id"])
    assert outbox() == []  # a disabled endpoint wants nothing
    endpoint_row(workspace["id"], "https://hooks.example.com/all", ("*",))
    move_through_every_status(workspace["id"])
    assert outbox() == ["message.sent", "message.delivered"]  # internal steps are never events
    taken, kicked = fanout.fan_out_once()
    assert taken == 2 and len(kicked) == 1 and outbox() == []  # each wanted by one endpoint, then gone from the outbox


def test_an_endpoint_failing_past_the_window_is_disabled_and_an_event_says_so(workspace, sandbox, broker):
    requests.put(f"{sandbox.url}/sandbox/receivers/down", json={"status": 500}, timeout=5).raise_for_status()
    watcher = endpoint_row(workspace["id"], f"{sandbox.url}/receiver/watcher", ("webhook_endpoint.disabled",))
    failing = endpoint_row(workspace["id"], f"{sandbox.url}/receiver/down")
    delivery_row(workspace["id"], failing)
    later = delivery_row(workspace["id"], failing)
    with transaction():
        fetch("UPDATE webhook_delivery SET due_at = now() + interval '1 hour' WHERE id = %s", (later,))
        fetch("UPDATE webhook_endpoint SET failing_since = now() - %s * interval '1 hour' WHERE id = %s",
              (settings.postroom_webhook_disable_after_hours + 1, failing))
    delivery.work_endpoint(failing, "urgent")
    with transaction():
        enabled, reason = fetch("SELECT enabled, disabled_reason FROM webhook_endpoint WHERE id = %s", (failing,))[0]
    assert not enabled and "no successful delivery" in reason
    assert [d["status"] for d in deliveries(failing)] == ["failed", "failed"]  # the pending one too
    assert outbox() == ["webhook_endpoint.disabled"]
    fanout.fan_out()
    assert [d["event_type"] for d in deliveries(watcher)] == ["webhook_endpoint.disabled"]


def test_a_failure_inside_the_window_only_starts_it(workspace, sandbox, broker):
    requests.put(f"{sandbox.url}/sandbox/receivers/blip", json={"codes": [500]}, timeout=5).raise_for_status()
    endpoint_id = endpoint_row(workspace["id"], f"{sandbox.url}/receiver/blip")
    delivery_row(workspace["id"], endpoint_id)
    delivery.work_endpoint(endpoint_id, "urgent")
    with transaction():
        enabled, failing_since = fetch("SELECT enabled, failing_since FROM webhook_endpoint WHERE id = %s", (endpoint_id,))[0]
    assert enabled and failing_since is not None
    with transaction():
        fetch("UPDATE webhook_delivery SET due_at = now()")
    delivery.work_endpoint(endpoint_id, "urgent")
    with transaction():
        assert fetch("SELECT failing_since FROM webhook_endpoint WHERE id = %s", (endpoint_id,))[0][0] is None  # a success clears it


def test_scheduler_kicks_due_work_releases_dead_attempts_and_cleans_up(workspace, broker):
    endpoint_id = endpoint_row(workspace["id"], "https://hooks.example.com/x")
    due, stuck, old, paused_delivery = (delivery_row(workspace["id"], endpoint_id) for _ in range(4))
    paused = endpoint_row(workspace["id"], "https://hooks.example.com/p", paused_until="tomorrow")
    with transaction():
        fetch("UPDATE webhook_delivery SET status = 'delivering', claimed_at = now() - interval '1 hour' WHERE id = %s", (stuck,))
        fetch("UPDATE webhook_delivery SET status = 'succeeded', created_at = now() - %s * interval '1 hour' WHERE id = %s",
              (settings.postroom_webhook_retention_hours + 1, old))
        fetch("UPDATE webhook_delivery SET endpoint_id = %s WHERE id = %s", (paused, paused_delivery))
    broker.flush_all()
    assert duties.kick_due() == 1  # the paused endpoint waits for its time
    assert broker.client.llen("dramatiq:webhooks_bulk") == 1  # rank 1: the bulk lane
    assert duties.release_stuck() == 1
    assert duties.clean_up(force=True) == 1
    with transaction():
        rows = dict(fetch("SELECT id, status FROM webhook_delivery"))
    assert rows == {due: "pending", stuck: "pending", paused_delivery: "pending"}
    assert duties.measure_lag() >= 0


def test_the_api_accepts_exactly_the_events_postroom_writes():
    from services.ingest.models import EventType

    assert set(EventType.__args__) == {events.ALL, *events.EVENT_TYPES}


def test_custom_headers_cannot_replace_the_signature_or_break_the_request(api, workspace):
    for name in ("webhook-signature", "X-Webhook-Attempt", "Host", "content-length"):
        response = api.post("/v1/webhook-endpoints", headers=workspace["auth"],
                            json={"url": "https://hooks.example.com/x", "event_types": ["*"], "headers": {name: "x"}})
        assert response.status_code == 422 and response.get_json()["error"]["field"] == "headers", name


def test_a_disabled_endpoint_is_sent_nothing_until_enabled_again(api, workspace, broker):
    endpoint_id = endpoint_row(workspace["id"], "https://hooks.example.com/x")
    waiting = delivery_row(workspace["id"], endpoint_id)
    off = api.patch(f"/v1/webhook-endpoints/{endpoint_id}", json={"enabled": False}, headers=workspace["auth"])
    assert off.status_code == 200 and off.get_json()["enabled"] is False
    assert [(d["id"], d["status"]) for d in deliveries(endpoint_id)] == [(waiting, "failed")]
    for path in (f"/v1/webhook-endpoints/{endpoint_id}/test", f"/v1/webhook-deliveries/{waiting}/replay"):
        refused = api.post(path, headers=workspace["auth"])
        assert refused.status_code == 409 and refused.get_json()["error"]["code"] == "endpoint_disabled", path
    assert len(deliveries(endpoint_id)) == 1  # nothing queued for it
    assert duties.measure_lag() == 0
    on = api.patch(f"/v1/webhook-endpoints/{endpoint_id}", json={"enabled": True}, headers=workspace["auth"])
    assert on.get_json()["enabled"] is True and on.get_json()["disabled_reason"] is None
    assert api.post(f"/v1/webhook-deliveries/{waiting}/replay", headers=workspace["auth"]).status_code == 202
    assert [d["status"] for d in deliveries(endpoint_id)] == ["failed", "pending"]


def test_an_http_message_needs_the_channel_configured_and_no_sender(api, workspace):
    new = {"channel": "http", "to": "contact-1", "body": "hello"}
    unconfigured = api.post("/v1/messages", json=new, headers=workspace["auth"])
    assert unconfigured.status_code == 422 and unconfigured.get_json()["error"]["field"] == "channel"
    with transaction():  # as the API and the CLI store it (the cache of "not configured" is dropped too)
        channel_config.save(workspace["id"], "http", "http", f"ws{workspace['id']}", {"secret": signing.new_secret()},
                            "https://crm.example.com/hook", 0.0)
    with_from = api.post("/v1/messages", json={**new, "from": "+15005550006"}, headers=workspace["auth"])
    assert with_from.status_code == 422 and with_from.get_json()["error"]["field"] == "from"
    assert api.post("/v1/messages", json=new, headers=workspace["auth"]).status_code == 202
    sms_to_a_name = api.post("/v1/messages", json={**new, "channel": "sms"}, headers=workspace["auth"])
    assert sms_to_a_name.status_code == 422 and sms_to_a_name.get_json()["error"]["field"] == "to"


def test_an_endpoint_rate_limit_spaces_its_deliveries(workspace, sandbox, broker):
    requests.put(f"{sandbox.url}/sandbox/receivers/paced", json={}, timeout=5).raise_for_status()
    endpoint_id = endpoint_row(workspace["id"], f"{sandbox.url}/receiver/paced", rate_limit_per_second=2.0)
    for _ in range(6):
        delivery_row(workspace["id"], endpoint_id)
    delivery.work_endpoint(endpoint_id, "urgent")
    arrived = [r["at"] for r in requests.get(f"{sandbox.url}/sandbox/receivers/paced/requests", timeout=5).json()["requests"]]
    assert len(arrived) == 6 and all(d["status"] == "succeeded" for d in deliveries(endpoint_id))
    assert arrived[-1] - arrived[0] >= 1.5  # a burst of 2, then 2 a second: the last 4 wait about 2 s
