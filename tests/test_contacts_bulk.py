"""Contacts in bulk: tags, the listing (a cursor across pages; tag, attribute and address filters;
bad filters refused by name), and imports of JSON items or CSV rows, set-wise: invalid items
reported by position while the rest are imported, a re-import updating instead of duplicating,
two imports of the same new addresses making one contact each, and an imported contact used as
a message's contact_id and as a campaign recipient whose attribute fills the template."""

from __future__ import annotations

import threading
from typing import Any

from common.config import settings
from common.db.connection import fetch, release_connection, transaction
from services.ingest import bounds, campaigns_api, contact_merge
from services.ingest.app import create_app
from tests.support import running_workers
from tests.test_campaigns import create, numbers, template, tick_until
from tests.test_contacts import other_workspace


def import_json(api, workspace, items: list[dict]) -> dict:
    response = api.post("/v1/contacts/import", json={"contacts": items}, headers=workspace["auth"])
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def import_csv(api, workspace, text: str, content_type: str = "text/csv"):
    return api.post("/v1/contacts/import/csv", data=text.encode(), content_type=content_type, headers=workspace["auth"])


def listing(api, workspace, query: str = "", status: int = 200) -> dict:
    response = api.get(f"/v1/contacts{query}", headers=workspace["auth"])
    assert response.status_code == status, response.get_json()
    return response.get_json()


def contact_count(workspace_id: int) -> int:
    with transaction():
        return fetch("SELECT count(*) FROM contact WHERE workspace_id = %s", (workspace_id,))[0][0]


def address_count(workspace_id: int) -> int:
    with transaction():
        return fetch("SELECT count(*) FROM contact_address WHERE workspace_id = %s", (workspace_id,))[0][0]


# --- tags on one contact ------------------------------------------------------------------------

def test_tags_are_kept_once_each_replaced_when_given_and_refused_by_name_when_bad(api, workspace):
    # Given a contact created with a repeated tag
    made = api.post("/v1/contacts", json={"addresses": {"sms": numbers(1)[0]}, "tags": ["vip", "beta", "vip"]},
                    headers=workspace["auth"])
    assert made.status_code == 201 and made.get_json()["tags"] == ["vip", "beta"]
    path = f"/v1/contacts/{made.get_json()['id']}"
    # When a change leaves tags out, then replaces them, then clears them
    assert api.patch(path, json={"name": "Ada"}, headers=workspace["auth"]).get_json()["tags"] == ["vip", "beta"]
    assert api.patch(path, json={"tags": ["gold"]}, headers=workspace["auth"]).get_json()["tags"] == ["gold"]
    assert api.patch(path, json={"tags": []}, headers=workspace["auth"]).get_json()["tags"] == []
    # And bad tags are refused naming the field
    for tags in (None, ["a|b"], ["a,b"], [""], ["x" * 101], ["ok\x00"], ["t"] * 51):
        refused = api.patch(path, json={"tags": tags}, headers=workspace["auth"])
        assert refused.status_code == 422 and refused.get_json()["error"]["field"] == "tags", tags


# --- the listing ---------------------------------------------------------------------------------

def test_the_listing_pages_through_every_contact_by_cursor(api, workspace):
    # Given 250 contacts of acme and one of another workspace
    made = import_json(api, workspace, [{"addresses": {"sms": n}} for n in numbers(250)])
    assert made["created"] == 250
    api.post("/v1/contacts", json={"addresses": {"sms": numbers(1)[0]}}, headers=other_workspace()["auth"])
    # When they are listed 100 at a time
    pages = [listing(api, workspace, "?limit=100")]
    while pages[-1]["next_cursor"] is not None:
        pages.append(listing(api, workspace, f"?limit=100&cursor={pages[-1]['next_cursor']}"))
    # Then three pages hold each of acme's contacts once, in id order
    assert [len(p["data"]) for p in pages] == [100, 100, 50]
    ids = [c["id"] for p in pages for c in p["data"]]
    assert ids == sorted(ids) and len(set(ids)) == 250
    assert {c["addresses"]["sms"] for p in pages for c in p["data"]} == set(numbers(250))
    # And the default page is 100 contacts, a page that ends the listing exactly has no cursor
    assert len(listing(api, workspace)["data"]) == 100
    assert listing(api, workspace, "?limit=250")["next_cursor"] is None


def test_the_listing_filters_by_tags_attributes_and_address(api, workspace):
    # Given contacts with tags and attributes
    to = numbers(5)
    import_json(api, workspace, [
        {"addresses": {"sms": to[0]}, "tags": ["vip", "beta"], "attributes": {"plan": "pro", "seats": 3}},
        {"addresses": {"sms": to[1]}, "tags": ["vip"], "attributes": {"plan": "pro", "seats": "3"}},
        {"addresses": {"sms": to[2], "email": "c@example.com"}, "tags": ["beta"], "attributes": {"plan": "free", "vip": True}},
        {"addresses": {"email": "d@example.com"}, "attributes": {"plan": "pro:plus"}},
        {"addresses": {"http": "crm-5"}},
    ])

    def numbers_of(query: str) -> set[str]:
        return {c["addresses"].get("sms") or c["addresses"].get("email") or c["addresses"]["http"]
                for c in listing(api, workspace, query)["data"]}

    # Then each filter keeps the contacts that match all of it
    assert numbers_of("?tag=vip") == {to[0], to[1]}
    assert numbers_of("?tag=vip,beta") == numbers_of("?tag=vip&tag=beta") == {to[0]}
    assert numbers_of("?attribute=plan=pro") == {to[0], to[1]}
    assert numbers_of("?attribute=plan%3Dpro%3Aplus") == {"d@example.com"}
    assert numbers_of("?attribute=seats=3") == {to[0], to[1]}  # the number 3 and the string "3"
    assert numbers_of("?attribute=vip=true") == {to[2]}
    assert numbers_of("?attribute=plan=pro&tag=beta") == {to[0]}
    assert numbers_of("?channel=email") == {to[2], "d@example.com"}  # to[2] has an email address too
    assert numbers_of("?channel=sms&address=" + to[2].replace("+1", "%2B1%20")) == {to[2]}  # written loosely
    assert numbers_of("?channel=http&address=crm-5") == {"crm-5"}
    assert numbers_of("?tag=nobody") == set()


def test_bad_listing_parameters_are_refused_naming_the_parameter(api, workspace):
    cases = [
        ("?colour=red", "colour"),
        ("?limit=0", "limit"),
        ("?limit=1001", "limit"),
        ("?limit=1&limit=2", "limit"),
        ("?cursor=nonsense", "cursor"),
        ("?cursor=Y29udGFjdDp4", "cursor"),  # "contact:x"
        ("?tag=a|b", "tag"),
        ("?tag=a,,b", "tag"),
        ("?tag=%00", "tag"),
        ("?attribute=plan", "attribute"),
        ("?attribute=pl%20an=pro", "attribute"),
        ("?attribute=plan=%00", "attribute"),
        ("?channel=fax", "channel"),
        ("?address=crm-5", "address"),
        ("?channel=sms&address=12345", "address"),
        ("?channel=http&address=a%01b", "address"),
    ]
    for query, parameter in cases:
        refused = listing(api, workspace, query, status=422)
        assert refused["error"]["field"] == parameter, query


# --- imports -------------------------------------------------------------------------------------

def test_a_json_import_takes_the_valid_items_set_wise_and_reports_the_others(api, workspace, monkeypatch):
    # Given 5,000 items, each with an attribute long enough that the whole is above the usual 1 MB limit, and 5 bad ones
    to = numbers(5000)
    items: list = [{"addresses": {"sms": n}, "name": f"P{i}", "tags": ["winter"], "attributes": {"note": "x" * 200, "n": i}}
                   for i, n in enumerate(to)]
    items[10] = {"addresses": {"sms": "12345"}}
    items[20] = {"addresses": {"sms": to[20]}, "timezone": "Mars/Olympus"}
    items[30] = {"addresses": {"sms": to[30]}, "colour": "red"}
    items[40] = "Ada"
    items[50] = {"addresses": {"sms": to[0]}}  # item 0's number again
    assert len(str(items)) > settings.postroom_max_request_bytes
    statements: list[str] = []
    real = contact_merge.fetch

    def counted(sql, *args, **kwargs):
        statements.append(sql)
        return real(sql, *args, **kwargs)

    monkeypatch.setattr(contact_merge, "fetch", counted)
    # When they are imported
    result = import_json(api, workspace, items)
    # Then the 4,995 valid ones are created in a handful of statements, and each bad one is reported by index and field
    assert result["created"] == 4995 and result["updated"] == 0 and result["failed"] == 5
    assert [(e["index"], e["error"]["field"]) for e in result["errors"]] == [
        (10, "addresses.sms"), (20, "timezone"), (30, "colour"), (40, "body"), (50, "addresses.sms")]
    assert "item 0" in result["errors"][4]["error"]["message"]
    assert len(statements) <= 4
    assert contact_count(workspace["id"]) == address_count(workspace["id"]) == 4995
    first = listing(api, workspace, f"?channel=sms&address={to[7].replace('+', '%2B')}")["data"][0]
    assert first["name"] == "P7" and first["tags"] == ["winter"] and first["attributes"]["n"] == 7


def test_a_re_import_updates_the_contacts_it_finds_by_any_address(api, workspace):
    # Given contacts from a first import, one of them with an http id too
    to = numbers(4)
    import_json(api, workspace, [{"addresses": {"sms": n}, "name": f"P{i}", "tags": ["old"]} for i, n in enumerate(to)])
    import_json(api, workspace, [{"addresses": {"sms": to[3], "http": "crm-3"}}])
    before = {c["addresses"]["sms"]: c for c in listing(api, workspace)["data"]}
    # When they are imported again, found by number or by http id, with other fields
    result = import_json(api, workspace, [
        {"addresses": {"sms": to[0]}, "name": "Ada", "attributes": {"plan": "pro"}},
        {"addresses": {"sms": to[1], "email": "b@example.com"}, "tags": ["new"]},
        {"addresses": {"http": "crm-3", "sms": numbers(1, start=50)[0]}},  # a new number for contact 3
        {"addresses": {"sms": to[0], "http": "crm-3"}},  # addresses of earlier items: refused as a repeat
        {"addresses": {"email": "e@example.com"}, "name": "Eve"},
        {"addresses": {"sms": to[2]}, "name": "Cy"},
        {"addresses": {"email": "also-cy@example.com", "sms": to[2]}},  # to[2] again: refused as a repeat
    ])
    # Then they are updated, not duplicated: the fields given change, the others stay
    assert (result["created"], result["updated"], result["failed"]) == (1, 4, 2)
    assert [(e["index"], e["error"]["code"]) for e in result["errors"]] == [(3, "invalid_request"), (6, "invalid_request")]
    after = {c["id"]: c for c in listing(api, workspace)["data"]}
    assert len(after) == 5 and contact_count(workspace["id"]) == 5
    ada = after[before[to[0]]["id"]]
    assert (ada["name"], ada["tags"], ada["attributes"]) == ("Ada", ["old"], {"plan": "pro"})
    assert after[before[to[1]]["id"]]["addresses"] == {"sms": to[1], "email": "b@example.com"}
    assert after[before[to[1]]["id"]]["tags"] == ["new"] and after[before[to[1]]["id"]]["name"] == "P1"
    assert after[before[to[3]]["id"]]["addresses"] == {"sms": numbers(1, start=50)[0], "http": "crm-3"}
    assert after[before[to[2]]["id"]]["name"] == "Cy"


def test_an_item_with_addresses_of_two_contacts_or_a_contact_given_twice_is_refused(api, workspace):
    # Given two contacts
    to = numbers(2)
    import_json(api, workspace, [{"addresses": {"sms": to[0], "email": "a@example.com", "http": "crm-a"}},
                                 {"addresses": {"sms": to[1]}}])
    # When one item names an address of each, and two items name different addresses of the same contact
    result = import_json(api, workspace, [
        {"addresses": {"sms": to[1], "email": "a@example.com"}, "name": "Merged?"},
        {"addresses": {"sms": to[0]}, "name": "First"},
        {"addresses": {"http": "crm-a"}, "name": "Second"},
    ])
    # Then the first is refused as address_taken (409's code), the third as the same contact again
    assert (result["created"], result["updated"]) == (0, 1)
    assert [(e["index"], e["error"]["code"], e["error"]["field"]) for e in result["errors"]] == [
        (0, "address_taken", "addresses.email"), (2, "invalid_request", "addresses")]
    assert sorted(c["name"] or "" for c in listing(api, workspace)["data"]) == ["", "First"]


def test_a_csv_import_reads_addresses_fields_tags_and_attributes_and_reports_bad_rows(api, workspace):
    to = numbers(4)
    text = ("sms,email,name,tags,plan,city,timezone\n"
            f"{to[0]},ada@Example.com,Ada,vip|beta,pro,London,Europe/London\n"
            f' {to[1]} ,,"Bob, Jr.", gold ; silver ,,Paris,\n'
            "12345,,Bad number,,,,\n"
            f"{to[2]},,Cy,,,,Mars/Olympus\n"
            f"{to[3]},,Short row\n"
            "\n"
            ",,No address,,,,\n"
            f'{numbers(1, start=60)[0]},,Dee,,,"Two\nlines",\n'
            "+1 nope,,X,,,,\n")
    # When it is imported
    response = import_csv(api, workspace, text)
    # Then the good rows are contacts with their tags and attributes, and each bad row is reported by line and column
    assert response.status_code == 200, response.get_json()
    result = response.get_json()
    assert (result["created"], result["updated"], result["failed"]) == (3, 0, 5)
    assert [(e["line"], e["error"]["field"]) for e in result["errors"]] == [
        (4, "sms"), (5, "timezone"), (6, "body"), (8, "addresses"), (11, "sms")]
    found = {c["name"]: c for c in listing(api, workspace)["data"]}
    ada, bob = found["Ada"], found["Bob, Jr."]
    assert ada["addresses"] == {"sms": to[0], "email": "ada@example.com"} and ada["timezone"] == "Europe/London"
    assert ada["tags"] == ["vip", "beta"] and ada["attributes"] == {"plan": "pro", "city": "London"}
    assert bob["addresses"] == {"sms": to[1]} and bob["tags"] == ["gold", "silver"] and bob["attributes"] == {"city": "Paris"}
    assert found["Dee"]["attributes"] == {"city": "Two\nlines"}
    # And the same CSV again updates those contacts instead of adding more
    again = import_csv(api, workspace, text).get_json()
    assert (again["created"], again["updated"]) == (0, 3) and contact_count(workspace["id"]) == 3


def test_an_unusable_csv_is_refused_as_a_whole(api, workspace):
    assert import_csv(api, workspace, "sms\n+15005550006\n", content_type="application/json").status_code == 415
    assert import_csv(api, workspace, "sms\n+15005550006\n", content_type="text/plain").status_code == 415
    for text in ("name,plan\nAda,pro\n", "sms,sms\n+15005550006,+15005550006\n", "sms,bad column\n+15005550006,x\n", "sms\n",
                 "sms,\"x\n"):
        refused = import_csv(api, workspace, text)
        assert refused.status_code == 422 and refused.get_json()["error"]["field"] == "body", text
    not_utf8 = api.post("/v1/contacts/import/csv", data=b"sms,name\n+15005550006,\xff\n", content_type="text/csv",
                        headers=workspace["auth"])
    assert not_utf8.status_code == 422
    assert contact_count(workspace["id"]) == 0


def test_imports_take_the_campaign_body_limit(api, workspace):
    assert bounds.body_limit("/v1/contacts/import") == bounds.body_limit("/v1/contacts/import/csv") == settings.postroom_max_campaign_bytes
    assert bounds.body_limit("/v1/contacts") == settings.postroom_max_request_bytes
    huge = "sms\n" + "+15005550006\n" * (settings.postroom_max_campaign_bytes // 13 + 1)
    assert import_csv(api, workspace, huge).status_code == 413


def test_two_imports_of_the_same_new_addresses_make_one_contact_per_address(broker, workspace):
    # Given two import requests naming the same 300 new numbers, released together
    app = create_app()
    to = numbers(300)
    start = threading.Barrier(2)
    results: list[dict] = []

    def post(name: str) -> None:
        client = app.test_client()
        start.wait()
        try:
            response = client.post("/v1/contacts/import", json={"contacts": [{"addresses": {"sms": n}, "name": name} for n in to]},
                                   headers=workspace["auth"])
            results.append(response.get_json())
        finally:
            release_connection()

    threads = [threading.Thread(target=post, args=(name,)) for name in ("first", "second")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    # Then each number has one contact: one import created them, the other updated them
    assert sorted((r["created"], r["updated"], r["failed"]) for r in results) == [(0, 300, 0), (300, 0, 0)]
    assert contact_count(workspace["id"]) == address_count(workspace["id"]) == 300


def test_an_imported_contact_is_a_messages_contact_and_a_campaign_recipient(api, workspace, sandbox, broker):
    # Given a contact imported from CSV with a tier attribute
    to = numbers(1, start=80)[0]
    assert import_csv(api, workspace, f"sms,name,tier\n{to},Ada,gold\n").get_json()["created"] == 1
    contact = listing(api, workspace, "?attribute=tier=gold")["data"][0]
    # When a message names it, and a campaign's template uses its attribute
    message = api.post("/v1/messages", json={"channel": "sms", "contact_id": contact["id"], "body": "hi"}, headers=workspace["auth"])
    assert message.status_code == 202, message.get_json()
    assert api.get(f"/v1/messages/{message.get_json()['id']}", headers=workspace["auth"]).get_json()["to"] == to
    template_id = template(api, workspace, "Hi {{ name }}, your {{ tier }} offer")
    created = create(api, workspace, template_id=template_id, start=True, recipients=[{"contact_id": contact["id"]}])
    assert created.status_code == 201, created.get_json()
    with running_workers(broker):
        tick_until(api, workspace, created.get_json()["id"], "completed")
    # Then the campaign's message to it was rendered with its attribute
    assert "Hi Ada, your gold offer" in [m["body"] for m in sandbox.messages(to=to)]


def test_the_import_document_shows_each_item_as_the_create_body(api):
    document = api.get("/openapi.json").get_json()
    items = document["components"]["schemas"]["ContactImport"]["properties"]["contacts"]["items"]
    assert items == {"$ref": "#/components/schemas/NewContact"} and "NewContact" in document["components"]["schemas"]
    parameters = {p["name"] for p in document["paths"]["/v1/contacts"]["get"]["parameters"]}
    assert parameters == {"cursor", "limit", "tag", "attribute", "channel", "address", "external_id"}


def test_an_import_and_single_upserts_of_the_same_new_number_make_one_contact(broker, workspace):
    # Given an import of 100 new numbers and four single upserts of one of them, released together
    app = create_app()
    to = numbers(100)
    start = threading.Barrier(5)
    codes: list[int] = []

    def post(path: str, body: dict) -> None:
        client = app.test_client()
        start.wait()
        try:
            codes.append(client.post(path, json=body, headers=workspace["auth"]).status_code)
        finally:
            release_connection()

    calls: list[tuple[str, dict[str, Any]]] = [("/v1/contacts/import", {"contacts": [{"addresses": {"sms": n}} for n in to]})]
    calls += [("/v1/contacts", {"addresses": {"sms": to[50]}, "attributes": {"n": i}}) for i in range(4)]
    threads = [threading.Thread(target=post, args=call) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    # Then every request succeeded and each number has one contact
    assert len(codes) == 5 and set(codes) <= {200, 201}
    assert contact_count(workspace["id"]) == address_count(workspace["id"]) == 100


def test_a_campaigns_contact_recipients_are_looked_up_in_one_query_per_page(api, workspace, monkeypatch):
    # Given 50 imported contacts
    import_json(api, workspace, [{"addresses": {"sms": n}, "attributes": {"tier": "gold"}} for n in numbers(50)])
    ids = [c["id"] for c in listing(api, workspace)["data"]]
    lookups: list[str] = []
    real = campaigns_api.fetch

    def counted(sql, *args, **kwargs):
        if "FROM contact c" in sql:
            lookups.append(sql)
        return real(sql, *args, **kwargs)

    monkeypatch.setattr(campaigns_api, "fetch", counted)
    # When a campaign names them all as recipients
    created = create(api, workspace, template_id=template(api, workspace, "Your {{ tier }} offer"),
                     recipients=[{"contact_id": i} for i in ids])
    # Then they were read in one query
    assert created.status_code == 201, created.get_json()
    assert created.get_json()["progress"]["total"] == 50 and len(lookups) == 1
