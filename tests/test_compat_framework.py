"""The compatibility routes' shared framework (issue 12, Done 5): the API key in ``Authorization:
Bearer`` or ``x-api-key``; identity fields (``workspaceId``, ``x-user-id``) must name the key's own
workspace, else 403 before anything is read or written; every refusal in the old clients' shape
``{"success": false, "error", "code", "field"?}``; every compat operation in /openapi.json under the
``compat`` tag with ``CompatError`` as its error body.

The mechanics are checked on a small probe blueprint declared here (the way a seed system's module
declares its routes), the identity check also on the real routes that carry an identity field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Response, g, request
from pydantic import BaseModel, ConfigDict, StrictStr

from common.db.connection import DatabaseUnavailable, fetch, transaction

PROBE = "/api/_probe"
GOOD_TO = "+15005550006"


class ProbeSend(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    to: StrictStr
    workspaceId: StrictStr | None = None  # noqa: N815 - the old clients' name


class ProbeQueue(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    scheduleTime: StrictStr | None = None  # noqa: N815


class ProbeAnswer(BaseModel):
    success: bool


@pytest.fixture(scope="module")
def probe() -> Iterator[Any]:
    """A compat blueprint with four routes, declared as a seed system's module declares its own."""
    from services.ingest import api as v1
    from services.ingest import contract, probes
    from services.ingest.compat import framework
    from services.ingest.contract import Body
    from services.ingest.models import NewMessage

    bp = framework.blueprint("compat_probe", __name__, url_prefix=PROBE)
    ok = {200: Body(ProbeAnswer, "Done.")}

    @framework.compat_operation(bp, "POST", "/send", summary="Probe: send", scope="messages:write", request=ProbeSend,
                                ok=ok, errors=(403, 409), rerun_safe=True)
    def probe_send(body: ProbeSend) -> tuple[Response, int]:
        framework.check_identity(body.workspaceId, field="workspaceId")
        held = g.get("idempotency")
        answer, status = v1.accept_one(g.workspace_id, NewMessage.model_validate({"channel": "sms", "to": body.to, "body": "probe"}),
                                       held.key if held is not None else None)
        return framework.success(id=answer["id"], accepted=status == 202)

    @framework.compat_operation(bp, "GET", "/whoami", summary="Probe: who", scope="messages:read", ok=ok, errors=(403,))
    def probe_whoami() -> tuple[Response, int]:
        framework.check_identity(request.headers.get("x-user-id"), field="x-user-id")
        return framework.success(workspace=g.workspace_id)

    @framework.compat_operation(bp, "POST", "/queue", summary="Probe: optional body", scope="messages:write",
                                request=ProbeQueue, ok=ok, body_optional=True)
    def probe_queue(body: ProbeQueue) -> tuple[Response, int]:
        return framework.success(scheduleTime=body.scheduleTime)

    @framework.compat_operation(bp, "GET", "/fail/{kind}", summary="Probe: failures", scope="messages:read", ok=ok,
                                text_params={"kind": {"enum": ["crash", "database"]}})
    def probe_fail(kind: str) -> tuple[Response, int]:
        if kind == "database":
            raise DatabaseUnavailable("probe: the database went away")
        raise RuntimeError("probe: a bug")

    probes._document.cache_clear()  # /openapi.json is generated once a process: again, with the probe routes
    yield bp
    for path in ("/send", "/whoami", "/queue", "/fail/{kind}"):
        for method in ("GET", "POST"):
            contract.REGISTRY.pop((method, PROBE + path), None)
    probes._document.cache_clear()


@pytest.fixture
def client(probe: Any, broker: Any) -> Any:
    """The real app (every compat route and handler) with the probe routes added; not in testing
    mode, so an unexpected exception is answered by the app's 500 handler as in production."""
    from services.ingest.app import create_app

    app = create_app()
    app.register_blueprint(probe)
    return app.test_client()


@pytest.fixture
def tenants(workspace: dict) -> dict[str, Any]:
    """The caller's workspace ("acme", alias ws_123) and another one ("other", alias ws_other)."""
    from common import apikeys

    with transaction():
        other = apikeys.create_workspace("other")
        other_key = apikeys.issue(other)
    return {"mine": workspace, "other": {"id": other, "key": other_key, "auth": {"Authorization": f"Bearer {other_key}"}}}


def set_identities(client: Any, auth: dict[str, str], names: list[str]) -> Any:
    return client.patch("/v1/workspace/settings", json={"compat_identities": names}, headers=auth)


def rows() -> tuple[int, int, int]:
    with transaction():
        return tuple(fetch("SELECT (SELECT count(*) FROM message), (SELECT count(*) FROM idempotent_request),"
                           " (SELECT count(*) FROM workspace_alias)")[0])


def assert_compat_error(response: Any, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    body = response.get_json()
    assert response.status_code == status, (response.status_code, body)
    assert body["success"] is False and body["code"] == code and isinstance(body["error"], str) and body["error"], body
    assert "field" not in body if field is None else body["field"] == field, body
    assert set(body) <= {"success", "error", "code", "field"}, body
    return body


# --- identity (Done 5) -------------------------------------------------------------------------


def test_an_identity_naming_another_workspace_is_403_and_touches_nothing(client, tenants):
    mine, other = tenants["mine"], tenants["other"]
    # Given each workspace with its old identity registered
    assert set_identities(client, mine["auth"], ["ws_123"]).status_code == 200
    assert set_identities(client, other["auth"], ["ws_other"]).status_code == 200
    before = rows()
    answers = set()
    # When my key names the other workspace (its alias, id, name) or nothing known, in a body or a header
    for foreign in ("ws_other", str(other["id"]), "other", "nobody", "ws_123x"):
        refused = client.post(f"{PROBE}/send", json={"to": GOOD_TO, "workspaceId": foreign}, headers=mine["auth"])
        # Then it is 403 in the compat shape
        body = assert_compat_error(refused, 403, "identity_mismatch", "workspaceId")
        answers.add(body["error"].replace(repr(foreign), "<value>"))
        assert_compat_error(client.get(f"{PROBE}/whoami", headers={**mine["auth"], "x-user-id": foreign}),
                            403, "identity_mismatch", "x-user-id")
    # The same answer whether that workspace exists or not
    assert len(answers) == 1, answers
    # And nothing was stored: no message, no other change
    assert rows() == before
    # While my own id, name and alias, or no identity at all, are accepted
    for own in (str(mine["id"]), "acme", "ws_123", None):
        sent = client.post(f"{PROBE}/send", json={"to": GOOD_TO, "workspaceId": own}, headers=mine["auth"])
        assert sent.status_code == 200 and sent.get_json()["success"] is True, sent.get_json()
        assert client.get(f"{PROBE}/whoami", headers={**mine["auth"], "x-user-id": own or ""}).get_json() == {
            "success": True, "workspace": mine["id"]}
    with transaction():
        owners = fetch("SELECT DISTINCT workspace_id FROM message")
    assert owners == [(mine["id"],)]


S2_WRITES = ("/api/trigger/send-sms", "/api/trigger/schedule-delay", "/api/trigger/schedule-until", "/api/trigger/cancel-job")


def test_the_real_identity_bearing_routes_refuse_another_workspace_with_403(client, tenants):
    from services.ingest.contract import REGISTRY

    mine, other = tenants["mine"], tenants["other"]
    assert set_identities(client, other["auth"], ["ws_other"]).status_code == 200
    # Given a message of the other workspace, scheduled through its own S2 route
    theirs = client.post("/api/trigger/schedule-delay", json={"to": GOOD_TO, "body": "theirs", "workspaceId": "ws_other",
                                                               "delayMinutes": 60}, headers=other["auth"])
    assert theirs.status_code == 200, theirs.get_json()
    job = theirs.get_json()["data"]["jobId"]
    before = rows()
    # (method, path, request, the field the refusal names: the identity field as the route's system calls it)
    calls: list[tuple[str, str, dict[str, Any], str]] = []
    s2_body = {"to": GOOD_TO, "body": "mine", "delayMinutes": 1, "scheduledTime": "2030-01-01T10:00:00+10:00", "jobId": job}
    for path in S2_WRITES:
        calls.append(("POST", path, {"json": {**s2_body, "workspaceId": "ws_other"}}, "workspaceId"))
    calls.append(("GET", f"/api/trigger/job-status?jobId={job}&workspaceId=ws_other", {}, "workspaceId"))
    # S1: the caller named in x-user-id
    calls.append(("POST", "/api/campaigns/send", {"json": {"campaignId": 1, "recipients": [GOOD_TO], "messageType": "text",
                                                            "payload": {"text": {"body": "hi"}}},
                                                   "headers": {"x-user-id": "ws_other"}}, "x-user-id"))
    calls.append(("GET", "/api/queue/status?campaignId=1", {"headers": {"x-user-id": "ws_other"}}, "x-user-id"))
    # S0: workspaceId in the body, its metadata, or a header (all named workspaceId, as the document calls it)
    queued = {"contactId": "c1", "messageId": "m1", "scheduledTime": "2030-01-01T10:00:00Z", "content": "hi",
              "metadata": {"phone": GOOD_TO}}
    for path in ("/api/schedule-sms", "/api/schedule-email"):
        calls.append(("POST", path, {"json": {**queued, "workspaceId": "ws_other"}}, "workspaceId"))
        calls.append(("POST", path, {"json": {**queued, "metadata": {"phone": GOOD_TO, "workspaceId": "ws_other"}}},
                      "workspaceId"))
        calls.append(("POST", path, {"json": queued, "headers": {"x-workspace-id": "ws_other"}}, "workspaceId"))
    calls.append(("POST", "/api/broadcasts/b1/queue", {"json": {"workspaceId": "ws_other"}}, "workspaceId"))
    calls.append(("GET", "/api/broadcasts/b1/status", {"headers": {"x-workspace-id": "ws_other"}}, "workspaceId"))
    # Every route with an identity field is among them (S3 has none; the worker and WhatsApp's webhook neither)
    no_identity = ("/api/event-messages", "/api/events/", "/api/queue/worker", "/api/webhooks/", PROBE)
    assert {(m, p.partition("?")[0]) for m, p, _, _ in calls} == {
        (m, p.replace("{broadcast_id}", "b1")) for m, p in REGISTRY if p.startswith("/api/") and not p.startswith(no_identity)}
    # When my key names the other workspace on each of them
    for method, path, kwargs, field in calls:
        headers = {**mine["auth"], **kwargs.pop("headers", {})}
        response = client.open(path, method=method, headers=headers, **kwargs)
        # Then each is 403 in the compat shape, naming the identity field
        assert_compat_error(response, 403, "identity_mismatch", field), (method, path)
    # And the other workspace's job is untouched and nothing new was stored
    assert rows() == before
    with transaction():
        assert fetch("SELECT status FROM message WHERE workspace_id = %s", (other["id"],)) == [("scheduled",)]


def test_a_path_or_id_not_of_its_documented_form_names_nothing_and_is_never_a_500(client, workspace):
    auth = workspace["auth"]
    # A text path parameter is checked against its documented schema before the view runs: 404
    assert_compat_error(client.get(f"{PROBE}/fail/other", headers=auth), 404, "not_found")
    for ref in ("%00", "%C2%B2", "b1%0A", "x" * 101, "a%20b"):  # NUL, "²", a final newline, too long, a space
        assert_compat_error(client.get(f"/api/broadcasts/{ref}/status", headers=auth), 404, "not_found")
        assert_compat_error(client.post(f"/api/broadcasts/{ref}/queue", headers=auth), 404, "not_found")
    # /v1's too, in its own shape, and the document says so
    fax = client.get("/v1/channels/fax", headers=auth)
    assert fax.status_code == 404 and fax.get_json()["error"]["code"] == "not_found"
    document = client.get("/openapi.json").get_json()
    assert "404" in document["paths"][f"{PROBE}/fail/{{kind}}"]["get"]["responses"]
    # Ids read from text are ASCII digits: "²" is a digit to Python's isdigit, but no number
    sent = client.post("/api/schedule-sms", json={"contactId": "²", "messageId": "sup", "content": "x",
                                                  "metadata": {"phone": GOOD_TO}}, headers=auth)
    assert sent.status_code == 200 and sent.get_json()["success"] is True, sent.get_json()
    tagged = client.post("/v1/messages", headers=auth, json={  # an S3-looking message made through /v1
        "channel": "sms", "to": GOOD_TO, "body": "x", "delay_seconds": 3600, "tags": {"compat": "s3", "s3_id": "²",
                                                                                     "event_id": "٣"}})
    assert tagged.status_code == 202, tagged.get_json()
    upcoming = client.get("/api/event-messages/upcoming", headers=auth)
    assert upcoming.status_code == 200, upcoming.get_json()
    assert [(m["id"], m["event_id"]) for m in upcoming.get_json()["messages"]] == [("²", "٣")]


# --- authentication ----------------------------------------------------------------------------


def test_the_key_works_as_bearer_or_x_api_key_and_without_one_is_401_in_compat_shape(client, workspace):
    key = workspace["key"]
    # Given the same request with the key in either header
    for headers in ({"Authorization": f"Bearer {key}"}, {"x-api-key": key}, {"X-API-Key": key}):
        # Then both are accepted
        assert client.get(f"{PROBE}/whoami", headers=headers).get_json() == {"success": True, "workspace": workspace["id"]}
    # And a Bearer credential is the one used when both are sent
    assert_compat_error(client.get(f"{PROBE}/whoami", headers={"Authorization": "Bearer pr_nothere_xyz", "x-api-key": key}),
                        401, "unauthorized", "Authorization")
    # Without a key, or with a wrong one, it is 401 in the compat shape, and nothing is stored
    assert_compat_error(client.post(f"{PROBE}/send", json={"to": GOOD_TO}), 401, "unauthorized", "Authorization")
    assert_compat_error(client.post(f"{PROBE}/send", json={"to": GOOD_TO}, headers={"x-api-key": "pr_nothere_xyz"}),
                        401, "unauthorized", "Authorization")
    assert rows() == (0, 0, 0)
    # And /v1 keeps its own shape and takes only the Bearer form
    v1 = client.post("/v1/messages", json={"channel": "sms", "to": GOOD_TO, "body": "x"}, headers={"x-api-key": key})
    assert v1.status_code == 401 and v1.get_json()["error"]["code"] == "unauthorized"


def test_a_key_without_the_scope_is_403_in_compat_shape(client, workspace):
    from common import apikeys

    with transaction():
        reader = apikeys.issue(workspace["id"], ("messages:read",))
    assert_compat_error(client.post(f"{PROBE}/send", json={"to": GOOD_TO}, headers={"x-api-key": reader}),
                        403, "forbidden", "Authorization")


# --- the error shape ---------------------------------------------------------------------------


def test_every_kind_of_refusal_has_the_compat_shape(client, workspace, monkeypatch):
    auth = workspace["auth"]
    # Validation: 422 naming the field, 400 for a body that is not JSON
    assert_compat_error(client.post(f"{PROBE}/send", json={"to": 5}, headers=auth), 422, "invalid_request", "to")
    assert_compat_error(client.post(f"{PROBE}/send", data=b"{nope", headers={**auth, "Content-Type": "application/json"}),
                        400, "invalid_json", "body")
    # 413 from the body limit, before anything reads the body
    from common.config import settings

    big = b'{"to": "' + b"x" * (settings.postroom_max_request_bytes + 10) + b'"}'
    assert_compat_error(client.post(f"{PROBE}/send", data=big, headers={**auth, "Content-Type": "application/json"}),
                        413, "payload_too_large", "body")
    # Idempotency: a reserved key is 400, the same key for another body 409
    reserved = client.post(f"{PROBE}/send", json={"to": GOOD_TO}, headers={**auth, "Idempotency-Key": "compat:s0:m1"})
    assert_compat_error(reserved, 400, "invalid_request", "Idempotency-Key")
    first = client.post(f"{PROBE}/send", json={"to": GOOD_TO}, headers={**auth, "Idempotency-Key": "k1"})
    assert first.status_code == 200
    replay = client.post(f"{PROBE}/send", json={"to": GOOD_TO}, headers={**auth, "Idempotency-Key": "k1"})
    assert replay.get_json() == first.get_json() and replay.headers["Idempotent-Replayed"] == "true"
    conflict = client.post(f"{PROBE}/send", json={"to": "+15005550009"}, headers={**auth, "Idempotency-Key": "k1"})
    assert_compat_error(conflict, 409, "idempotency_conflict", "Idempotency-Key")
    # An unknown route or method under /api/
    assert_compat_error(client.get("/api/no-such-route", headers=auth), 404, "not_found")
    assert_compat_error(client.delete(f"{PROBE}/whoami", headers=auth), 405, "method_not_allowed")
    # 500 for a bug, 503 with Retry-After while the database is unavailable
    assert_compat_error(client.get(f"{PROBE}/fail/crash", headers=auth), 500, "internal")
    unavailable = client.get(f"{PROBE}/fail/database", headers=auth)
    assert_compat_error(unavailable, 503, "unavailable")
    assert int(unavailable.headers["Retry-After"]) > 0
    # 429 with its headers when over the API rate limit
    from common import apilimits

    monkeypatch.setattr(apilimits, "settings", dataclasses.replace(apilimits.settings, postroom_api_key_rate_per_second=0.001,
                                                                    postroom_api_key_burst=1))
    statuses = [client.get(f"{PROBE}/whoami", headers=auth) for _ in range(3)]
    limited = next(r for r in statuses if r.status_code == 429)
    assert_compat_error(limited, 429, "rate_limited", "Authorization")
    assert int(limited.headers["Retry-After"]) > 0 and "RateLimit-Limit" in limited.headers
    # While /v1 keeps its own shape
    assert client.get("/v1/nothing", headers=auth).get_json()["error"]["code"] == "not_found"


def test_an_optional_body_may_be_empty_but_not_wrong(client, workspace):
    auth = workspace["auth"]
    assert client.post(f"{PROBE}/queue", headers=auth).get_json() == {"success": True, "scheduleTime": None}
    assert client.post(f"{PROBE}/queue", json={}, headers=auth).get_json() == {"success": True, "scheduleTime": None}
    later = client.post(f"{PROBE}/queue", json={"scheduleTime": "2030-01-01T00:00:00Z", "extra": 1}, headers=auth)
    assert later.get_json() == {"success": True, "scheduleTime": "2030-01-01T00:00:00Z"}
    assert_compat_error(client.post(f"{PROBE}/queue", json={"scheduleTime": 5}, headers=auth), 422, "invalid_request",
                        "scheduleTime")


# --- the document ------------------------------------------------------------------------------


def test_every_compat_operation_is_tagged_and_documents_the_compat_error(client):
    document = client.get("/openapi.json").get_json()
    assert {"name": "compat", "description": document["tags"][0]["description"]} in document["tags"]
    assert document["components"]["securitySchemes"]["apiKeyHeader"] == {
        "type": "apiKey", "in": "header", "name": "x-api-key", "description": document["components"]["securitySchemes"][
            "apiKeyHeader"]["description"]}
    compat_error = {"$ref": "#/components/schemas/CompatError"}
    assert set(document["components"]["schemas"]["CompatError"]["required"]) == {"success", "error", "code"}
    compat = {(path, method): op for path, ops in document["paths"].items() for method, op in ops.items()
              if path.startswith("/api/")}
    assert (f"{PROBE}/send", "post") in compat
    for (path, method), op in compat.items():
        # Every route under /api/ is a compat operation
        assert op["tags"] == ["compat"], (path, method)
        if path == "/api/webhooks/whatsapp/status":  # WhatsApp's webhook on S1's old path: Meta's conventions
            continue
        assert op["security"] == [{"apiKey": []}, {"apiKeyHeader": []}], (path, method)
        errors = {status: r for status, r in op["responses"].items() if int(status) >= 400}
        assert {"401", "403", "429", "503"} <= set(errors), (path, method)
        for status, response in errors.items():
            assert response["content"]["application/json"]["schema"] == compat_error, (path, method, status)
    assert compat[(f"{PROBE}/queue", "post")]["requestBody"]["required"] is False
    assert compat[(f"{PROBE}/send", "post")]["requestBody"]["required"] is True
    # /v1 keeps its own error body and Bearer only
    v1 = document["paths"]["/v1/messages"]["post"]
    assert v1["security"] == [{"apiKey": []}] and "tags" not in v1
    assert v1["responses"]["422"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}


# --- compat_identities -------------------------------------------------------------------------


def test_compat_identities_are_replaced_as_a_whole_and_bounded(client, workspace):
    auth = workspace["auth"]
    assert client.get("/v1/workspace/settings", headers=auth).get_json()["compat_identities"] == []
    changed = set_identities(client, auth, ["ws_123", "YOUR_USER_ID", "test-user", "ws_123"])
    assert changed.status_code == 200 and changed.get_json()["compat_identities"] == ["YOUR_USER_ID", "test-user", "ws_123"]
    assert set_identities(client, auth, ["test-user"]).get_json()["compat_identities"] == ["test-user"]
    assert client.get("/v1/workspace/settings", headers=auth).get_json()["compat_identities"] == ["test-user"]
    # Other settings leave them as they are
    assert client.patch("/v1/workspace/settings", json={"urgent_bypasses_opt_out": True},
                        headers=auth).get_json()["compat_identities"] == ["test-user"]
    for bad in ([f"a{i}" for i in range(51)], [""], [" padded"], ["a\x00b"], ["x" * 201], None, "ws_123"):
        response = client.patch("/v1/workspace/settings", json={"compat_identities": bad}, headers=auth)
        assert response.status_code == 422 and response.get_json()["error"]["field"].startswith("compat_identities"), bad
    assert set_identities(client, auth, [f"a{i:02}" for i in range(50)]).status_code == 200
    assert set_identities(client, auth, []).get_json()["compat_identities"] == []
    assert rows()[2] == 0


# --- helpers -----------------------------------------------------------------------------------


def test_iso_in_offset_answers_in_the_callers_offset_else_the_zone_else_utc():
    from services.ingest.compat.framework import iso_in_offset

    at = datetime(2025, 5, 11, 5, 22, 43, 512000, tzinfo=UTC)
    assert iso_in_offset(at, "2025-05-11T16:00:00+10:00") == "2025-05-11T15:22:43+10:00"
    assert iso_in_offset("2025-05-11T05:22:43+00:00", "2025-05-11T16:00:00-05:30") == "2025-05-10T23:52:43-05:30"
    assert iso_in_offset(at, "2025-05-11T16:00:00", "Australia/Sydney") == "2025-05-11T15:22:43+10:00"  # no offset written
    assert iso_in_offset(at, None, "Not/AZone") == "2025-05-11T05:22:43+00:00"
    assert iso_in_offset(at, "garbage") == "2025-05-11T05:22:43+00:00"
    assert iso_in_offset(None, "2025-05-11T16:00:00+10:00") is None
