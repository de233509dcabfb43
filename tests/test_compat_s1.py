"""S1, the WhatsApp campaign queue's routes (seed 001) through real processes: gunicorn ingest,
the workers, the scheduler, and the sandbox as the Graph API posting its signed status webhooks to
the old path, ``/api/webhooks/whatsapp/status`` (POSTROOM_SANDBOX_WHATSAPP_WEBHOOK_PATH).

Done when 2: a 3-recipient campaign is sent with ``POST /api/campaigns/send``; the statuses come
back signed on the old path; ``GET /api/queue/status`` shows delivered and read counts matching
what the provider reported. Also: the document's example bodies as written, a template send on
the Graph API's wire, the webhook's handshake and its 403 for a bad signature (Meta's answers, not
the compatibility shape), refusals in the compatibility shape, and ``x-user-id`` checked against
the key's workspace.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from services.local.stack import Stack, private_env
from tests.support import wait_for

OLD_PATH = "/api/webhooks/whatsapp/status"
SEEDS = Path(os.environ.get("POSTROOM_SEEDS_DIR") or Path(__file__).resolve().parents[2] / "shared" / "seeds")
IDENTITIES = ["YOUR_USER_ID", "test-user"]  # the document's x-user-id words


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    env = private_env(tmp_path_factory.mktemp("compat_s1"), 14500 + (os.getpid() + 1000) % 4000,
                      POSTROOM_API_WORKERS="1", POSTROOM_SENDER_CONCURRENCY="16",
                      POSTROOM_SANDBOX_WHATSAPP_WEBHOOK_PATH=OLD_PATH)
    with Stack(env=env) as running:
        running.key = running.start()  # type: ignore[attr-defined]
        response = api(running, "PATCH", "/v1/workspace/settings", json={"compat_identities": IDENTITIES})
        assert response.status_code == 200, response.text
        yield running


def url(stack: Stack, path: str) -> str:
    return f"http://127.0.0.1:{stack.cfg.postroom_api_port}{path}"


def api(stack: Stack, method: str, path: str, headers: dict[str, str] | None = None, **kwargs: Any) -> requests.Response:
    return requests.request(method, url(stack, path), headers={"Authorization": f"Bearer {stack.key}", **(headers or {})},  # type: ignore[attr-defined]
                            timeout=10, **kwargs)


def sandbox(stack: Stack, method: str, path: str, **kwargs: Any) -> requests.Response:
    response = requests.request(method, f"{stack.cfg.sandbox_url}{path}", timeout=10, **kwargs)
    assert response.status_code < 300, response.text
    return response


def send(stack: Stack, body: dict[str, Any], user: str = "YOUR_USER_ID") -> requests.Response:
    return api(stack, "POST", "/api/campaigns/send", headers={"x-user-id": user}, json=body)


def queue_status(stack: Stack, campaign_id: str | int, user: str = "YOUR_USER_ID") -> requests.Response:
    return api(stack, "GET", "/api/queue/status", headers={"x-user-id": user}, params={"campaignId": campaign_id})


def sent_to(stack: Stack, numbers: list[str]) -> list[dict[str, Any]]:
    """What the Graph API sandbox accepted for these recipients, with the status it reported."""
    listing = sandbox(stack, "GET", "/sandbox/whatsapp_cloud/sent").json()["messages"]
    return [m for m in listing if m["to"] in numbers]


def numbers(n: int, start: int) -> list[str]:
    """Distinct valid numbers in a range NANPA keeps for fiction (555-0100 to 555-0199)."""
    return [f"+1{201 + (start + i) // 100}55501{(start + i) % 100:02d}" for i in range(n)]


def example_bodies() -> list[dict[str, Any]]:
    """The request bodies of 001's curl examples, exactly as the document writes them."""
    text = next(SEEDS.glob("001_*.txt")).read_text()
    return [json.loads(body) for body in re.findall(r"-d '(\{.*?\})'", text, flags=re.DOTALL)]


def test_a_three_recipient_campaign_is_sent_and_its_signed_statuses_on_the_old_path_count_delivered_and_read(stack):
    # Given three customers who wrote first (their 24-hour windows are open); the sandbox posts to the old path
    to = numbers(3, 0)
    for number in to:
        answer = sandbox(stack, "POST", "/sandbox/whatsapp_cloud/inbound", json={"from": number, "text": "hi"}).json()
        assert answer["ingest_status"] == 200  # the old path took the signed inbound webhook
    # When the campaign is sent through the old route
    response = send(stack, {"campaignId": 777, "recipients": to, "messageType": "text",
                            "payload": {"text": {"body": "Summer sale starts now"}}})
    assert response.status_code == 200, response.text
    queued = response.json()
    assert queued["success"] is True and queued["campaignId"] == 777 and queued["queued"] == 3 and queued["total"] == 3

    # Then the provider reports each one read, through signed webhooks on the old path
    wait_for(lambda: [m["status"] for m in sent_to(stack, to)] == ["read"] * 3, timeout=60, what="the sandbox's read statuses")
    reported = sent_to(stack, to)
    assert {m["status_callback"] for m in reported} == {url(stack, OLD_PATH)}
    assert sorted(m["to"] for m in reported) == sorted(to)  # each recipient once
    # and queue/status counts them as delivered and read, matching the provider's statuses
    wait_for(lambda: queue_status(stack, 777).json()["stats"]["read"] == 3, timeout=30, what="queue/status read == 3")
    status = queue_status(stack, 777).json()
    assert status["stats"] == {"pending": 0, "processing": 0, "sent": 3, "failed": 0, "delivered": 3, "read": 3}
    assert status["campaign"]["id"] == 777 and status["campaign"]["total"] == 3
    assert (status["campaign"]["sent"], status["campaign"]["delivered"], status["campaign"]["failed"]) == (3, 3, 0)
    assert status["campaign"]["progress"] == 100
    assert re.fullmatch(r"\d+\.\d msg/sec", status["avgSendRate"])
    view = api(stack, "GET", f"/v1/campaigns/{queued['postroomCampaignId']}").json()
    assert view["external_id"] == "777" and view["progress"]["read"] == 3 and view["channel"] == "whatsapp_cloud"

    # The cron's worker call reports what the workers did, and does nothing itself
    for method in ("POST", "GET"):  # GET: as Vercel cron calls it
        worker = api(stack, method, "/api/queue/worker")
        assert worker.status_code == 200, worker.text
        report = worker.json()
        assert report["success"] is True and report["workers"] == "continuous" and report["intervalSeconds"] == 60
        assert report["sent"] >= 3 and report["processed"] == report["sent"] + report["failed"]
    assert queue_status(stack, 777).json()["stats"] == status["stats"]


def test_the_documents_example_bodies_are_taken_as_written(stack):
    bodies = example_bodies()
    assert [b["campaignId"] for b in bodies] == [123, 1]  # a changed document is noticed
    first = send(stack, bodies[0], user="YOUR_USER_ID")
    assert first.status_code == 200, first.text
    assert first.json() | {"postroomCampaignId": 0} == {"success": True, "campaignId": 123, "queued": 2, "total": 2,
                                                        "postroomCampaignId": 0}
    second = send(stack, bodies[1], user="test-user")
    assert second.status_code == 200 and second.json()["queued"] == 1
    for ref, total in ((123, 2), (1, 1)):
        status = queue_status(stack, ref, user="test-user")
        assert status.status_code == 200, status.text
        answer = status.json()
        assert set(answer["stats"]) == {"pending", "processing", "sent", "failed", "delivered", "read"}
        assert answer["campaign"]["id"] == ref and answer["campaign"]["total"] == total
        assert answer["campaign"]["name"] == f"campaign {ref}" and isinstance(answer["avgSendRate"], str)
    # The same campaignId again (added to its campaign while that runs), and other content (a campaign of its
    # own under the same id): queue/status sums them
    again = send(stack, {**bodies[1], "recipients": ["+919876543212"]}, user="test-user")
    assert again.status_code == 200 and again.json()["queued"] == 1
    other = send(stack, {**bodies[1], "payload": {"text": {"body": "Another text"}}}, user="test-user")
    assert other.status_code == 200 and other.json()["postroomCampaignId"] != second.json()["postroomCampaignId"]
    assert queue_status(stack, 1).json()["campaign"]["total"] == 3


def test_a_template_send_goes_out_on_the_graph_apis_wire_without_an_open_window(stack):
    template = {"name": "summer_sale", "language": {"code": "en_US"}, "components": [
        {"type": "header", "parameters": [{"type": "image", "image": {"link": "https://example.com/sale.png"}}]},
        {"type": "body", "parameters": [{"type": "text", "text": "Ada"}, {"type": "text", "text": "20%"}]}]}
    to = numbers(2, 20)
    response = send(stack, {"campaignId": "summer-2026", "recipients": to, "messageType": "template",
                            "payload": {"template": template}})
    assert response.status_code == 200, response.text
    assert response.json()["campaignId"] == "summer-2026"
    wait_for(lambda: len(sent_to(stack, to)) == 2, timeout=30, what="both templates at the Graph API")
    for message in sent_to(stack, to):
        assert message["payload"]["type"] == "template" and message["payload"]["template"] == template
    wait_for(lambda: queue_status(stack, "summer-2026").json()["stats"]["read"] == 2, timeout=30, what="both read")


def test_the_webhook_on_the_old_path_answers_as_meta_expects(stack):
    challenge = {"hub.mode": "subscribe", "hub.challenge": "1158201444"}
    good = requests.get(url(stack, OLD_PATH), params={**challenge, "hub.verify_token": stack.cfg.whatsapp_verify_token},
                        timeout=10)
    assert good.status_code == 200 and good.text == "1158201444" and good.headers["Content-Type"].startswith("text/plain")
    wrong = requests.get(url(stack, OLD_PATH), params={**challenge, "hub.verify_token": "not-ours"}, timeout=10)
    assert wrong.status_code == 403 and "1158201444" not in wrong.text
    envelope = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "metadata": {"phone_number_id": stack.cfg.whatsapp_phone_number_id},
        "statuses": [{"id": "wamid.FORGED", "status": "read", "timestamp": "1", "recipient_id": "12015550100"}]}}]}]}
    forged = requests.post(url(stack, OLD_PATH), data=json.dumps(envelope), timeout=10,
                           headers={"Content-Type": "application/json", "X-Hub-Signature-256": "sha256=" + "0" * 64})
    assert forged.status_code == 403
    assert forged.json()["error"]["code"] == "bad_signature"  # the webhooks' own shape: Meta is the caller


def test_bad_input_is_a_4xx_in_the_compatibility_shape_naming_the_field(stack):
    text = {"text": {"body": "x"}}
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"campaignId": 5, "messageType": "text", "payload": text}, 422, "recipients"),
        ({"campaignId": 5, "recipients": ["12345"], "messageType": "text", "payload": text}, 422, "recipients[0].to"),
        ({"campaignId": 5, "recipients": ["+12015550100"], "messageType": "video", "payload": text}, 422, "messageType"),
        ({"campaignId": 5, "recipients": ["+12015550100"], "messageType": "text", "payload": {}}, 422, "payload.text"),
        ({"campaignId": "no spaces", "recipients": ["+12015550100"], "messageType": "text", "payload": text}, 422, "campaignId"),
        ({"campaignId": 5, "recipients": ["+12015550100"], "messageType": "template",
          "payload": {"template": {"name": "x", "components": [{"type": "button", "parameters": []}]}}}, 422,
         "payload.template.components[0].type"),
    ]
    for body, status, field in cases:
        response = send(stack, body)
        assert response.status_code == status, (body, response.text)
        answer = response.json()
        assert answer["success"] is False and answer["field"] == field and answer["code"] and answer["error"], answer
    missing = queue_status(stack, "never-sent")
    assert missing.status_code == 404 and missing.json()["success"] is False
    no_id = api(stack, "GET", "/api/queue/status", headers={"x-user-id": "test-user"})
    assert no_id.status_code == 422 and no_id.json()["field"] == "campaignId"
    no_key = requests.post(url(stack, "/api/campaigns/send"), json=cases[0][0], timeout=10)
    assert no_key.status_code == 401 and no_key.json()["success"] is False


def test_an_x_user_id_that_does_not_name_the_keys_workspace_is_403_and_changes_nothing(stack):
    body = {"campaignId": 4242, "recipients": ["+12015550150"], "messageType": "text", "payload": {"text": {"body": "x"}}}
    refused = send(stack, body, user="someone-else")
    assert refused.status_code == 403, refused.text
    assert refused.json() == {"success": False, "code": "identity_mismatch", "field": "x-user-id",
                              "error": refused.json()["error"]}
    assert queue_status(stack, 4242, user="someone-else").status_code == 403
    assert queue_status(stack, 4242).status_code == 404  # nothing was made
    assert send(stack, body, user="dev").status_code == 200  # the workspace's own name is an identity too
    assert send(stack, {**body, "recipients": ["+12015550151"]}, user="").status_code == 200  # and none is given


# --- in process: the adapter's arithmetic, with statuses set as receipts would set them ---------


def test_sends_of_one_campaign_id_add_up_and_queue_status_counts_as_the_old_dashboard_did(api, workspace):
    from common.db.connection import fetch, transaction

    headers = {**workspace["auth"], "x-user-id": "acme"}  # the workspace's name names it too
    body = {"campaignId": 55, "recipients": numbers(4, 40), "messageType": "text", "payload": {"text": {"body": "Hi"}}}
    first = api.post("/api/campaigns/send", json=body, headers=headers).get_json()
    # The same id and content again: added to that campaign while it runs
    second = api.post("/api/campaigns/send", json={**body, "recipients": numbers(1, 44)}, headers=headers).get_json()
    assert second["postroomCampaignId"] == first["postroomCampaignId"] and (second["queued"], second["total"]) == (1, 5)
    # Other content under the same id: a campaign of its own
    other = api.post("/api/campaigns/send", json={**body, "recipients": numbers(1, 45), "payload": {"text": {"body": "Bye"}}},
                     headers=headers).get_json()
    assert other["postroomCampaignId"] != first["postroomCampaignId"] and other["total"] == 1
    with transaction():
        ids = [r[0] for r in fetch("SELECT id FROM message WHERE campaign_id = %s ORDER BY id", (first["postroomCampaignId"],))]
        for message_id, status in zip(ids, ("read", "delivered", "sent", "failed", "suppressed"), strict=True):
            fetch("UPDATE message SET status = %s WHERE id = %s", (status, message_id))
    answer = api.get("/api/queue/status", query_string={"campaignId": "55"}, headers=headers).get_json()
    assert answer["stats"] == {"pending": 1, "processing": 0, "sent": 3, "failed": 2, "delivered": 2, "read": 1}
    assert answer["campaign"] | {"name": None, "status": None} == {"id": 55, "name": None, "status": None, "progress": 83,
                                                                  "total": 6, "sent": 3, "delivered": 2, "failed": 2}
    assert answer["campaign"]["name"] == "campaign 55" and answer["success"] is True


def test_a_template_payload_becomes_the_campaigns_template(api, workspace):
    from common.db.connection import fetch, transaction

    template = {"name": "invoice", "language": {"code": "pt_BR"}, "components": [
        {"type": "header", "parameters": [{"type": "document", "document": {"link": "https://example.com/i.pdf",
                                                                             "filename": "invoice.pdf"}}]},
        {"type": "body", "parameters": [{"type": "text", "text": "Ada"}, {"type": "text", "text": "R$ 10"}]}]}
    response = api.post("/api/campaigns/send", headers=workspace["auth"], json={
        "campaignId": "inv-1", "recipients": numbers(1, 50), "messageType": "template", "payload": {"template": template},
        "campaignName": "Invoices", "unknownField": "ignored, as the old service did"})
    assert response.status_code == 200, response.get_json()
    with transaction():
        name, message = fetch("SELECT name, message FROM campaign WHERE id = %s", (response.get_json()["postroomCampaignId"],))[0]
    assert name == "Invoices" and message["channel"] == "whatsapp_cloud"
    sent = message["content"]["template"]
    assert (sent["name"], sent["language"], sent["body_parameters"]) == ("invoice", "pt_BR", ["Ada", "R$ 10"])
    assert sent["header_media"] | {"caption": None} == {"url": "https://example.com/i.pdf", "type": "document",
                                                        "filename": "invoice.pdf", "caption": None}
    mixed = {**template, "components": [{"type": "body", "parameters": [{"type": "image", "image": {"link": "https://example.com/a.png"}}]}]}
    refused = api.post("/api/campaigns/send", headers=workspace["auth"], json={
        "campaignId": "inv-2", "recipients": numbers(1, 51), "messageType": "template", "payload": {"template": mixed}})
    assert refused.status_code == 422 and refused.get_json()["field"] == "payload.template.components[0].parameters"


def test_a_send_joins_only_a_running_or_scheduled_campaign_of_its_id(api, workspace):
    from common.db.connection import fetch, transaction

    auth = workspace["auth"]
    body = {"campaignId": "join-1", "recipients": numbers(2, 60), "messageType": "text", "payload": {"text": {"body": "Hi"}}}
    first = api.post("/api/campaigns/send", json=body, headers=auth).get_json()["postroomCampaignId"]
    # Given that campaign paused: a send of the same id and content does not join it (it would only
    # hold the recipients) but starts a new one
    assert api.post(f"/v1/campaigns/{first}/pause", headers=auth).status_code == 200
    after_pause = api.post("/api/campaigns/send", json={**body, "recipients": numbers(1, 62)}, headers=auth).get_json()
    assert after_pause["postroomCampaignId"] != first and (after_pause["queued"], after_pause["total"]) == (1, 1)
    # While the next send joins that new, running one
    joined = api.post("/api/campaigns/send", json={**body, "recipients": numbers(1, 63)}, headers=auth).get_json()
    assert joined["postroomCampaignId"] == after_pause["postroomCampaignId"] and joined["total"] == 2
    # Given a draft of another id with the very same content, made through /v1
    draft = api.post("/v1/campaigns", headers=auth, json={"name": "draft", "channel": "whatsapp_cloud", "body": "Hi",
                                                          "recipients": [{"to": numbers(1, 64)[0]}], "external_id": "join-2"})
    assert draft.status_code == 201, draft.get_json()
    # A send under its id does not join it either
    sent = api.post("/api/campaigns/send", json={**body, "campaignId": "join-2", "recipients": numbers(1, 65)},
                    headers=auth).get_json()
    assert sent["postroomCampaignId"] != draft.get_json()["id"] and sent["total"] == 1
    with transaction():
        rows = {r[0]: r[1:] for r in fetch("SELECT id, status, total, message FROM campaign")}
    assert rows[draft.get_json()["id"]][2] == rows[sent["postroomCampaignId"]][2]  # the same content: status kept it out
    assert rows[first][:2] == ("paused", 2) and rows[draft.get_json()["id"]][:2] == ("draft", 1)
