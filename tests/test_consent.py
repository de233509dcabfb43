"""Consent: an inbound STOP holds on every later send (a campaign's too), START lifts it, HELP is
answered with the workspace's help text; urgent messages pass an opt-out only where the workspace
allows it; and the suppression list API adds, lists, filters, pages and lifts entries.

Against the real sandbox process (its Twilio, Graph API and WAHA imitations post signed inbound
webhooks to the session's ingest over HTTP), PostgreSQL, Redis and in-process workers. A 21610
answer and a 5.1.x bounce adding suppressions are tested with their channels (test_sms_channel.py,
test_email.py).
"""

from __future__ import annotations

from collections import Counter
from typing import Any
from urllib.parse import quote

import pytest
import requests

from common import apikeys, campaigns, intake, suppression
from common.config import settings
from common.db.connection import fetch, fetch_dicts, transaction
from tests.support import running_workers, status_of, wait_for

COUNTS = ("pending", "processing", "sent", "delivered", "read", "failed", "suppressed", "cancelled")
HELP_TEXT = "Acme alerts: help at https://acme.example/help. Reply STOP to opt out."  # sent as written: no short link


def fictional(n: int) -> str:
    """A valid number in the range NANPA keeps for fiction (555-0100 to 555-0199)."""
    return f"+1201555{100 + n:04d}"


def sms_inbound(sandbox, sender: str, body: str, sid: str | None = None) -> None:
    """The sandbox posts Twilio's signed inbound webhook for ``body`` from ``sender`` to ingest."""
    spec = {"from": sender, "body": body, **({"sid": sid} if sid else {})}
    answer = requests.post(f"{sandbox.url}/sandbox/twilio/inbound", json=spec, timeout=15)
    answer.raise_for_status()
    assert answer.json()["status"] == 200, answer.json()


def suppressions(workspace_id: int) -> list[tuple[str, str, str, str]]:
    with transaction():
        return [tuple(r) for r in fetch("SELECT channel, address, reason, source FROM suppression WHERE workspace_id = %s"
                                        " ORDER BY channel, address", (workspace_id,))]


def outbound_to(workspace_id: int, address: str) -> list[dict[str, Any]]:
    with transaction():
        return fetch_dicts("SELECT id, channel, from_addr, body, priority, status, tags FROM message WHERE workspace_id = %s"
                           " AND direction = 'outbound' AND to_addr = %s ORDER BY id", (workspace_id, address))


def post_message(api, workspace: dict, **fields: Any) -> int:
    response = api.post("/v1/messages", json={"channel": "sms", "body": "hello", **fields}, headers=workspace["auth"])
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def campaign_view(api, workspace: dict, campaign_id: int) -> dict[str, Any]:
    view = api.get(f"/v1/campaigns/{campaign_id}", headers=workspace["auth"]).get_json()
    progress = view["progress"]
    assert sum(progress[name] for name in COUNTS) == progress["total"], progress  # the counts add up at every read
    return view


def set_settings(api, workspace: dict, **changes: Any) -> dict[str, Any]:
    response = api.patch("/v1/workspace/settings", json=changes, headers=workspace["auth"])
    assert response.status_code == 200, response.get_json()
    return response.get_json()


# --- STOP and START on SMS -------------------------------------------------------------------------


def test_an_sms_stop_keeps_a_campaign_from_the_number_and_start_lifts_it(api, workspace, sandbox, broker):
    # Given a customer who texted STOP
    stopped, others = fictional(1), [fictional(2), fictional(3)]
    sms_inbound(sandbox, stopped, " Stop. ")
    assert suppressions(workspace["id"]) == [("sms", stopped, "opt_out", "inbound:sms")]
    # When a campaign to that number and two others runs
    created = api.post("/v1/campaigns", json={"name": "Winter", "channel": "sms", "body": "Winter sale",
                                              "recipients": [{"to": n} for n in [*others[:1], stopped, *others[1:]]],
                                              "start": True}, headers=workspace["auth"])
    assert created.status_code == 201, created.get_json()
    campaign_id = created.get_json()["id"]
    with running_workers(broker):
        def completed() -> dict[str, Any] | None:
            campaigns.tick()
            view = campaign_view(api, workspace, campaign_id)
            return view if view["status"] == "completed" else None
        view = wait_for(completed, timeout=30, interval=0.2, what="the campaign completed")
    # Then the stopped number ended suppressed and never reached the provider; the others got it once
    assert Counter(m["to"] for m in sandbox.messages()) == Counter(others)
    [message] = outbound_to(workspace["id"], stopped)
    assert message["status"] == "suppressed"
    progress = view["progress"]
    assert (progress["total"], progress["suppressed"], progress["sent"] + progress["delivered"]) == (3, 1, 2)
    # And when the customer texts START, a later message to the number is sent
    sms_inbound(sandbox, stopped, "start")
    assert suppressions(workspace["id"]) == []
    with running_workers(broker):
        again = post_message(api, workspace, to=stopped, body="Welcome back")
        wait_for(lambda: status_of(again) == "delivered", what="the message after START delivered")
    assert [m["body"] for m in sandbox.messages(to=stopped)] == ["Welcome back"]


def test_a_stop_holds_for_a_message_already_routed_and_waiting_to_be_sent(api, workspace, sandbox, broker):
    # Given a message that routing let through before its number texted STOP (it waits routed, as
    # for a send token or a retry)
    number = fictional(20)
    waiting = post_message(api, workspace, to=number, body="Your December offer")
    with transaction():
        fetch("UPDATE message SET status = 'routed' WHERE id = %s", (waiting,))
    sms_inbound(sandbox, number, "STOP")
    # When the sender is handed it
    from common import dispatch

    with running_workers(broker):
        dispatch.to_stage("sms", "normal", [waiting])
        # Then the sender's claim finds the suppression: the message ends suppressed, unsent
        wait_for(lambda: status_of(waiting) == "suppressed", what="the routed message suppressed")
    assert sandbox.messages(to=number) == []


def test_start_lifts_only_an_opt_out_never_an_operators_entry_or_a_bounce(api, workspace, sandbox):
    # Given one number suppressed by the operator and another by a person's own STOP
    manual, stopped = fictional(4), fictional(5)
    added = api.post("/v1/suppressions", json={"suppressions": [{"channel": "sms", "address": manual}]},
                     headers=workspace["auth"])
    assert added.status_code == 201, added.get_json()
    sms_inbound(sandbox, stopped, "STOPALL")
    # When both text START (and the second one again: Twilio retried the webhook)
    sms_inbound(sandbox, manual, "START")
    sms_inbound(sandbox, stopped, "UNSTOP!", sid="SM" + "5" * 32)
    sms_inbound(sandbox, stopped, "UNSTOP!", sid="SM" + "5" * 32)
    # Then only the person's own opt-out is lifted
    assert suppressions(workspace["id"]) == [("sms", manual, "manual", "api")]


def test_a_keyword_inside_a_sentence_is_only_a_message(workspace, sandbox):
    sms_inbound(sandbox, fictional(6), "please don't stop sending these")
    sms_inbound(sandbox, fictional(6), "help me with my order")
    assert suppressions(workspace["id"]) == [] and outbound_to(workspace["id"], fictional(6)) == []


# --- WhatsApp ------------------------------------------------------------------------------------


def test_a_whatsapp_stop_suppresses_that_channel_only(api, workspace, sandbox, broker):
    # Given a customer who wrote STOP on WhatsApp Cloud
    customer = "+16502530071"
    answer = requests.post(f"{sandbox.url}/sandbox/whatsapp_cloud/inbound", json={"from": customer, "text": "STOP"},
                           timeout=10)
    assert answer.status_code == 200 and answer.json()["ingest_status"] == 200, answer.text
    assert suppressions(workspace["id"]) == [("whatsapp_cloud", customer, "opt_out", "inbound:whatsapp_cloud")]
    # When a WhatsApp message and an SMS go to them
    with running_workers(broker):
        whatsapp = post_message(api, workspace, channel="whatsapp_cloud", to=customer, body="On WhatsApp")
        sms = post_message(api, workspace, to=customer, body="By SMS")
        wait_for(lambda: status_of(whatsapp) == "suppressed", what="the WhatsApp message suppressed")
        wait_for(lambda: status_of(sms) == "delivered", what="the SMS delivered")
    # Then only the SMS reached a provider
    assert [(m["channel"], m["body"]) for m in sandbox.messages(to=customer)] == [("sms", "By SMS")]


def test_a_stop_through_a_qr_session_suppresses_the_sender_on_whatsapp_qr(workspace, sandbox):
    # Given the deployment's default QR session, working
    session = requests.post(f"{sandbox.url}/sandbox/waha/sessions/default", json={"status": "WORKING"}, timeout=10)
    assert session.status_code < 300 and session.json()["ingest_status"] == 200, session.text
    # When a customer writes "Unsubscribe" to it
    answer = requests.post(f"{sandbox.url}/sandbox/waha/inbound", json={"from": "+14155550172", "text": "Unsubscribe"},
                           timeout=10)
    assert answer.json()["ingest_status"] == 200, answer.text
    # Then their number is suppressed on that channel
    assert suppressions(workspace["id"]) == [("whatsapp_qr", "+14155550172", "opt_out", "inbound:whatsapp_qr")]


# --- HELP ------------------------------------------------------------------------------------------


def test_help_is_answered_once_with_the_help_text_and_not_at_all_without_one(api, workspace, sandbox, broker):
    # Given a workspace with a help text
    assert set_settings(api, workspace, help_text=HELP_TEXT) == {"help_text": HELP_TEXT, "urgent_bypasses_opt_out": False,
                                                                  "compat_identities": []}
    asker = fictional(7)
    with running_workers(broker):
        # When a customer texts HELP, and Twilio delivers the webhook twice
        sms_inbound(sandbox, asker, "help", sid="SM" + "7" * 32)
        sms_inbound(sandbox, asker, "help", sid="SM" + "7" * 32)
        # Then one urgent answer goes out from the number they wrote to, with the help text
        [answer] = outbound_to(workspace["id"], asker)
        wait_for(lambda: status_of(answer["id"]) == "delivered", what="the help answer delivered")
    assert (answer["priority"], answer["from_addr"], answer["body"]) == ("urgent", settings.twilio_from, HELP_TEXT)
    assert [(m["body"], m["from"]) for m in sandbox.messages(to=asker)] == [(HELP_TEXT, settings.twilio_from)]
    # And once the help text is removed, INFO is not answered
    assert set_settings(api, workspace, help_text=None)["help_text"] is None
    sms_inbound(sandbox, fictional(8), "INFO")
    assert outbound_to(workspace["id"], fictional(8)) == []


def test_help_after_a_stop_is_still_answered_but_nothing_else_goes_out(api, workspace, sandbox, broker):
    # Given a workspace with a help text and a customer who texted STOP
    set_settings(api, workspace, help_text=HELP_TEXT)
    asker = fictional(9)
    sms_inbound(sandbox, asker, "STOP")
    with running_workers(broker):
        # When they text HELP, and the workspace sends them an urgent code too
        sms_inbound(sandbox, asker, "HELP")
        [answer] = outbound_to(workspace["id"], asker)
        code = post_message(api, workspace, to=asker, body="Your code is 123456", priority="urgent")
        # Then the help answer goes out (carriers expect HELP answered after a STOP), the code does not
        wait_for(lambda: status_of(answer["id"]) == "delivered", what="the help answer delivered")
        wait_for(lambda: status_of(code) == "suppressed", what="the urgent code suppressed")
    assert [m["body"] for m in sandbox.messages(to=asker)] == [HELP_TEXT]


# --- urgent messages and opt-outs ------------------------------------------------------------------


def queued(workspace_id: int, to: str, priority: str) -> int:
    with transaction():
        row = intake.insert(workspace_id, {"channel": "sms", "to": to, "body": "code 1234", "priority": priority}, None)
        assert row is not None
        fetch("UPDATE message SET status = 'queued' WHERE id = %s", (row["id"],))
    return row["id"]


@pytest.mark.parametrize("bypass", [False, True])
def test_an_urgent_message_passes_only_an_opt_out_and_only_where_the_workspace_allows(workspace, bypass):
    # Given three numbers suppressed for different reasons, and the workspace's choice
    opted_out, bounced, manual = fictional(10), fictional(11), fictional(12)
    with transaction():
        suppression.add([{"workspace_id": workspace["id"], "channel": "sms", "address": a, "reason": r, "source": "test"}
                         for a, r in ((opted_out, "opt_out"), (bounced, "bounce"), (manual, "manual"))])
        fetch("UPDATE workspace SET urgent_bypasses_opt_out = %s WHERE id = %s", (bypass, workspace["id"]))
        other = apikeys.create_workspace("other")  # another workspace's opt-out of the same number, no bypass
        suppression.add([{"workspace_id": other, "channel": "sms", "address": opted_out, "reason": "opt_out"}])
    urgent = queued(workspace["id"], opted_out, "urgent")
    normal = queued(workspace["id"], opted_out, "normal")
    past_others = [queued(workspace["id"], a, "urgent") for a in (bounced, manual)]
    elsewhere = queued(other, opted_out, "urgent")
    broadcast = queued(workspace["id"], opted_out, "urgent")  # an urgent campaign's: bulk sending, never let through
    with transaction():
        campaign = fetch("INSERT INTO campaign (workspace_id, name, message) VALUES (%s, 'alerts', '{}') RETURNING id", (workspace["id"],))[0][0]
        fetch("UPDATE message SET campaign_id = %s WHERE id = %s", (campaign, broadcast))
    # When routing checks the batch
    with transaction():
        done = suppression.suppress_messages([urgent, normal, *past_others, elsewhere, broadcast], "queued")
    # Then the urgent one to the opt-out goes on only with the workspace's bypass; nothing else does
    assert done == ({normal, *past_others, elsewhere, broadcast} if bypass else {urgent, normal, *past_others, elsewhere, broadcast})


def test_an_urgent_code_reaches_an_opted_out_number_when_the_workspace_allows(api, workspace, sandbox, broker):
    # Given a number that texted STOP, and a workspace that lets urgent messages through opt-outs
    stopped = fictional(13)
    sms_inbound(sandbox, stopped, "QUIT")
    set_settings(api, workspace, urgent_bypasses_opt_out=True)
    with running_workers(broker):
        # When an urgent code and a normal message go to it
        code = post_message(api, workspace, to=stopped, body="Your code is 4242", priority="urgent")
        newsletter = post_message(api, workspace, to=stopped, body="News", priority="normal")
        wait_for(lambda: status_of(code) == "delivered", what="the urgent code delivered")
        wait_for(lambda: status_of(newsletter) == "suppressed", what="the normal message suppressed")
    # Then only the code reached the provider
    assert [m["body"] for m in sandbox.messages(to=stopped)] == ["Your code is 4242"]


# --- the suppression list API ----------------------------------------------------------------------


def test_suppressions_are_added_normalised_and_an_existing_entry_keeps_its_reason(api, workspace):
    entries = [{"channel": "sms", "address": "+1 (201) 555-0120", "reason": "bounce", "source": "crm"},
               {"channel": "email", "address": "Ada@Example.COM"}]
    first = api.post("/v1/suppressions", json={"suppressions": entries}, headers=workspace["auth"])
    assert first.status_code == 201, first.get_json()
    body = first.get_json()
    assert body["added"] == 2
    assert [(s["channel"], s["address"], s["reason"], s["source"]) for s in body["suppressions"]] == [
        ("sms", "+12015550120", "bounce", "crm"), ("email", "Ada@example.com", "manual", "api")]
    # The same address again, for another reason: nothing new, the first entry stands
    again = api.post("/v1/suppressions", json={"suppressions": [{"channel": "sms", "address": "+12015550120",
                                                                 "reason": "opt_out"}]}, headers=workspace["auth"])
    assert again.status_code == 200
    assert (again.get_json()["added"], again.get_json()["suppressions"][0]["reason"]) == (0, "bounce")


@pytest.mark.parametrize(("entry", "field", "said"), [
    ({"channel": "sms", "address": "not a number"}, "suppressions[0].address", "E.164"),
    ({"channel": "email", "address": "nobody"}, "suppressions[0].address", "email address"),
    ({"channel": "sms", "address": "+12015550121", "reason": "because"}, "suppressions[0].reason", "provider_21610"),
    ({"channel": "fax", "address": "+12015550121"}, "suppressions[0].channel", "whatsapp_qr"),
    ({"channel": "sms"}, "suppressions[0].address", "required"),
    ({"channel": "sms", "address": "+12015550121", "colour": "red"}, "suppressions[0].colour", "accepted fields"),
])
def test_a_bad_suppression_is_422_naming_the_item_and_adds_nothing(api, workspace, entry, field, said):
    good = {"channel": "sms", "address": "+12015550122"}
    response = api.post("/v1/suppressions", json={"suppressions": [good, entry]}, headers=workspace["auth"])
    error = response.get_json()["error"]
    assert response.status_code == 422 and error["field"] == field.replace("0", "1") and said in error["message"], error
    assert suppressions(workspace["id"]) == []


def test_bad_requests_to_the_list_are_4xx(api, workspace):
    auth = workspace["auth"]
    assert api.post("/v1/suppressions", json={"suppressions": []}, headers=auth).status_code == 422
    assert api.post("/v1/suppressions", json=[{"channel": "sms"}], headers=auth).status_code == 400
    for query in ("channel=fax", "reason=bored", "limit=0", "limit=x", "cursor=nonsense", "channel=sms&address=12",
                  "address=%00"):
        assert api.get(f"/v1/suppressions?{query}", headers=auth).status_code == 422, query
    assert api.delete("/v1/suppressions?address=%2B12015550123", headers=auth).status_code == 422
    assert api.delete("/v1/suppressions?channel=sms", headers=auth).status_code == 422
    assert api.get("/v1/suppressions").status_code == 401


def test_the_list_is_paged_newest_first_and_filtered(api, workspace):
    # Given seven entries added over three requests
    auth = workspace["auth"]
    batches = [[{"channel": "sms", "address": fictional(20 + n)} for n in range(3)],
               [{"channel": "email", "address": f"p{n}@example.com", "reason": "complaint"} for n in range(2)],
               [{"channel": "whatsapp_cloud", "address": fictional(20), "reason": "opt_out"},
                {"channel": "sms", "address": fictional(30), "reason": "opt_out"}]]
    for batch in batches:
        assert api.post("/v1/suppressions", json={"suppressions": batch}, headers=auth).status_code == 201
    # When it is read three at a time
    pages, cursor = [], None
    while True:
        page = api.get("/v1/suppressions?limit=3" + (f"&cursor={cursor}" if cursor else ""), headers=auth).get_json()
        pages.append([(s["channel"], s["address"]) for s in page["suppressions"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    # Then every entry comes once, the latest request's first
    assert [len(p) for p in pages] == [3, 3, 1]
    seen = [entry for p in pages for entry in p]
    assert len(set(seen)) == 7 and set(seen[:2]) == {("whatsapp_cloud", fictional(20)), ("sms", fictional(30))}
    assert set(seen[-3:]) == {("sms", fictional(20 + n)) for n in range(3)}

    def listed(query: str) -> set[tuple[str, str]]:
        response = api.get(f"/v1/suppressions?{query}", headers=auth)
        assert response.status_code == 200, response.get_json()
        return {(s["channel"], s["address"]) for s in response.get_json()["suppressions"]}

    # And filters narrow it: by channel, by reason, by an address written any way, and together
    assert listed("channel=email") == {("email", "p0@example.com"), ("email", "p1@example.com")}
    assert listed("reason=opt_out") == {("whatsapp_cloud", fictional(20)), ("sms", fictional(30))}
    assert listed("address=" + quote("+1 201 555 0120")) == {("sms", fictional(20)), ("whatsapp_cloud", fictional(20))}
    assert listed("channel=sms&reason=opt_out&address=" + quote(fictional(30))) == {("sms", fictional(30))}
    # And another workspace sees none of them
    with transaction():
        other = apikeys.issue(apikeys.create_workspace("other"))
    assert api.get("/v1/suppressions", headers={"Authorization": f"Bearer {other}"}).get_json()["suppressions"] == []


def test_delete_lifts_an_entry_whatever_its_reason_and_is_404_when_not_suppressed(api, workspace):
    auth = workspace["auth"]
    api.post("/v1/suppressions", json={"suppressions": [{"channel": "sms", "address": fictional(40), "reason": "bounce"},
                                                        {"channel": "sms", "address": fictional(41)}]}, headers=auth)
    removed = api.delete(f"/v1/suppressions?channel=sms&address={quote(fictional(40))}", headers=auth)
    assert removed.status_code == 200, removed.get_json()
    assert (removed.get_json()["address"], removed.get_json()["reason"]) == (fictional(40), "bounce")
    assert api.delete(f"/v1/suppressions?channel=sms&address={quote(fictional(40))}", headers=auth).status_code == 404
    assert api.delete(f"/v1/suppressions?channel=email&address={quote(fictional(41))}", headers=auth).status_code == 422
    # A "+" left unencoded in the query arrives as a space: it is still the number
    assert api.delete(f"/v1/suppressions?channel=sms&address={fictional(41)}", headers=auth).status_code == 200
    assert suppressions(workspace["id"]) == []


def test_workspace_settings_default_off_and_refuse_bad_values(api, workspace):
    auth = workspace["auth"]
    assert api.get("/v1/workspace/settings", headers=auth).get_json() == {"help_text": None, "urgent_bypasses_opt_out": False,
                                                                            "compat_identities": []}
    for bad, field in (({"urgent_bypasses_opt_out": "yes"}, "urgent_bypasses_opt_out"),
                       ({"urgent_bypasses_opt_out": None}, "urgent_bypasses_opt_out"),
                       ({"help_text": ""}, "help_text"), ({"help_text": "a\x00b"}, "help_text"),
                       ({"help_text": "x" * 1601}, "help_text"), ({"theme": "dark"}, "theme")):
        response = api.patch("/v1/workspace/settings", json=bad, headers=auth)
        assert response.status_code == 422 and response.get_json()["error"]["field"] == field, (bad, response.get_json())
    assert set_settings(api, workspace, urgent_bypasses_opt_out=True) == {"help_text": None, "urgent_bypasses_opt_out": True,
                                                                           "compat_identities": []}
    assert set_settings(api, workspace, help_text="Line 1\nLine 2")["urgent_bypasses_opt_out"] is True  # the other stays


def test_a_fallback_route_moves_past_a_channel_the_address_opted_out_of(api, workspace, sandbox, broker):
    # Given a customer who opted out of WhatsApp but not of SMS
    customer = "+16502530088"
    with transaction():
        suppression.add([{"workspace_id": workspace["id"], "channel": "whatsapp_cloud", "address": customer,
                          "reason": "opt_out", "source": "test"}])
    with running_workers(broker):
        # When a message routed WhatsApp first, then SMS, goes to them, and one by WhatsApp alone
        both = post_message(api, workspace, channel=None, channels=["whatsapp_cloud", "sms"], to=customer, body="Either way")
        only = post_message(api, workspace, channel="whatsapp_cloud", to=customer, body="WhatsApp only")
        # Then consent is per channel: the first goes by SMS, the second ends suppressed
        wait_for(lambda: status_of(both) == "delivered", what="the fallback message delivered by SMS")
        wait_for(lambda: status_of(only) == "suppressed", what="the WhatsApp-only message suppressed")
    assert [(m["channel"], m["body"]) for m in sandbox.messages(to=customer)] == [("sms", "Either way")]
