"""Chatbots through the API: one per channel, its API key write-only and sealed, its server
vetted, and the workspace's plan and quota changed by an admin key only."""

from __future__ import annotations

import json

from common import apikeys, chatbots, usage
from common.db.connection import fetch, transaction

OPENAI = {"provider": "openai", "base_url": "http://127.0.0.1:9/openai/v1", "api_key": "sk-live-4d1f-very-secret",
          "model": "gpt-4o-mini", "product_name": "Acme Lamps", "guidelines": "Be brief."}


def put(api, auth: dict, channel: str, payload: dict):
    return api.put(f"/v1/chatbots/{channel}", data=json.dumps(payload), content_type="application/json", headers=auth)


def test_the_extractive_default_needs_nothing_and_shows_its_defaults(api, workspace):
    response = put(api, workspace["auth"], "whatsapp_cloud", {})
    assert response.status_code == 200, response.get_json()
    view = response.get_json()
    assert (view["provider"], view["api_key_set"], view["max_tokens"], view["language"]) == ("extractive", False, 300, "en")
    assert view["handoff_message"] == chatbots.HANDOFF_MESSAGE and view["handoff_keywords"][0] == "human"
    assert (view["plan"], view["monthly_quota"], view["quota_used"], view["json_mode"]) == ("basic", None, 0, True)
    assert api.get("/v1/chatbots/whatsapp_cloud", headers=workspace["auth"]).get_json() == view
    assert [b["channel"] for b in api.get("/v1/chatbots", headers=workspace["auth"]).get_json()["chatbots"]] == ["whatsapp_cloud"]


def test_the_api_key_is_never_shown_nor_stored_in_clear_and_kept_only_for_the_same_server(api, workspace):
    assert put(api, workspace["auth"], "sms", OPENAI).status_code == 200
    for text in (api.get("/v1/chatbots/sms", headers=workspace["auth"]).get_data(as_text=True),
                 api.get("/v1/chatbots", headers=workspace["auth"]).get_data(as_text=True)):
        assert "sk-live-4d1f-very-secret" not in text and '"api_key_set":true' in text.replace(" ", "")
    with transaction():
        dump = " ".join(str(r) for r in fetch("SELECT c::text, convert_from(c.credentials, 'LATIN1') FROM chatbot c"))
        assert "Acme Lamps" in dump and "sk-live-4d1f-very-secret" not in dump
        row = chatbots.get(workspace["id"], "sms")
        assert row is not None and chatbots.api_key(row) == "sk-live-4d1f-very-secret"
    # Left out, the key stays while the server is the same ...
    same = {k: v for k, v in OPENAI.items() if k != "api_key"} | {"temperature": 0.5}
    assert put(api, workspace["auth"], "sms", same).get_json()["api_key_set"] is True
    # ... and is dropped for another server: a key is never sent where it was not given for
    moved = same | {"base_url": "http://127.0.0.1:10/v1"}
    assert put(api, workspace["auth"], "sms", moved).get_json()["api_key_set"] is False
    gone = api.delete("/v1/chatbots/sms", headers=workspace["auth"])
    assert gone.status_code == 200 and gone.get_json()["temperature"] == 0.5
    assert api.get("/v1/chatbots/sms", headers=workspace["auth"]).status_code == 404
    assert api.delete("/v1/chatbots/sms", headers=workspace["auth"]).status_code == 404


def test_a_setup_is_refused_naming_the_field_at_fault(api, workspace):
    cases: list[tuple[dict, str]] = [
        ({"provider": "openai", "model": "m"}, "base_url"),
        ({"provider": "openai", "base_url": "http://127.0.0.1:9/v1"}, "model"),
        ({"model": "m"}, "model"),  # extractive takes no model
        ({**OPENAI, "base_url": "http://169.254.169.254/v1"}, "base_url"),  # cloud metadata is never a model server
        ({"temperature": 3}, "temperature"),
        ({"max_tokens": 8}, "max_tokens"),
        ({"language": "xx"}, "language"),
        ({"handoff_keywords": ["x" * 41]}, "handoff_keywords"),
        ({"surprise": True}, "surprise"),
    ]
    for payload, field in cases:
        response = put(api, workspace["auth"], "sms", payload)
        assert response.status_code == 422, (payload, response.get_json())
        assert response.get_json()["error"]["field"] == field, (payload, response.get_json())
    assert put(api, workspace["auth"], "pigeon", {}).status_code == 404
    assert put(api, workspace["auth"], "http", {}).status_code == 404  # http has no customers to talk to


def test_plan_and_quota_are_changed_by_an_admin_key_only(api, workspace):
    refused = put(api, workspace["auth"], "sms", {"plan": "premium"})
    assert refused.status_code == 403 and refused.get_json()["error"]["field"] == "plan"
    assert put(api, workspace["auth"], "sms", {"monthly_quota": 5}).status_code == 403
    with transaction():
        assert usage.plan_of(workspace["id"])["plan"] == "basic"
        admin = {"Authorization": f"Bearer {apikeys.issue(workspace['id'], ('admin',))}"}
    changed = put(api, admin, "sms", {"plan": "premium", "monthly_quota": 100}).get_json()
    assert (changed["plan"], changed["monthly_quota"]) == ("premium", 100)
    # Left out, they stay; null makes the quota unlimited
    assert put(api, admin, "sms", {}).get_json()["monthly_quota"] == 100
    assert put(api, admin, "sms", {"monthly_quota": None}).get_json()["monthly_quota"] is None
    assert put(api, workspace["auth"], "sms", {}).get_json()["plan"] == "premium"


def test_the_cli_sets_plan_and_quota(workspace):
    from tests.test_cli import postroom

    result = postroom("workspace", "set", "acme", "--plan", "pro", "--ai-quota", "250")
    assert result.returncode == 0, result.stderr
    assert "plan=pro ai_quota=250" in result.stdout
    with transaction():
        assert (usage.plan_of(workspace["id"])["plan"], usage.plan_of(workspace["id"])["monthly_quota"]) == ("pro", 250)
    assert postroom("workspace", "set", "acme", "--ai-quota", "unlimited").returncode == 0
    with transaction():
        assert usage.plan_of(workspace["id"])["monthly_quota"] is None
    assert postroom("workspace", "set", "acme", "--ai-quota", "-3").returncode != 0
    assert postroom("workspace", "set", "acme", "--plan", "gold").returncode != 0
