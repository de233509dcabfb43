"""Provider receipts: signed, kept, applied forward only, and applied late when they come early."""

from __future__ import annotations

import requests
from twilio.request_validator import RequestValidator

from common.config import settings
from common.db.connection import fetch, fetch_dicts, transaction
from tests.support import apply_kept_receipts, history, running_workers, status_of, wait_for

STATUS_PATH = "/webhooks/twilio/status"


def sent_message(workspace, sid: str, status: str = "sent", account: str | None = None) -> int:
    with transaction():
        return fetch(
            "INSERT INTO message (workspace_id, channel, to_addr, body, status, provider, provider_message_id, provider_account)"
            " VALUES (%s, 'sms', '+15005550006', 'hi', %s, 'twilio', %s, %s) RETURNING id",
            (workspace["id"], status, sid, account or settings.twilio_account_sid),
        )[0][0]


def configured_account(account_sid: str, token: str, sender: str) -> int:
    """A second workspace whose SMS channel uses this Twilio account; its id."""
    from common.crypto import seal

    with transaction():
        other = fetch("INSERT INTO workspace (name) VALUES ('other') RETURNING id")[0][0]
        fetch("INSERT INTO channel_config (workspace_id, channel, provider, account_ref, credentials, sender_identity)"
              " VALUES (%s, 'sms', 'twilio', %s, %s, %s)",
              (other, account_sid, seal({"account_sid": account_sid, "auth_token": token}), sender))
    return other


def callback(api, sid: str, status: str, *, token: str | None = None, **extra: str):
    params = {"MessageSid": sid, "SmsSid": sid, "MessageStatus": status, "SmsStatus": status,
              "AccountSid": settings.twilio_account_sid, "From": "+15005550006", "To": "+15005550006",
              "ApiVersion": "2010-04-01", **extra}
    url = settings.public_url + STATUS_PATH
    signature = RequestValidator(token or settings.twilio_auth_token).compute_signature(url, params)
    return api.post(STATUS_PATH, data=params, headers={"X-Twilio-Signature": signature})


def test_receipts_out_of_order_never_move_a_status_backwards(api, workspace, broker):
    message_id = sent_message(workspace, "SM" + "a" * 32)
    assert callback(api, "SM" + "a" * 32, "delivered").status_code == 200
    apply_kept_receipts(broker)
    assert callback(api, "SM" + "a" * 32, "sent").status_code == 200
    assert callback(api, "SM" + "a" * 32, "queued").status_code == 200
    apply_kept_receipts(broker)
    assert status_of(message_id) == "delivered"
    # read and delivered arriving together, in reverse, are applied in rank order in one batch
    assert callback(api, "SM" + "a" * 32, "read").status_code == 200
    assert callback(api, "SM" + "a" * 32, "delivered").status_code == 200
    apply_kept_receipts(broker)
    assert status_of(message_id) == "read"
    assert history(message_id) == ["delivered", "read"]


def test_failed_receipt_records_the_providers_error(api, workspace, broker):
    message_id = sent_message(workspace, "SM" + "b" * 32)
    callback(api, "SM" + "b" * 32, "undelivered", ErrorCode="30003", ErrorMessage="Unreachable handset")
    apply_kept_receipts(broker)
    with transaction():
        row = fetch_dicts("SELECT status, error_code, last_error FROM message WHERE id = %s", (message_id,))[0]
    assert row == {"status": "undelivered", "error_code": "30003", "last_error": "30003: Unreachable handset"}


def test_receipt_before_the_send_is_recorded_is_applied_when_it_is(api, workspace, monkeypatch):
    from common.providers.channels import SMS
    from services.senders.loop import deliver

    with transaction():
        message_id = fetch("INSERT INTO message (workspace_id, channel, to_addr, body, status) VALUES (%s, 'sms', '+15005550006', 'early', 'routed') RETURNING id",
                           (workspace["id"],))[0][0]
    # The provider accepted the message and its receipt raced ahead of our record of the send.
    sid = "SM" + "c" * 32
    assert callback(api, sid, "delivered").status_code == 200
    with transaction():
        pending = fetch_dicts("SELECT applied_at, message_id FROM provider_event WHERE provider_message_id = %s", (sid,))
    assert pending == [{"applied_at": None, "message_id": None}]
    # Now the sender records the send with that sid (the provider's answer is fixed so the race
    # is deterministic): the pending receipt is applied.
    from common.providers.sms import Accepted

    monkeypatch.setattr("common.providers.twilio_sms.TwilioSmsSender.send", lambda self, sms: Accepted(sid, 1, "queued"))
    deliver(SMS, [message_id])
    assert status_of(message_id) == "delivered"
    assert history(message_id) == ["sending", "sent", "delivered"]
    with transaction():
        applied = fetch_dicts("SELECT applied_at IS NOT NULL AS applied, message_id FROM provider_event WHERE provider_message_id = %s", (sid,))
    assert applied == [{"applied": True, "message_id": message_id}]


def test_shuffled_callbacks_from_the_provider_end_delivered(api, workspace, sandbox, broker):
    sandbox.fault(shuffle_callbacks=True, duplicate_callbacks=True)
    with running_workers(broker):
        message_id = api.post("/v1/messages", json={"channel": "sms", "to": "+15005550006", "body": "shuffled"},
                              headers=workspace["auth"]).get_json()["id"]
        wait_for(lambda: status_of(message_id) == "delivered", what="delivered")
        wait_for(lambda: sandbox.stats()["deliveries_in_flight"] == 0, what="callbacks done")
    assert status_of(message_id) == "delivered"
    assert history(message_id)[-1] == "delivered"


def test_bad_signature_gets_403_changes_nothing_and_is_logged(api, workspace):
    message_id = sent_message(workspace, "SM" + "d" * 32)
    forged = callback(api, "SM" + "d" * 32, "delivered", token="not-the-token")
    assert forged.status_code == 403
    unsigned = api.post(STATUS_PATH, data={"MessageSid": "SM" + "d" * 32, "MessageStatus": "delivered",
                                           "AccountSid": settings.twilio_account_sid})
    assert unsigned.status_code == 403
    assert status_of(message_id) == "sent"
    with transaction():
        logged = fetch_dicts("SELECT signature_valid, applied_at FROM provider_event WHERE provider_message_id = %s", ("SM" + "d" * 32,))
    assert logged == [{"signature_valid": False, "applied_at": None}] * 2


def test_callback_over_real_http_is_verified_against_the_public_url(workspace, ingest_url, broker):
    message_id = sent_message(workspace, "SM" + "e" * 32)
    params = {"MessageSid": "SM" + "e" * 32, "MessageStatus": "delivered", "AccountSid": settings.twilio_account_sid}
    good = RequestValidator(settings.twilio_auth_token).compute_signature(ingest_url + STATUS_PATH, params)
    assert requests.post(ingest_url + STATUS_PATH, data=params, headers={"X-Twilio-Signature": good}, timeout=5).status_code == 200
    apply_kept_receipts(broker)
    assert status_of(message_id) == "delivered"


def test_receipt_signed_by_another_tenants_account_moves_nothing(api, workspace, broker):
    from common.crypto import seal
    from services.scheduler import reconciler

    # Given acme's message, sent through the deployment's account, and a second workspace that
    # has a Twilio account of its own (and so can sign receipts correctly)
    sid = "SM" + "d" * 32
    message_id = sent_message(workspace, sid)
    other_sid, other_token = "AC" + "f" * 32, "other-tenants-token"
    with transaction():
        other = fetch("INSERT INTO workspace (name) VALUES ('other') RETURNING id")[0][0]
        fetch("INSERT INTO channel_config (workspace_id, channel, provider, account_ref, credentials, sender_identity)"
              " VALUES (%s, 'sms', 'twilio', %s, %s, '+15005550010')",
              (other, other_sid, seal({"account_sid": other_sid, "auth_token": other_token})))
    # When that account signs receipts naming acme's message
    for status in ("failed", "delivered"):
        response = callback(api, sid, status, token=other_token, AccountSid=other_sid, ErrorCode="30008")
        assert response.status_code == 200  # a valid signature: kept, acknowledged
    apply_kept_receipts(broker)
    reconciler.sweep_receipts()
    # Then acme's message has not moved, and the receipts stay unapplied against the other account
    assert status_of(message_id) == "sent"
    assert history(message_id) == []
    with transaction():
        kept = fetch_dicts("SELECT provider_account, applied_at, message_id FROM provider_event WHERE provider_message_id = %s", (sid,))
    assert kept == [{"provider_account": other_sid, "applied_at": None, "message_id": None}] * 2
    # while acme's own account still can
    assert callback(api, sid, "delivered").status_code == 200
    apply_kept_receipts(broker)
    assert status_of(message_id) == "delivered"


def test_a_configured_accounts_receipts_move_only_its_own_workspaces_messages(api, workspace, broker):
    # Given an account a second workspace configured, and messages sent through it by acme (before
    # the account changed hands) and by that workspace
    account, token = "AC" + "1" * 32, "configured-token"
    other = configured_account(account, token, "+15005550011")
    acme = sent_message(workspace, "SM" + "1" * 32, account=account)
    own = sent_message({"id": other}, "SM" + "2" * 32, account=account)
    # When the account's token signs a receipt for each
    for sid in ("SM" + "1" * 32, "SM" + "2" * 32):
        assert callback(api, sid, "delivered", token=token, AccountSid=account).status_code == 200
    apply_kept_receipts(broker)
    # Then only the configuring workspace's own message moved
    assert [status_of(acme), status_of(own)] == ["sent", "delivered"]


def test_a_tenant_configuring_the_deployments_account_cannot_sign_for_it(api, workspace, broker):
    # Given acme's message through the deployment's account, which another workspace configured with its own token
    configured_account(settings.twilio_account_sid, "tenant-token", "+15005550012")
    message_id = sent_message(workspace, "SM" + "3" * 32)
    # Then that token's receipts are refused; the environment's token alone speaks for the account
    assert callback(api, "SM" + "3" * 32, "failed", token="tenant-token", ErrorCode="30008").status_code == 403
    assert status_of(message_id) == "sent"
    assert callback(api, "SM" + "3" * 32, "delivered").status_code == 200
    apply_kept_receipts(broker)
    assert status_of(message_id) == "delivered"


def test_account_sids_anyone_names_are_cached_within_a_bound(api, workspace, monkeypatch, broker):
    from common.providers import accounts

    monkeypatch.setattr(accounts, "MAX_CACHED_ACCOUNTS", 3)
    # When callers name many AccountSids that are nobody's
    strangers = [f"AC{n:032d}" for n in range(1, 7)]
    assert [callback(api, "SM" + "4" * 32, "delivered", AccountSid=sid).status_code for sid in strangers] == [403] * 6
    # Then the cache holds the newest few, and the deployment's account still verifies
    assert list(accounts._tokens) == strangers[-3:]
    message_id = sent_message(workspace, "SM" + "5" * 32)
    assert callback(api, "SM" + "5" * 32, "delivered").status_code == 200
    apply_kept_receipts(broker)
    assert status_of(message_id) == "delivered" and len(accounts._tokens) == 3
