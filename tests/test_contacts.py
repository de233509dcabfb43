"""Contacts: the API (upsert by any address, numbers normalised, bad fields refused by name,
one workspace never sees another's) and their quiet hours and time zone at routing, with a
controlled clock: the message's own window, else the contact's, else the workspace's; the
contact's zone, else the number's, else the workspace's."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime

from common import apikeys
from common.db.connection import fetch, fetch_dicts, release_connection, transaction
from services.ingest.app import create_app
from services.routing import channels
from services.routing.channels import hold_quiet
from tests.test_quiet_routing import LATE_EVENING, queued, row

LONDON_NUMBER = "+442079460123"  # the number pins down Europe/London: 23:00 there at LATE_EVENING
OTHER_LONDON_NUMBER = "+442079460124"
ANY_ZONE_NUMBER = "+15005550006"  # spans every +1 zone: the number says nothing


def upsert(api, workspace, **fields):
    return api.post("/v1/contacts", json=fields, headers=workspace["auth"])


def contact_rows() -> list[dict]:
    with transaction():
        return fetch_dicts("SELECT c.id, c.workspace_id, a.channel, a.address FROM contact c"
                           " LEFT JOIN contact_address a ON a.contact_id = c.id ORDER BY c.id, a.channel")


def workspace_quiet(workspace_id: int, hours: str | None, timezone: str = "UTC", urgent: bool = False) -> None:
    with transaction():
        fetch("UPDATE workspace SET quiet_hours = %s, timezone = %s, quiet_hours_urgent = %s WHERE id = %s",
              (hours, timezone, urgent, workspace_id))


def other_workspace() -> dict:
    with transaction():
        key = apikeys.issue(apikeys.create_workspace("globex"))
    return {"auth": {"Authorization": f"Bearer {key}"}}


# --- the API ------------------------------------------------------------------------------------

def test_a_contact_is_created_and_then_updated_by_any_of_its_addresses(api, workspace):
    # Given a new contact, its number written loosely and its window loosely too
    made = upsert(api, workspace, addresses={"sms": "+44 20 7946 0123"}, name="Ada", timezone="Asia/Tokyo",
                  quiet_hours="22:00-7:00")
    assert made.status_code == 201
    ada = made.get_json()
    assert ada["addresses"] == {"sms": LONDON_NUMBER} and ada["quiet_hours"] == "22:00-07:00"
    assert ada["attributes"] == {} and ada["locale"] is None
    # When the same number is posted again with another address and more fields
    again = upsert(api, workspace, addresses={"sms": LONDON_NUMBER, "http": "crm-42"}, locale="en-GB",
                   attributes={"plan": "pro", "seats": 3, "vip": True})
    # Then that contact is updated (200): the fields given change, the others stay
    assert again.status_code == 200
    updated = again.get_json()
    assert updated["id"] == ada["id"] and updated["name"] == "Ada" and updated["timezone"] == "Asia/Tokyo"
    assert updated["addresses"] == {"sms": LONDON_NUMBER, "http": "crm-42"} and updated["locale"] == "en-GB"
    assert updated["attributes"] == {"plan": "pro", "seats": 3, "vip": True}
    # And the http address alone finds it too, its number replaced on the sms channel
    third = upsert(api, workspace, addresses={"http": "crm-42", "sms": OTHER_LONDON_NUMBER})
    assert third.status_code == 200 and third.get_json()["addresses"]["sms"] == OTHER_LONDON_NUMBER
    assert api.get(f"/v1/contacts/{ada['id']}", headers=workspace["auth"]).get_json() == third.get_json()
    assert contact_rows() == [{"id": ada["id"], "workspace_id": workspace["id"], "channel": "http", "address": "crm-42"},
                              {"id": ada["id"], "workspace_id": workspace["id"], "channel": "sms", "address": OTHER_LONDON_NUMBER}]


def test_bad_fields_are_refused_naming_the_field_and_nothing_is_stored(api, workspace):
    cases = [
        ({"addresses": {"sms": "12345"}}, "addresses.sms"),
        ({"addresses": {"sms": "+15551230001"}}, "addresses.sms"),  # a number no one is assigned
        ({"addresses": {}}, "addresses"),
        ({"addresses": {"fax": "+442079460000"}}, "addresses"),
        ({"addresses": {"email": "not an address"}}, "addresses.email"),
        ({"addresses": {"sms": LONDON_NUMBER}, "timezone": "Mars/Olympus"}, "timezone"),
        ({"addresses": {"sms": LONDON_NUMBER}, "quiet_hours": "9pm-8am"}, "quiet_hours"),
        ({"addresses": {"sms": LONDON_NUMBER}, "quiet_hours": "25:00-08:00"}, "quiet_hours"),
        ({"addresses": {"sms": LONDON_NUMBER}, "locale": "English (UK)"}, "locale"),
        ({"addresses": {"sms": LONDON_NUMBER}, "attributes": None}, "attributes"),
        ({"addresses": {"sms": LONDON_NUMBER}, "attributes": {"score": float("nan")}}, "attributes"),
        ({"addresses": {"sms": LONDON_NUMBER}, "name": "Ada\x00"}, "name"),
        ({"name": "Ada"}, "addresses"),
    ]
    for fields, field in cases:
        refused = api.post("/v1/contacts", data=json.dumps(fields), content_type="application/json",
                           headers=workspace["auth"])
        assert refused.status_code == 422, fields
        assert refused.get_json()["error"]["field"] == field, fields
    assert contact_rows() == []


def test_patch_replaces_addresses_per_channel_and_clears_what_is_null(api, workspace):
    # Given a contact with a number, an http id, a zone and a window
    ada = upsert(api, workspace, addresses={"sms": LONDON_NUMBER, "http": "crm-42"}, name="Ada",
                 timezone="Europe/Paris", quiet_hours="22:00-07:00").get_json()
    path = f"/v1/contacts/{ada['id']}"
    # When its http id is replaced, its zone cleared and its window turned off
    changed = api.patch(path, json={"addresses": {"http": "crm-7"}, "timezone": None, "quiet_hours": "off"},
                        headers=workspace["auth"])
    # Then only those change
    assert changed.status_code == 200
    view = changed.get_json()
    assert view["addresses"] == {"sms": LONDON_NUMBER, "http": "crm-7"} and view["name"] == "Ada"
    assert view["timezone"] is None and view["quiet_hours"] == "off"
    # And a null address removes that channel's, a number is normalised, and bad input is refused by name
    removed = api.patch(path, json={"addresses": {"http": None, "sms": "+44 (0)20 7946 0124"}}, headers=workspace["auth"])
    assert removed.get_json()["addresses"] == {"sms": OTHER_LONDON_NUMBER}
    refused = api.patch(path, json={"addresses": {"sms": "+4420"}}, headers=workspace["auth"])
    assert refused.status_code == 422 and refused.get_json()["error"]["field"] == "addresses.sms"
    assert api.patch(path, json={"attributes": None}, headers=workspace["auth"]).status_code == 422
    assert api.get(path, headers=workspace["auth"]).get_json()["addresses"] == {"sms": OTHER_LONDON_NUMBER}
    assert api.patch("/v1/contacts/999", json={"name": "Nobody"}, headers=workspace["auth"]).status_code == 404


def test_an_address_belongs_to_one_contact_only(api, workspace):
    # Given two contacts
    ada = upsert(api, workspace, addresses={"sms": LONDON_NUMBER}, name="Ada").get_json()
    bob = upsert(api, workspace, addresses={"http": "crm-7"}, name="Bob").get_json()
    # When one upsert names an address of each, or a change gives Bob Ada's number
    both = upsert(api, workspace, addresses={"sms": LONDON_NUMBER, "http": "crm-7"}, name="Merged?")
    stolen = api.patch(f"/v1/contacts/{bob['id']}", json={"addresses": {"sms": LONDON_NUMBER}, "name": "Bobby"},
                       headers=workspace["auth"])
    # Then both are refused (409, naming the address) and nothing changed
    assert both.status_code == 409 and both.get_json()["error"]["code"] == "address_taken"
    assert stolen.status_code == 409 and stolen.get_json()["error"]["field"] == "addresses.sms"
    assert f"contact {ada['id']}" in stolen.get_json()["error"]["message"]
    for contact in (ada, bob):
        assert api.get(f"/v1/contacts/{contact['id']}", headers=workspace["auth"]).get_json() == contact


def test_concurrent_upserts_of_one_new_address_make_one_contact(broker, workspace):
    # Given eight requests for the same new number, released together
    app = create_app()
    start = threading.Barrier(8)
    codes: list[int] = []

    def post(index: int) -> None:
        client = app.test_client()
        start.wait()
        try:
            codes.append(client.post("/v1/contacts", json={"addresses": {"sms": LONDON_NUMBER}, "attributes": {"n": index}},
                                     headers=workspace["auth"]).status_code)
        finally:
            release_connection()

    threads = [threading.Thread(target=post, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    # Then one created the contact and the others updated it
    assert sorted(codes) == [200] * 7 + [201]
    assert len(contact_rows()) == 1


def test_another_workspace_never_sees_a_contact(api, workspace):
    # Given a contact of acme, and globex, which has the same number as a contact of its own
    ada = upsert(api, workspace, addresses={"sms": LONDON_NUMBER}, name="Ada").get_json()
    globex = other_workspace()
    theirs = upsert(api, globex, addresses={"sms": LONDON_NUMBER}, name="Someone else")
    assert theirs.status_code == 201 and theirs.get_json()["id"] != ada["id"]
    # Then globex cannot read, change or delete acme's contact
    path = f"/v1/contacts/{ada['id']}"
    assert api.get(path, headers=globex["auth"]).status_code == 404
    assert api.patch(path, json={"name": "Eve"}, headers=globex["auth"]).status_code == 404
    assert api.delete(path, headers=globex["auth"]).status_code == 404
    assert api.get(path, headers=workspace["auth"]).get_json() == ada
    # And a read-only key of acme reads but does not write
    with transaction():
        reader = {"Authorization": f"Bearer {apikeys.issue(workspace['id'], ('messages:read',))}"}
    assert api.get(path, headers=reader).status_code == 200
    assert upsert(api, {"auth": reader}, addresses={"sms": LONDON_NUMBER}).status_code == 403
    assert api.delete(path, headers=reader).status_code == 403


def test_a_deleted_contact_is_gone_with_its_addresses(api, workspace):
    ada = upsert(api, workspace, addresses={"sms": LONDON_NUMBER, "http": "crm-42"}, name="Ada").get_json()
    deleted = api.delete(f"/v1/contacts/{ada['id']}", headers=workspace["auth"])
    assert deleted.status_code == 200 and deleted.get_json() == ada
    assert api.get(f"/v1/contacts/{ada['id']}", headers=workspace["auth"]).status_code == 404
    assert api.delete(f"/v1/contacts/{ada['id']}", headers=workspace["auth"]).status_code == 404
    assert contact_rows() == []
    # The number is free again: posting it makes a new contact
    assert upsert(api, workspace, addresses={"sms": LONDON_NUMBER}).status_code == 201


# --- quiet hours at routing ---------------------------------------------------------------------

def held_detail(message_id: int) -> dict:
    hold = row(message_id)["events"][-1]
    assert hold["status"] == "scheduled"
    return hold["detail"]


def test_the_contacts_own_zone_wins_over_the_numbers(api, workspace):
    # Given the workspace's 21:00-08:00 in New York, and two contacts with their own zones
    workspace_quiet(workspace["id"], "21:00-08:00", "America/New_York")
    upsert(api, workspace, addresses={"sms": LONDON_NUMBER}, timezone="America/New_York")  # a Londoner abroad
    upsert(api, workspace, addresses={"sms": ANY_ZONE_NUMBER}, timezone="Europe/London")
    abroad = queued(workspace["id"], LONDON_NUMBER)  # 18:00 in New York: not quiet there
    at_home = queued(workspace["id"], OTHER_LONDON_NUMBER)  # no contact: the number's zone, 23:00 London
    in_london = queued(workspace["id"], ANY_ZONE_NUMBER)  # the contact's zone, 23:00 London
    with transaction():
        held = hold_quiet([abroad, at_home, in_london], now=LATE_EVENING)
    # Then each is read in its recipient's zone
    assert held == {at_home, in_london}
    assert row(abroad)["status"] == "queued"
    assert held_detail(at_home)["timezone_from"] == "phone"
    detail = held_detail(in_london)
    assert detail["timezone"] == "Europe/London" and detail["timezone_from"] == "contact"
    assert row(in_london)["due_at"] == datetime(2026, 12, 2, 8, 0, tzinfo=UTC)


def test_a_contacts_quiet_hours_override_the_workspaces(api, workspace):
    # Given a workspace without quiet hours, and a contact who wants none from 17:00 to 19:00 New York time
    workspace_quiet(workspace["id"], None, "Europe/London")
    upsert(api, workspace, addresses={"sms": ANY_ZONE_NUMBER}, timezone="America/New_York", quiet_hours="17:00-19:00")
    upsert(api, workspace, addresses={"http": "crm-42"}, quiet_hours="09:00-10:00")  # in the workspace's zone
    to_contact = queued(workspace["id"], ANY_ZONE_NUMBER)
    urgent = queued(workspace["id"], ANY_ZONE_NUMBER, "urgent")
    with transaction():
        crm = fetch("INSERT INTO message (workspace_id, channel, to_addr, body, status, priority)"
                    " VALUES (%s, 'http', 'crm-42', 'hello', 'queued', 'bulk') RETURNING id", (workspace["id"],))[0][0]
    # When routing looks at them at 18:00 New York time (23:00 London)
    with transaction():
        held = hold_quiet([to_contact, urgent, crm], now=LATE_EVENING)
    # Then the contact's window holds the message until 19:00 there; urgent goes, as past the workspace's
    assert held == {to_contact}
    assert row(to_contact)["due_at"] == datetime(2026, 12, 2, 0, 0, tzinfo=UTC)
    assert held_detail(to_contact) | {"until": None} == {
        "held": "quiet_hours", "until": None, "window": "17:00-19:00", "window_from": "contact",
        "timezone": "America/New_York", "timezone_from": "contact"}
    # And where the workspace's window would hold (21:00-08:00), the contact's own (09:00-10:00) does not
    workspace_quiet(workspace["id"], "21:00-08:00", "Europe/London")
    with transaction():
        assert hold_quiet([crm], now=LATE_EVENING) == set()


def test_a_contacts_off_lets_a_message_go_but_the_messages_own_window_wins(api, workspace):
    # Given a workspace quiet 21:00-08:00 in London, one contact who turned quiet hours off and one with a window
    workspace_quiet(workspace["id"], "21:00-08:00", "Europe/London")
    upsert(api, workspace, addresses={"sms": LONDON_NUMBER}, quiet_hours="off")
    upsert(api, workspace, addresses={"sms": ANY_ZONE_NUMBER}, timezone="Europe/London", quiet_hours="22:00-07:00")
    to_off = queued(workspace["id"], LONDON_NUMBER)
    stranger = queued(workspace["id"], OTHER_LONDON_NUMBER)  # no contact: the workspace's window
    own_window = queued(workspace["id"], LONDON_NUMBER, quiet="18:00-23:30")
    own_off = queued(workspace["id"], ANY_ZONE_NUMBER, quiet="off")
    # When routing looks at them at 23:00 London time
    with transaction():
        held = hold_quiet([to_off, stranger, own_window, own_off], now=LATE_EVENING)
    # Then the contact's "off" lets its message go, and the message's own window (or "off") beats the contact's
    assert held == {stranger, own_window}
    assert held_detail(stranger)["window_from"] == "workspace"
    assert held_detail(own_window)["window"] == "18:00-23:30" and held_detail(own_window)["window_from"] == "message"
    assert row(own_window)["due_at"] == datetime(2026, 12, 1, 23, 30, tzinfo=UTC)
    assert row(to_off)["status"] == row(own_off)["status"] == "queued"


def test_another_workspaces_contact_does_not_apply_and_a_batch_is_read_in_one_query(api, workspace, monkeypatch):
    # Given globex's contact with acme's recipient's number, its quiet hours off and its own zone
    workspace_quiet(workspace["id"], "21:00-08:00", "Europe/London")
    upsert(api, other_workspace(), addresses={"sms": LONDON_NUMBER}, quiet_hours="off", timezone="Asia/Tokyo")
    upsert(api, workspace, addresses={"sms": ANY_ZONE_NUMBER}, quiet_hours="off")
    ours = [queued(workspace["id"], LONDON_NUMBER) for _ in range(3)]
    ours += [queued(workspace["id"], ANY_ZONE_NUMBER) for _ in range(3)]
    reads: list[str] = []
    real = channels.fetch_dicts

    def counted(sql, *args, **kwargs):
        reads.append(sql)
        return real(sql, *args, **kwargs)

    monkeypatch.setattr(channels, "fetch_dicts", counted)
    # When acme's messages are routed in one batch
    with transaction():
        held = hold_quiet(ours, now=LATE_EVENING)
    # Then globex's contact changes nothing for acme (the workspace's window in the number's zone), and
    # the windows of the whole batch came from one query
    assert held == set(ours[:3])
    assert held_detail(ours[0])["timezone_from"] == "phone" and held_detail(ours[0])["window_from"] == "workspace"
    assert reads == [channels._WINDOWS]
