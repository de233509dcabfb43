"""Channel configuration through the API, and what POST /v1/messages answers for each channel.

Credentials are stored encrypted and never come back; a message's route, addresses and content
are checked against the channels it names before anything is stored.
"""

from __future__ import annotations

import json

from common.db.connection import fetch, transaction

TWILIO = {"credentials": {"account_sid": "AC" + "ab" * 16, "auth_token": "tok-3f9a1c-very-secret"},
          "sender": "+15005550006", "settings": {"api_base": "http://127.0.0.1:9"}}


def put(api, workspace, channel: str, payload: dict):
    return api.put(f"/v1/channels/{channel}", data=json.dumps(payload), content_type="application/json",
                   headers=workspace["auth"])


def test_credentials_cannot_be_read_back_nor_found_in_clear_text(api, workspace):
    secrets = {"sms": ("tok-3f9a1c-very-secret",), "whatsapp_cloud": ("EAAG-access-token-77", "app-secret-5521", "verify-me-81"),
               "whatsapp_qr": ("waha-key-0042", "hmac-key-9931"), "email": ("smtp-password-6610",)}
    assert put(api, workspace, "sms", TWILIO).status_code == 200
    assert put(api, workspace, "whatsapp_cloud", {"credentials": {"access_token": "EAAG-access-token-77", "app_secret": "app-secret-5521",
                                                                  "verify_token": "verify-me-81"}, "sender": "100000000000077"}).status_code == 200
    assert put(api, workspace, "whatsapp_qr", {"credentials": {"api_key": "waha-key-0042"}, "webhook_secret": "hmac-key-9931",
                                               "sender": "sales", "senders": ["support"],
                                               "settings": {"api_base": "http://127.0.0.1:9", "pace_seconds": 4}}).status_code == 200
    assert put(api, workspace, "email", {"credentials": {"username": "mailer", "password": "smtp-password-6610"},
                                         "sender": "News@Example.COM", "settings": {"host": "127.0.0.1", "port": 587,
                                                                                    "security": "starttls"}}).status_code == 200
    # The API names which secrets are set, never their values
    for channel, values in secrets.items():
        shown = api.get(f"/v1/channels/{channel}", headers=workspace["auth"])
        assert shown.status_code == 200
        text = shown.get_data(as_text=True)
        assert not any(value in text for value in values), channel
    listing = api.get("/v1/channels", headers=workspace["auth"]).get_data(as_text=True)
    assert not any(value in listing for values in secrets.values() for value in values)
    qr = api.get("/v1/channels/whatsapp_qr", headers=workspace["auth"]).get_json()
    assert qr["credentials_set"] == ["api_key"] and qr["webhook_secret_set"] is True
    assert qr["sender"] == "sales" and qr["senders"] == ["support"] and qr["rate_limit_per_second"] == 0.25
    email = api.get("/v1/channels/email", headers=workspace["auth"]).get_json()
    assert email["sender"] == "News@example.com" and email["settings"] == {"host": "127.0.0.1", "port": 587, "security": "starttls"}
    assert api.get("/v1/channels/sms", headers=workspace["auth"]).get_json()["rate_limit_per_second"] == 1.0  # a long code's pace
    # Nor are they anywhere in the database in clear text
    with transaction():
        dump = " ".join(str(row) for row in fetch("SELECT c::text, convert_from(c.credentials, 'LATIN1') FROM channel_config c"))
    assert "starttls" in dump  # the dump is readable: settings are not secret
    assert not any(value in dump for values in secrets.values() for value in values)


def test_a_configured_account_sends_and_delete_returns_to_the_default(api, workspace):
    from common.providers.accounts import sms_account

    assert put(api, workspace, "sms", TWILIO).status_code == 200
    with transaction():
        account = sms_account(workspace["id"])
    assert (account.account_sid, account.auth_token, account.api_base) == (TWILIO["credentials"]["account_sid"], "tok-3f9a1c-very-secret",
                                                                           "http://127.0.0.1:9")
    removed = api.delete("/v1/channels/sms", headers=workspace["auth"])
    assert removed.status_code == 200 and removed.get_json()["account"] == TWILIO["credentials"]["account_sid"]
    assert api.get("/v1/channels/sms", headers=workspace["auth"]).status_code == 404
    assert api.delete("/v1/channels/sms", headers=workspace["auth"]).status_code == 404
    with transaction():
        assert sms_account(workspace["id"]).account_sid != TWILIO["credentials"]["account_sid"]


def test_bad_channel_configurations_are_refused_naming_the_field(api, workspace):
    cases = [
        ("sms", {**TWILIO, "credentials": {"account_sid": "AC123"}}, "credentials"),
        ("sms", {**TWILIO, "credentials": {**TWILIO["credentials"], "account_sid": "nope"}}, "credentials"),
        ("sms", {**TWILIO, "sender": "not a number"}, "sender"),
        ("sms", {**TWILIO, "provider": "meta"}, "provider"),
        ("sms", {**TWILIO, "webhook_secret": "x"}, "webhook_secret"),
        ("email", {"sender": "a@example.com", "settings": {"host": "smtp.example.com"}}, "settings"),
        ("email", {"sender": "a@example.com", "settings": {"host": "smtp.example.com", "port": 70000}}, "settings"),
        ("email", {"sender": "a@example.com", "settings": {"host": "h", "port": 25, "tls": True}}, "settings"),
        ("whatsapp_cloud", {"credentials": {"access_token": "t"}, "sender": "100"}, "credentials"),
        ("whatsapp_qr", {"credentials": {"api_key": "k"}, "sender": "bad session!", "settings": {"api_base": "http://127.0.0.1:9"}}, "sender"),
        ("whatsapp_qr", {"credentials": {"api_key": "k"}, "sender": "s", "settings": {"api_base": "ftp://x"}}, "settings"),
        ("http", {"sender": "http://169.254.169.254/latest"}, "sender"),
        ("whatsapp_qr", {"credentials": {"api_key": "k"}, "sender": "s",
                         "settings": {"api_base": "http://169.254.169.254/latest/meta-data"}}, "settings"),  # cloud metadata
        ("whatsapp_cloud", {"credentials": {"access_token": "t", "app_secret": "a", "verify_token": "v"}, "sender": "100",
                            "settings": {"api_base": "http://10.0.0.7"}}, "settings"),
        ("email", {"sender": "a@example.com", "settings": {"host": "169.254.169.254", "port": 25}}, "settings"),
    ]
    for channel, payload, field in cases:
        refused = put(api, workspace, channel, payload)
        assert refused.status_code == 422, (channel, payload, refused.get_json())
        assert refused.get_json()["error"]["field"] == field, (channel, payload, refused.get_json())
    assert put(api, workspace, "fax", TWILIO).status_code == 404
    with transaction():
        assert fetch("SELECT count(*) FROM channel_config")[0][0] == 0


def test_an_http_channel_gets_a_generated_secret_shown_once(api, workspace):
    created = put(api, workspace, "http", {"sender": "http://127.0.0.1:9/hook"}).get_json()
    assert created["secret"].startswith("whsec_") and created["credentials_set"] == ["secret"]
    shown = api.get("/v1/channels/http", headers=workspace["auth"])
    assert created["secret"] not in shown.get_data(as_text=True) and "secret" not in shown.get_json()


def test_an_sms_answer_shows_segments_and_encoding_before_sending(api, workspace):
    plain = api.post("/v1/messages", json={"channel": "sms", "to": "+15005550006", "body": "x" * 161}, headers=workspace["auth"])
    assert plain.status_code == 202 and (plain.get_json()["segments"], plain.get_json()["encoding"]) == (2, "GSM-7")
    emoji = api.post("/v1/messages", json={"channel": "sms", "to": "+15005550006", "body": "x" * 150 + "🙂"}, headers=workspace["auth"])
    assert (emoji.get_json()["segments"], emoji.get_json()["encoding"]) == (3, "UCS-2")  # 152 UTF-16 units at 67 a part
    view = api.get(f"/v1/messages/{emoji.get_json()['id']}", headers=workspace["auth"]).get_json()
    assert view["encoding"] == "UCS-2"


def test_a_route_names_an_address_per_channel_or_takes_a_contacts(api, workspace):
    routed = api.post("/v1/messages", json={"channels": ["whatsapp_cloud", "sms"], "to": "+1 (500) 555-0006", "body": "hi"},
                      headers=workspace["auth"])
    assert routed.status_code == 202, routed.get_json()
    view = api.get(f"/v1/messages/{routed.get_json()['id']}", headers=workspace["auth"]).get_json()
    assert view["channel"] == "whatsapp_cloud" and view["channels"] == ["whatsapp_cloud", "sms"]
    assert view["route"] == [{"channel": "whatsapp_cloud", "to": "+15005550006"}, {"channel": "sms", "to": "+15005550006"}]
    contact = api.post("/v1/contacts", json={"addresses": {"sms": "+15005550006", "email": "ada@Example.com"}},
                       headers=workspace["auth"]).get_json()
    by_contact = api.post("/v1/messages", json={"channels": ["email", "sms"], "contact_id": contact["id"], "body": "hi",
                                                "subject": "Hello"}, headers=workspace["auth"])
    assert by_contact.status_code == 202, by_contact.get_json()
    view = api.get(f"/v1/messages/{by_contact.get_json()['id']}", headers=workspace["auth"]).get_json()
    assert view["route"] == [{"channel": "email", "to": "ada@example.com"}, {"channel": "sms", "to": "+15005550006"}]
    assert view["content"] == {"subject": "Hello"}
    per_channel = api.post("/v1/messages", json={"channels": ["email", "sms"], "to": {"email": "b@example.org", "sms": "+15005550006"},
                                                 "body": "hi"}, headers=workspace["auth"])
    assert per_channel.status_code == 202


def test_messages_a_channel_cannot_carry_are_refused_naming_the_field(api, workspace):
    base = {"channel": "sms", "to": "+15005550006", "body": "hi"}
    cases = [
        ({**base, "subject": "S"}, "subject"),
        ({**base, "template": {"name": "order_update"}}, "template"),
        ({"channel": "email", "to": "not-an-address", "body": "hi"}, "to"),
        ({"channel": "email", "to": "a@example.com"}, "body"),
        ({"channel": "whatsapp_cloud", "to": "+15005550006"}, "body"),
        ({"channel": "whatsapp_qr", "to": "+15005550006", "body": "x", "media": [{"url": "https://e.com/a.png"}] * 2}, "media"),
        ({"channel": "sms", "to": "+15005550006", "body": "x" * 1601}, "body"),
        ({"channels": ["sms", "sms"], "to": "+15005550006", "body": "hi"}, "channels"),
        ({"channel": "sms", "channels": ["sms"], "to": "+15005550006", "body": "hi"}, "channel"),
        ({"channels": ["email", "sms"], "to": {"sms": "+15005550006"}, "body": "hi"}, "to"),
        ({"channel": "sms", "contact_id": 999, "body": "hi"}, "contact_id"),
        ({**base, "messaging_service_sid": "MG" + "0" * 32, "from": "+15005550006"}, "messaging_service_sid"),
        ({"channel": "email", "to": "a@example.com", "body": "hi", "from": "someone@else.example"}, "from"),
    ]
    for payload, field in cases:
        refused = api.post("/v1/messages", json=payload, headers=workspace["auth"])
        assert refused.status_code == 422, (payload, refused.get_json())
        assert refused.get_json()["error"]["field"] == field, (payload, refused.get_json())
    with transaction():
        assert fetch("SELECT count(*) FROM message")[0][0] == 0


def test_an_account_belongs_to_one_workspace(api, workspace):
    from common import apikeys

    assert put(api, workspace, "sms", TWILIO).status_code == 200
    with transaction():
        other = {"Authorization": f"Bearer {apikeys.issue(apikeys.create_workspace('other'))}"}
    # Another workspace cannot configure the same Twilio account: its webhooks are checked with one owner's token
    taken = api.put("/v1/channels/sms", data=json.dumps(TWILIO), content_type="application/json", headers=other)
    assert taken.status_code == 409 and taken.get_json()["error"]["code"] == "account_taken"
    assert api.get("/v1/channels/sms", headers=other).status_code == 404
    # The owner may change its own configuration
    assert put(api, workspace, "sms", {**TWILIO, "rate_limit_per_second": 3}).status_code == 200
