"""Click tracking: links rewritten to short links when processing renders a batch, counted in the
SMS segments, and ``GET /r/{code}`` redirecting and recording clicks, the first of a message
setting its ``clicked_at`` and its campaign's clicked count."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from common import apikeys, crypto, links, segments, signing
from common.config import settings
from common.db.connection import fetch, fetch_dicts, transaction
from services.processing.rendering import render_batch
from tests.support import message, running_workers, status_of, wait_for

TO = "+15005550006"
LONG_URL = "https://shop.example.com/orders/8812734/tracking?utm_source=sms&utm_campaign=" + "x" * 120
SHORT = re.compile(re.escape(settings.public_url) + r"/r/([0-9A-Za-z]{12})")


def send(api, workspace: dict, **fields: Any) -> dict[str, Any]:
    response = api.post("/v1/messages", json={"channel": "sms", "to": TO, **fields}, headers=workspace["auth"])
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def render(message_id: int) -> None:
    """Run processing's batch render on one message, as its actor does."""
    with transaction():
        render_batch([message_id])


def codes_in(text: str) -> list[str]:
    return SHORT.findall(text)


def sent_with_one_link(api, workspace: dict, body: str, **fields: Any) -> tuple[dict[str, Any], str]:
    """A message with one link, rendered: its answer and its short link's code."""
    accepted = send(api, workspace, body=body, **fields)
    render(accepted["id"])
    [code] = codes_in(message(accepted["id"])["body"])
    return accepted, code


def link_rows(message_id: int) -> list[dict[str, Any]]:
    with transaction():
        return fetch_dicts("SELECT code, workspace_id, message_id, url FROM link WHERE message_id = %s ORDER BY id", (message_id,))


def clicks(code: str) -> list[dict[str, Any]]:
    with transaction():
        return fetch_dicts("SELECT c.counted, c.user_agent, c.ip_hash, c.workspace_id FROM link_click c JOIN link l ON l.id = c.link_id"
                           " WHERE l.code = %s ORDER BY c.id", (code,))


def test_an_sms_link_becomes_a_short_link_counted_in_its_segments_and_is_sent_so(api, workspace, sandbox, broker):
    # Given a body whose long link makes it two segments as written
    body = f"Your order has shipped, track it at {LONG_URL}. Thanks!"
    assert segments.count_segments(body) == 2
    # When it is sent and the workers run
    with running_workers(broker):
        accepted = send(api, workspace, body=body)
        wait_for(lambda: status_of(accepted["id"]) == "delivered", what="delivered")
    # Then the body as sent holds a short link to the original, and its one segment is what ingest announced
    row = message(accepted["id"])
    [code] = codes_in(row["body"])
    assert row["body"] == f"Your order has shipped, track it at {links.short_url(code)}. Thanks!"  # the full stop stays text
    assert accepted["segments"] == 1 == row["segments"] == segments.count_segments(row["body"])
    assert [m["body"] for m in sandbox.messages(to=TO)] == [row["body"]]
    assert link_rows(accepted["id"]) == [{"code": code, "workspace_id": workspace["id"], "message_id": accepted["id"], "url": LONG_URL}]


def test_the_first_click_sets_clicked_and_a_second_is_recorded_but_not_counted_again(api, workspace):
    # Given a message with a tracked link, rendered
    accepted = send(api, workspace, body="See https://example.com/a?b=1&c=2 now")
    render(accepted["id"])
    [code] = codes_in(message(accepted["id"])["body"])
    # When its short link is followed once
    first = api.get(f"/r/{code}", headers={"User-Agent": "Phone/1.0"})
    # Then it redirects to the original address, and the message is clicked
    assert first.status_code == 302 and first.headers["Location"] == "https://example.com/a?b=1&c=2"
    clicked_at = message(accepted["id"])["clicked_at"]
    assert clicked_at is not None
    view = api.get(f"/v1/messages/{accepted['id']}", headers=workspace["auth"]).get_json()
    assert view["clicked_at"] == clicked_at.isoformat()
    # When it is followed again
    second = api.get(f"/r/{code}", headers={"User-Agent": "Phone/1.0"})
    # Then it redirects again and the click is recorded, but the message's first click stands
    assert second.status_code == 302 and second.headers["Location"] == "https://example.com/a?b=1&c=2"
    assert message(accepted["id"])["clicked_at"] == clicked_at
    recorded = clicks(code)
    assert [c["counted"] for c in recorded] == [True, False]
    assert all(c["user_agent"] == "Phone/1.0" and c["workspace_id"] == workspace["id"] for c in recorded)
    assert recorded[0]["ip_hash"] and "127.0.0.1" not in recorded[0]["ip_hash"]  # a keyed hash, not the address


def test_a_campaign_with_a_link_goes_through_processing_and_counts_each_clicked_message_once(api, workspace, sandbox, broker):
    # Given a started campaign whose body has a link, to three recipients
    to = ["+12015550100", "+12015550101", "+12015550102"]
    created = api.post("/v1/campaigns", json={"name": "Sale", "channel": "sms", "body": "Sale: https://example.com/sale",
                                              "recipients": [{"to": n} for n in to], "start": True}, headers=workspace["auth"])
    assert created.status_code == 201, created.get_json()
    campaign_id = created.get_json()["id"]
    with transaction():
        assert {r[0] for r in fetch("SELECT status FROM message WHERE campaign_id = %s", (campaign_id,))} == {"accepted"}
    # When the workers send it
    with running_workers(broker):
        wait_for(lambda: len(sandbox.messages()) == 3, what="three sent")
    # Then each recipient got its own short link
    with transaction():
        rows = fetch_dicts("SELECT id, to_addr, body FROM message WHERE campaign_id = %s ORDER BY id", (campaign_id,))
    codes = {r["to_addr"]: codes_in(r["body"])[0] for r in rows}
    assert len(set(codes.values())) == 3
    assert {m["to"]: m["body"] for m in sandbox.messages()} == {n: f"Sale: {links.short_url(codes[n])}" for n in to}
    # When the first recipient clicks twice and the second once
    for code in (codes[to[0]], codes[to[0]], codes[to[1]]):
        assert api.get(f"/r/{code}").headers["Location"] == "https://example.com/sale"
    # Then the campaign counts two clicked messages, and its counts still add up to its total
    progress = api.get(f"/v1/campaigns/{campaign_id}", headers=workspace["auth"]).get_json()["progress"]
    assert progress["clicked"] == 2
    assert sum(progress[k] for k in ("pending", "processing", "sent", "delivered", "read", "failed", "suppressed", "cancelled")) == 3


def test_racing_clicks_on_one_message_count_once(api, workspace, ingest_url):
    # Given a campaign message with a rendered short link
    created = api.post("/v1/campaigns", json={"name": "Race", "channel": "sms", "body": "Go https://example.com/go",
                                              "recipients": [{"to": TO}], "start": True}, headers=workspace["auth"]).get_json()
    with transaction():
        message_id = fetch("SELECT id FROM message WHERE campaign_id = %s", (created["id"],))[0][0]
    render(message_id)
    [code] = codes_in(message(message_id)["body"])
    # When eight clicks arrive at once over HTTP
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: requests.get(f"{ingest_url}/r/{code}", allow_redirects=False, timeout=10).status_code,
                                range(8)))
    # Then all redirect and are recorded, exactly one counted
    assert answers == [302] * 8
    assert sorted(c["counted"] for c in clicks(code)) == [False] * 7 + [True]
    assert api.get(f"/v1/campaigns/{created['id']}", headers=workspace["auth"]).get_json()["progress"]["clicked"] == 1


def test_opting_out_leaves_the_body_and_the_campaign_path_as_written(api, workspace):
    # Given a message and a campaign that opt out of click tracking
    body = f"Track it at {LONG_URL}"
    accepted = send(api, workspace, body=body, track_clicks=False)
    created = api.post("/v1/campaigns", json={"name": "Plain", "channel": "sms", "body": body, "track_clicks": False,
                                              "recipients": [{"to": TO}], "start": True}, headers=workspace["auth"])
    assert created.status_code == 201, created.get_json()
    # When processing renders the message
    render(accepted["id"])
    # Then nothing was rewritten: segments as written, no link, and the campaign skips processing as before
    assert message(accepted["id"])["body"] == body and accepted["segments"] == segments.count_segments(body) == 2
    assert link_rows(accepted["id"]) == []
    with transaction():
        campaign_message = fetch_dicts("SELECT status, body FROM message WHERE campaign_id = %s", (created.get_json()["id"],))[0]
    assert campaign_message == {"status": "queued", "body": body}


def test_a_campaign_without_a_link_goes_straight_to_routing(api, workspace):
    created = api.post("/v1/campaigns", json={"name": "Plain", "channel": "sms", "body": "No link here, www is not one",
                                              "recipients": [{"to": TO}], "start": True}, headers=workspace["auth"]).get_json()
    with transaction():
        assert fetch("SELECT status FROM message WHERE campaign_id = %s", (created["id"],))[0][0] == "queued"


def test_an_email_has_its_text_and_anchor_links_tracked_but_not_its_images(api, workspace):
    # Given an email whose text and HTML both link to the same page, with an image
    html = ('<p><a href="https://example.com/p?a=1&amp;b=2">Open</a> <img src="https://example.com/logo.png">'
            ' <a href="mailto:help@example.com">Help</a></p>')
    response = api.post("/v1/messages", json={"channel": "email", "to": "ada@example.com", "subject": "Hi", "body":
                                              "Open https://example.com/p?a=1&b=2", "html": html}, headers=workspace["auth"])
    assert response.status_code == 202, response.get_json()
    message_id = response.get_json()["id"]
    # When processing renders it
    render(message_id)
    # Then both parts carry the one short link of that page; the image and the mailto stay as written
    row = message(message_id)
    [code] = codes_in(row["body"])
    assert row["content"]["html"] == (f'<p><a href="{links.short_url(code)}">Open</a> <img src="https://example.com/logo.png">'
                                      ' <a href="mailto:help@example.com">Help</a></p>')
    assert [r["url"] for r in link_rows(message_id)] == ["https://example.com/p?a=1&b=2"]


def test_a_templated_message_has_the_links_of_its_rendered_text_tracked(api, workspace):
    template = api.post("/v1/templates", json={"name": "t", "channel": "sms", "text": "Hi {{ name }}, see {{ url }}"},
                        headers=workspace["auth"]).get_json()
    accepted = send(api, workspace, template_id=template["id"], variables={"name": "Ada", "url": LONG_URL})
    render(accepted["id"])
    row = message(accepted["id"])
    [code] = codes_in(row["body"])
    assert row["body"] == f"Hi Ada, see {links.short_url(code)}"
    assert row["segments"] == 1 and row["encoding"] == "GSM-7"
    assert link_rows(accepted["id"])[0]["url"] == LONG_URL


def test_an_unknown_or_malformed_code_is_404(api, workspace):
    for code in ("AAAAAAAAAAAA", "short", "bad!code-and-too-long" * 3):
        response = api.get(f"/r/{code}")
        assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found", code


def test_a_click_is_recorded_against_the_workspace_and_message_its_link_belongs_to(api, workspace):
    # Given two workspaces that each send the same link
    with transaction():
        other = apikeys.create_workspace("globex")
        other_auth = {"Authorization": f"Bearer {apikeys.issue(other)}"}
    mine = send(api, workspace, body="Offer https://example.com/offer")
    theirs = send(api, {"auth": other_auth}, body="Offer https://example.com/offer")
    render(mine["id"])
    render(theirs["id"])
    [their_code] = codes_in(message(theirs["id"])["body"])
    # When the other workspace's link is clicked
    assert api.get(f"/r/{their_code}").status_code == 302
    # Then only its message is clicked, and the click carries its workspace
    assert message(theirs["id"])["clicked_at"] is not None and message(mine["id"])["clicked_at"] is None
    assert link_rows(theirs["id"])[0]["workspace_id"] == other != workspace["id"]
    assert [c["workspace_id"] for c in clicks(their_code)] == [other]
    assert api.get(f"/v1/messages/{theirs['id']}", headers=workspace["auth"]).status_code == 404


def test_a_link_written_with_non_ascii_letters_redirects_encoded_as_a_browser_would(api, workspace):
    accepted, code = sent_with_one_link(api, workspace, "Voir https://bücher.example/ä?q=ü")
    response = api.get(f"/r/{code}")
    assert response.status_code == 302 and response.headers["Location"] == "https://xn--bcher-kva.example/%C3%A4?q=%C3%BC"


def test_the_first_click_is_a_message_clicked_event_for_a_subscribed_endpoint(api, workspace):
    # Given an endpoint subscribed to message.clicked and a rendered message with a tracked link
    with transaction():
        fetch("INSERT INTO webhook_endpoint (workspace_id, url, event_types, secret) VALUES (%s, %s, %s, %s)",
              (workspace["id"], "https://hooks.example.com/clicks", ["message.clicked"], crypto.seal({"secret": signing.new_secret()})))
    accepted, code = sent_with_one_link(api, workspace, "Read https://example.com/news today", tags=["spring"])
    # When its short link is followed twice
    assert api.get(f"/r/{code}").status_code == 302 and api.get(f"/r/{code}").status_code == 302
    # Then one event tells of the first click, with the link followed
    with transaction():
        written = fetch_dicts("SELECT event_type, message_id, payload FROM outbox WHERE workspace_id = %s"
                              " AND event_type = 'message.clicked'", (workspace["id"],))
    assert [(e["event_type"], e["message_id"]) for e in written] == [("message.clicked", accepted["id"])]
    payload = written[0]["payload"]
    assert (payload["id"], payload["status"], payload["url"], payload["to"]) == (accepted["id"], "clicked", "https://example.com/news", TO)


def test_a_head_request_answers_the_redirect_but_records_no_click(api, workspace):
    # Given a rendered message with a tracked link
    accepted, code = sent_with_one_link(api, workspace, "See https://example.com/preview now")
    # When a link checker asks with HEAD
    looked = api.head(f"/r/{code}")
    # Then it learns where the link goes, and nothing counts as a click
    assert looked.status_code == 302 and looked.headers["Location"] == "https://example.com/preview"
    assert clicks(code) == [] and message(accepted["id"])["clicked_at"] is None
