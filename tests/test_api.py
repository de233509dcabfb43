"""The HTTP API's contract: authentication, tenant isolation, validation, idempotency, cancel."""

from __future__ import annotations

import pytest

from common.db.connection import fetch, transaction

GOOD = {"channel": "sms", "to": "+15005550006", "body": "hello"}


def count_rows() -> tuple[int, int, int]:
    with transaction():
        return tuple(fetch("SELECT (SELECT count(*) FROM message), (SELECT count(*) FROM message_event), (SELECT count(*) FROM outbox)")[0])


def test_missing_or_invalid_api_key_is_401(api, workspace):
    assert api.post("/v1/messages", json=GOOD).status_code == 401
    bad = api.post("/v1/messages", json=GOOD, headers={"Authorization": "Bearer pr_nothere_xyz"})
    assert bad.status_code == 401
    assert bad.get_json()["error"]["code"] == "unauthorized"
    wrong_secret = workspace["key"].rsplit("_", 1)[0] + "_wrongsecret"
    assert api.post("/v1/messages", json=GOOD, headers={"Authorization": f"Bearer {wrong_secret}"}).status_code == 401
    assert count_rows() == (0, 0, 0)


def test_accepted_message_returns_202_with_id_and_status(api, workspace):
    response = api.post("/v1/messages", json=GOOD, headers=workspace["auth"])
    assert response.status_code == 202
    body = response.get_json()
    assert body["status"] == "accepted" and isinstance(body["id"], int)
    assert count_rows() == (1, 1, 1)


def test_another_workspaces_message_is_404(api, workspace):
    from common import apikeys

    created = api.post("/v1/messages", json=GOOD, headers=workspace["auth"]).get_json()
    with transaction():
        other_key = apikeys.issue(apikeys.create_workspace("other"))
    other = {"Authorization": f"Bearer {other_key}"}
    assert api.get(f"/v1/messages/{created['id']}", headers=other).status_code == 404
    assert api.post(f"/v1/messages/{created['id']}/cancel", headers=other).status_code == 404
    assert api.get(f"/v1/messages/{created['id']}", headers=workspace["auth"]).status_code == 200


@pytest.mark.parametrize(
    ("payload", "status", "field"),
    [
        (b"{not json", 400, "body"),
        (b"[1, 2]", 400, "body"),
        (b'{"channel": "carrier-pigeon", "to": "+15005550006", "body": "hi"}', 422, "channel"),
        (b'{"to": "+15005550006", "body": "hi"}', 422, "channel"),
        (b'{"channel": "sms", "to": "5550006", "body": "hi"}', 422, "to"),
        (b'{"channel": "sms", "to": "+0123", "body": "hi"}', 422, "to"),
        (b'{"channel": "sms", "to": "+15005550006", "body": ""}', 422, "body"),
        (b'{"channel": "sms", "to": "+15005550006", "body": "   "}', 422, "body"),
        (b'{"channel": "sms", "to": "+15005550006"}', 422, "body"),
        (b'{"channel": "sms", "to": "+15005550006", "body": "hi", "priority": "asap"}', 422, "priority"),
        (b'{"channel": "sms", "to": "+15005550006", "body": "hi", "bodyy": "typo"}', 422, "bodyy"),
    ],
)
def test_bad_input_is_rejected_naming_the_field_and_stores_nothing(api, workspace, payload, status, field):
    response = api.post("/v1/messages", data=payload, headers={**workspace["auth"], "Content-Type": "application/json"})
    assert response.status_code == status
    error = response.get_json()["error"]
    assert error["field"] == field
    assert error["message"]
    assert count_rows() == (0, 0, 0)


def test_same_idempotency_key_returns_the_same_message_once(api, workspace):
    headers = {**workspace["auth"], "Idempotency-Key": "order-42"}
    first = api.post("/v1/messages", json=GOOD, headers=headers)
    again = api.post("/v1/messages", json=GOOD, headers=headers)
    assert first.status_code == 202 and again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert first.get_json()["id"] == again.get_json()["id"]
    assert count_rows()[0] == 1


def test_idempotency_key_reused_for_a_different_message_is_409(api, workspace):
    headers = {**workspace["auth"], "Idempotency-Key": "order-43"}
    api.post("/v1/messages", json=GOOD, headers=headers)
    conflict = api.post("/v1/messages", json={**GOOD, "body": "different"}, headers=headers)
    assert conflict.status_code == 409
    assert conflict.get_json()["error"]["field"] == "Idempotency-Key"
    assert count_rows()[0] == 1


def test_cancel_before_sending_is_200_and_repeatable(api, workspace):
    created = api.post("/v1/messages", json=GOOD, headers=workspace["auth"]).get_json()
    first = api.post(f"/v1/messages/{created['id']}/cancel", headers=workspace["auth"])
    assert first.status_code == 200 and first.get_json()["status"] == "cancelled"
    assert api.post(f"/v1/messages/{created['id']}/cancel", headers=workspace["auth"]).status_code == 200
    history = [e["status"] for e in api.get(f"/v1/messages/{created['id']}", headers=workspace["auth"]).get_json()["events"]]
    assert history == ["accepted", "cancelled"]


def test_cancel_after_sending_started_is_409(api, workspace):
    created = api.post("/v1/messages", json=GOOD, headers=workspace["auth"]).get_json()
    with transaction():
        fetch("UPDATE message SET status = 'sending' WHERE id = %s", (created["id"],))
    response = api.post(f"/v1/messages/{created['id']}/cancel", headers=workspace["auth"])
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "not_cancellable"


def test_unknown_message_is_404_and_unknown_route_is_json_404(api, workspace):
    assert api.get("/v1/messages/999999", headers=workspace["auth"]).status_code == 404
    response = api.get("/v2/nothing")
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"


def test_readyz_reports_each_dependency_and_fails_when_the_broker_is_down(api, monkeypatch):
    ok = api.get("/readyz")
    assert ok.status_code == 200 and ok.get_json()["checks"] == {"database": "ok", "broker": "ok"}
    import dramatiq

    broker = dramatiq.get_broker()

    def unreachable():
        raise ConnectionError("no route to Redis")

    monkeypatch.setattr(broker.client, "ping", unreachable)
    down = api.get("/readyz")
    assert down.status_code == 503
    assert down.get_json()["checks"]["broker"].startswith("error") and down.get_json()["checks"]["database"] == "ok"
    assert api.get("/healthz").status_code == 200  # alive, just not ready
