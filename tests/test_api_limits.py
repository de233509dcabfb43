"""API rate limits: a key over its limit gets 429 with Retry-After and the RateLimit-* headers while
other keys of its workspace and other workspaces are served; a workspace's limit covers all its
keys; and while Redis is unavailable requests are served unchecked."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import redis

from common import apikeys, apilimits
from common.db.connection import transaction


@pytest.fixture
def limits(monkeypatch):
    """Set the limits for this test (the settings the limiter reads)."""

    def set_limits(**values: Any) -> None:
        monkeypatch.setattr(apilimits, "settings", dataclasses.replace(apilimits.settings, **values))

    yield set_limits
    apilimits.use_client(None)


def another_key(workspace_id: int | None = None) -> dict:
    with transaction():
        key = apikeys.issue(workspace_id if workspace_id is not None else apikeys.create_workspace("other"))
    return {"Authorization": f"Bearer {key}"}


def read(api, auth: dict):
    return api.get("/v1/messages/1", headers=auth)  # 404: served, and counted like any request


def test_key_over_its_limit_gets_429_while_others_are_served(api, workspace, limits):
    # Given a limit of 1 request/s with a burst of 2 per key, and a roomy one per workspace
    limits(postroom_api_key_rate_per_second=1.0, postroom_api_key_burst=2,
           postroom_api_workspace_rate_per_second=1000.0, postroom_api_workspace_burst=1000)
    same_workspace, other_workspace = another_key(workspace["id"]), another_key()
    # When one key makes three requests at once
    answers = [read(api, workspace["auth"]) for _ in range(3)]
    # Then the third is refused with when to retry and the limit's state
    assert [a.status_code for a in answers] == [404, 404, 429]
    refused = answers[2]
    assert refused.get_json()["error"]["code"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["RateLimit-Limit"] == "2" and refused.headers["RateLimit-Remaining"] == "0"
    assert int(refused.headers["RateLimit-Reset"]) >= 1
    # And another key of the same workspace, and a key of another workspace, are still served
    assert read(api, same_workspace).status_code == 404
    assert read(api, other_workspace).status_code == 404


def test_refused_post_stores_nothing(api, workspace, limits):
    limits(postroom_api_key_rate_per_second=1.0, postroom_api_key_burst=1)
    message = {"channel": "sms", "to": "+15005550006", "body": "hi"}
    assert api.post("/v1/messages", json=message, headers=workspace["auth"]).status_code == 202
    over = api.post("/v1/messages", json=message, headers={**workspace["auth"], "Idempotency-Key": "k"})
    assert over.status_code == 429
    with transaction():
        from common.db.connection import fetch

        assert fetch("SELECT (SELECT count(*) FROM message), (SELECT count(*) FROM idempotent_request)")[0] == (1, 0)


def test_a_workspace_limit_covers_all_its_keys(api, workspace, limits):
    # Given a workspace allowed 3 requests at once, whatever the key
    limits(postroom_api_key_rate_per_second=1000.0, postroom_api_key_burst=1000,
           postroom_api_workspace_rate_per_second=1.0, postroom_api_workspace_burst=3)
    second, other_workspace = another_key(workspace["id"]), another_key()
    # When two keys of it make four requests between them
    statuses = [read(api, auth).status_code for auth in (workspace["auth"], workspace["auth"], second, second)]
    # Then the fourth is refused, naming the workspace's limit, and other workspaces are served
    assert statuses == [404, 404, 404, 429]
    refused = read(api, second)
    assert refused.status_code == 429 and refused.headers["RateLimit-Limit"] == "3"
    assert "workspace" in refused.get_json()["error"]["message"]
    assert read(api, other_workspace).status_code == 404


def test_no_limit_when_the_rates_are_zero(api, workspace, limits):
    limits(postroom_api_key_rate_per_second=0.0, postroom_api_key_burst=1,
           postroom_api_workspace_rate_per_second=0.0, postroom_api_workspace_burst=1)
    assert {read(api, workspace["auth"]).status_code for _ in range(5)} == {404}


def test_requests_are_served_while_redis_is_unavailable(api, workspace, limits):
    from services.local.infra import free_port

    # Given a limit that would refuse the second request, and Redis unreachable
    limits(postroom_api_key_rate_per_second=1.0, postroom_api_key_burst=1)
    apilimits.use_client(redis.Redis(port=free_port(), socket_timeout=0.2, socket_connect_timeout=0.2))
    before = apilimits.CHECKS.labels(outcome="unchecked")._value.get()
    # When requests arrive, they are served unchecked (fail open) and counted
    assert [read(api, workspace["auth"]).status_code for _ in range(3)] == [404, 404, 404]
    assert apilimits.CHECKS.labels(outcome="unchecked")._value.get() - before == 3


def test_every_authenticated_operation_declares_429_with_its_headers(api):
    document = api.get("/openapi.json").get_json()
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            if "security" in op:
                refused = op["responses"]["429"]
                assert set(refused["headers"]) == {"Retry-After", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"}
            else:
                assert "429" not in op["responses"], (method, path)
