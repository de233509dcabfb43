"""Tenancy at the API: a key does only what its scopes allow, and a workspace sends only as itself."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from common import apikeys
from common.db.connection import fetch, transaction

GOOD = {"channel": "sms", "to": "+15005550006", "body": "hello"}


def key_with(workspace_id: int, *scopes: str) -> dict[str, str]:
    with transaction():
        return {"Authorization": f"Bearer {apikeys.issue(workspace_id, scopes)}"}


def snapshot() -> list[tuple]:
    """Everything a request could change: messages (with status), their events, the outbox."""
    with transaction():
        return fetch("SELECT 'm', id, status FROM message UNION ALL SELECT 'e', id, status FROM message_event"
                     " UNION ALL SELECT 'o', id, event_type FROM outbox ORDER BY 1, 2")


@pytest.fixture
def message(api, workspace) -> int:
    created = api.post("/v1/messages", json=GOOD, headers=workspace["auth"])
    assert created.status_code == 202
    return created.get_json()["id"]


@pytest.mark.parametrize(
    ("method", "path", "scope", "granted"),
    [
        ("POST", "/v1/messages", "messages:write", "messages:read"),
        ("GET", "/v1/messages/{id}", "messages:read", "messages:write"),
        ("POST", "/v1/messages/{id}/cancel", "messages:write", "messages:read"),
    ],
)
def test_a_key_without_the_needed_scope_is_403_naming_it_and_changes_nothing(api, workspace, message, method, path,
                                                                             scope, granted):
    # Given a key of the same workspace that has only the other scope
    headers = key_with(workspace["id"], granted)
    before = snapshot()
    # When it calls an operation that needs the scope it lacks
    response = api.open(path.format(id=message), method=method, json=GOOD if path == "/v1/messages" else None,
                        headers=headers)
    # Then it is refused, told which scope is missing, and nothing changed
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "forbidden"
    assert response.get_json()["error"]["message"] == f"this API key lacks the scope {scope!r}"
    assert snapshot() == before


def test_an_admin_key_may_do_everything(api, workspace):
    admin = key_with(workspace["id"], "admin")
    created = api.post("/v1/messages", json=GOOD, headers=admin)
    assert created.status_code == 202
    message_id = created.get_json()["id"]
    assert api.get(f"/v1/messages/{message_id}", headers=admin).get_json()["status"] == "accepted"
    assert api.post(f"/v1/messages/{message_id}/cancel", headers=admin).get_json()["status"] == "cancelled"


def test_a_read_only_key_reads(api, workspace, message):
    reader = key_with(workspace["id"], "messages:read")
    assert api.get(f"/v1/messages/{message}", headers=reader).status_code == 200


def test_from_another_identity_is_refused_and_nothing_is_stored(api, workspace):
    from common.config import settings

    # Given a workspace on the deployment's default account, whose identity is TWILIO_FROM
    # When it claims another number as the sender
    spoofed = api.post("/v1/messages", json={**GOOD, "from": "+15005550999"}, headers=workspace["auth"])
    # Then it is refused naming `from` and the identity it may use, and nothing is stored
    assert spoofed.status_code == 422
    error = spoofed.get_json()["error"]
    assert error["field"] == "from" and settings.twilio_from in error["message"]
    assert snapshot() == []
    # Its own identity is fine
    own = api.post("/v1/messages", json={**GOOD, "from": settings.twilio_from}, headers=workspace["auth"])
    assert own.status_code == 202


def test_a_workspace_with_its_own_account_may_send_only_as_that_accounts_identity(api, workspace):
    from common.config import settings
    from common.crypto import seal
    from common.providers.accounts import forget_cached_accounts

    # Given a workspace whose SMS go through its own account, sending as +15005550009
    with transaction():
        fetch("INSERT INTO channel_config (workspace_id, channel, provider, account_ref, credentials, sender_identity)"
              " VALUES (%s, 'sms', 'twilio', %s, %s, '+15005550009')",
              (workspace["id"], "AC" + "9" * 32, seal({"account_sid": "AC" + "9" * 32, "auth_token": "t"})))
    forget_cached_accounts()
    # When it sends as the deployment's default number (another tenant's identity), it is refused
    shared = api.post("/v1/messages", json={**GOOD, "from": settings.twilio_from}, headers=workspace["auth"])
    assert shared.status_code == 422 and "+15005550009" in shared.get_json()["error"]["message"]
    assert snapshot() == []
    # And as its own identity it is accepted
    assert api.post("/v1/messages", json={**GOOD, "from": "+15005550009"}, headers=workspace["auth"]).status_code == 202


def postroom(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ})


def test_apikey_create_issues_a_key_with_the_scopes_asked_for(clean_db, api):
    # Given a workspace, when an operator creates a read-only key for it
    assert postroom("workspace", "create", "initech").returncode == 0
    made = postroom("apikey", "create", "--workspace", "initech", "--scopes", "messages:read")
    assert made.returncode == 0, made.stderr
    # Then the key holds exactly that scope, and may read but not send
    with transaction():
        grant = apikeys.grant_for(made.stdout.strip())
    assert grant is not None and grant.scopes == {"messages:read"}
    headers = {"Authorization": f"Bearer {made.stdout.strip()}"}
    assert api.post("/v1/messages", json=GOOD, headers=headers).status_code == 403
    # Without --scopes a key may send and read; an unknown scope is refused with the known ones listed
    default = postroom("apikey", "create", "--workspace", "initech")
    with transaction():
        assert apikeys.grant_for(default.stdout.strip()).scopes == {"messages:write", "messages:read"}  # type: ignore[union-attr]
    wrong = postroom("apikey", "create", "--workspace", "initech", "--scopes", "messages:write,root")
    assert wrong.returncode != 0 and "root" in wrong.stderr and "admin" in wrong.stderr
    with transaction():
        assert fetch("SELECT count(*) FROM api_key")[0][0] == 3  # the workspace's first key and the two made here
