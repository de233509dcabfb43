"""The knowledge base: its API (items, imports) and the one retrieval query the bot ranks by.

Retrieval is full-text (title above body, the question's terms OR-joined, stemmed, stopwords
gone) plus trigram similarity of the title, scoped to the workspace and served by the two GIN
indexes that hold workspace_id.
"""

from __future__ import annotations

import json

import pytest

from common import apikeys, knowledge
from common.db.connection import fetch, transaction

ITEMS = [
    {"title": "How do I get a refund?", "body": "Refunds are paid within 30 days to the card you paid with. Open your "
     "account page and choose Return."},
    {"title": "Shipping times", "body": "Parcels leave our warehouse the next working day and arrive in 2 to 4 days."},
    {"title": "Change my password", "body": "Use the Forgot password link on the sign-in page; the link is valid for an hour."},
    {"title": "Invoice copies", "body": "Every order's invoice is in your account under Orders."},
    {"title": "Business accounts", "body": "A business account gets one invoice a month for all its orders."},
]


def seed(workspace_id: int, items: list[dict] = ITEMS) -> None:
    with transaction():
        knowledge.upsert_many(workspace_id, [{"source_url": None, "tags": [], "language": "english", **i} for i in items])


def search(workspace_id: int, text: str, regconfig: str = "english") -> list[dict]:
    with transaction():
        return knowledge.retrieve(workspace_id, regconfig, text)


def titles(hits: list[dict]) -> list[str]:
    return [h["title"] for h in hits]


def test_the_item_answering_the_question_ranks_first_and_title_words_weigh_more(workspace):
    seed(workspace["id"])
    hits = search(workspace["id"], "Can I get a refund for my order?")
    assert hits[0]["title"] == "How do I get a refund?"
    assert 0 < hits[0]["score"] <= 1 and hits[0]["fts"] > 0
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    # "invoice" is in one title and in another's body: the title's item comes first
    assert titles(search(workspace["id"], "invoice"))[:2] == ["Invoice copies", "Business accounts"]


def test_terms_are_or_joined_and_a_stopword_only_question_finds_nothing_by_text(workspace):
    seed(workspace["id"])
    both = titles(search(workspace["id"], "refund shipping"))  # no item has both words: each is found
    assert set(both[:2]) == {"How do I get a refund?", "Shipping times"}
    assert search(workspace["id"], "the and of") == []
    assert search(workspace["id"], "!!! ???") == []


def test_a_typo_in_the_title_is_still_found_by_trigrams(workspace):
    seed(workspace["id"])
    hits = search(workspace["id"], "pasword chnage")
    assert hits and hits[0]["title"] == "Change my password"
    assert hits[0]["fts"] == 0 and hits[0]["trgm"] > 0.2


def test_retrieval_never_returns_another_workspace_items(workspace):
    with transaction():
        other = apikeys.create_workspace("globex")
    seed(other, [{"title": "Refund policy secret", "body": "Globex refunds everything, always."}])
    seed(workspace["id"], ITEMS[1:])  # acme has no refund item
    assert all("Globex" not in h["body"] for h in search(workspace["id"], "refund policy"))
    assert titles(search(other, "refund policy")) == ["Refund policy secret"]


def _plan(workspace_id: int, question: str) -> str:
    with transaction():
        fetch("SET LOCAL pg_trgm.similarity_threshold = %s", (knowledge.TRIGRAM_THRESHOLD,))
        fetch("SET LOCAL random_page_cost = %s", (knowledge.RANDOM_PAGE_COST,))
        return "\n".join(r[0] for r in fetch("EXPLAIN " + knowledge.RETRIEVE, {
            "cfg": "english", "q": question, "ws": workspace_id, "wf": 0.6, "wt": 0.4, "top": 5}))


def _many_items(sizes: dict[int, int]) -> None:
    """Items about made-up product words, ``sizes`` per workspace."""
    with transaction():
        for workspace_id, count in sizes.items():
            fetch("""INSERT INTO knowledge_item (workspace_id, title, body)
                     SELECT %s, 'Topic ' || substr(md5(n || ':t'), 1, 8) || ' ' || substr(md5(n || ':u'), 1, 6),
                            'About ' || md5(n::text) || ' and ' || substr(md5((n * 7)::text), 1, 10) || ' for item ' || n
                     FROM generate_series(1, %s) n""", (workspace_id, count))
        fetch("ANALYZE knowledge_item")


def test_the_query_reads_only_the_tenant_items_through_indexes(workspace):
    with transaction():
        others = [apikeys.create_workspace(f"tenant-{n}") for n in range(2)]
    seed(workspace["id"])
    _many_items({workspace["id"]: 1660, others[0]: 1670, others[1]: 1665})  # 5,000 items of 3 workspaces
    plan = _plan(workspace["id"], "how can I get a refund")
    assert "Seq Scan" not in plan and "workspace_id = " in plan, plan
    assert search(workspace["id"], "how can I get a refund")[0]["title"] == "How do I get a refund?"


def test_a_large_knowledge_base_is_searched_through_both_gin_indexes(workspace):
    with transaction():
        others = [apikeys.create_workspace(f"tenant-{n}") for n in range(2)]
    seed(workspace["id"])
    _many_items({workspace["id"]: 20_000, others[0]: 5_000, others[1]: 5_000})
    plan = _plan(workspace["id"], "how can I get a refund")
    assert "BitmapOr" in plan and "knowledge_item_search" in plan and "knowledge_item_title_trgm" in plan, plan
    assert "Seq Scan" not in plan, plan
    assert search(workspace["id"], "how can I get a refund")[0]["title"] == "How do I get a refund?"


# --- the API -------------------------------------------------------------------------------------

def call(api, workspace, method: str, path: str, payload=None, **kwargs):
    return api.open(path, method=method, data=json.dumps(payload) if payload is not None else None,
                    content_type="application/json", headers=workspace["auth"], **kwargs)


def test_items_are_created_read_changed_and_deleted_with_unique_titles(api, workspace):
    created = call(api, workspace, "POST", "/v1/knowledge-items", {
        "title": "How do I get a refund?", "body": "Within 30 days.", "tags": ["billing"], "source_url": "https://example.com/r"})
    assert created.status_code == 201, created.get_json()
    item = created.get_json()
    assert (item["language"], item["tags"]) == ("en", ["billing"])
    taken = call(api, workspace, "POST", "/v1/knowledge-items", {"title": "HOW DO I GET A REFUND?", "body": "Never."})
    assert taken.status_code == 409 and taken.get_json()["error"]["code"] == "title_taken"
    other = call(api, workspace, "POST", "/v1/knowledge-items", {"title": "Shipping", "body": "Two days.", "language": "de"})
    assert other.get_json()["language"] == "de"

    changed = call(api, workspace, "PATCH", f"/v1/knowledge-items/{item['id']}", {"body": "Within 14 days.", "source_url": None})
    assert changed.status_code == 200 and (changed.get_json()["body"], changed.get_json()["source_url"]) == ("Within 14 days.", None)
    clash = call(api, workspace, "PATCH", f"/v1/knowledge-items/{item['id']}", {"title": "shipping"})
    assert clash.status_code == 409
    assert call(api, workspace, "PATCH", f"/v1/knowledge-items/{item['id']}", {"title": None}).status_code == 422

    listed = call(api, workspace, "GET", "/v1/knowledge-items?tag=billing").get_json()
    assert [i["id"] for i in listed["items"]] == [item["id"]] and listed["next_after"] is None
    found = call(api, workspace, "GET", "/v1/knowledge-items/search?q=refund").get_json()["items"]
    assert found[0]["id"] == item["id"] and {"fts", "trgm", "score"} <= set(found[0])
    gone = call(api, workspace, "DELETE", f"/v1/knowledge-items/{item['id']}")
    assert gone.status_code == 200 and gone.get_json()["body"] == "Within 14 days."
    assert call(api, workspace, "GET", f"/v1/knowledge-items/{item['id']}").status_code == 404


def test_a_json_import_creates_and_updates_by_title_and_reports_each_refused_item(api, workspace):
    seed(workspace["id"], ITEMS[:1])
    result = call(api, workspace, "POST", "/v1/knowledge-items/import", {"items": [
        {"title": "how do i get a refund?", "body": "Within 14 days now."},  # updates
        {"title": "Opening hours", "body": "9 to 5."},
        {"title": "Opening HOURS", "body": "twice"},  # the same title again
        {"title": "", "body": "no title"},
        "not an object",
    ]}).get_json()
    assert (result["created"], result["updated"], result["failed"]) == (1, 1, 3)
    assert [(e["index"], e["error"]["field"]) for e in result["errors"]] == [(2, "title"), (3, "title"), (4, "body")]
    with transaction():
        assert fetch("SELECT title, body FROM knowledge_item ORDER BY id") == [
            ("how do i get a refund?", "Within 14 days now."), ("Opening hours", "9 to 5.")]


def test_a_csv_import_reads_title_body_source_url_and_tags(api, workspace):
    csv_text = ("title,body,source_url,tags\n"
                "How do I get a refund?,\"Within 30 days, to your card.\",https://example.com/r,billing|returns\n"
                "Shipping,Two days.,,\n"
                ",no title,,\n")
    result = api.post("/v1/knowledge-items/import/csv", data=csv_text, content_type="text/csv", headers=workspace["auth"])
    assert result.status_code == 200, result.get_json()
    body = result.get_json()
    assert (body["created"], body["failed"], body["errors"][0]["line"]) == (2, 1, 4)
    with transaction():
        assert fetch("SELECT tags, source_url FROM knowledge_item ORDER BY id")[0] == (["billing", "returns"], "https://example.com/r")
    wrong = api.post("/v1/knowledge-items/import/csv", data=csv_text, content_type="text/plain", headers=workspace["auth"])
    assert wrong.status_code == 415
    no_header = api.post("/v1/knowledge-items/import/csv", data="a,b\n1,2\n", content_type="text/csv", headers=workspace["auth"])
    assert no_header.status_code == 422 and no_header.get_json()["error"]["field"] == "body"


@pytest.mark.parametrize("query_string", ["q=", "q=" + "x" * 501, "q=refund&channel=pigeon"])
def test_search_refuses_a_bad_question_naming_the_parameter(api, workspace, query_string):
    response = call(api, workspace, "GET", f"/v1/knowledge-items/search?{query_string}")
    assert response.status_code == 422
    assert response.get_json()["error"]["field"] in ("q", "channel")


def test_a_csv_import_reports_a_short_row_by_the_line_it_starts_on(api, workspace):
    csv_text = ("title,body\n"
                "Refunds,\"Within 30 days,\nto your card.\"\n"  # lines 2-3: one record
                "Shipping\n"  # line 4: one field
                "\n"
                "Hours,9 to 5.\n")
    result = api.post("/v1/knowledge-items/import/csv", data=csv_text, content_type="text/csv", headers=workspace["auth"])
    assert result.status_code == 200, result.get_json()
    body = result.get_json()
    assert (body["created"], body["failed"]) == (2, 1)
    assert body["errors"] == [{"line": 4, "error": {"code": "invalid_request", "field": "body",
                                                    "message": "line 4 has 1 fields; the header names 2"}}]
    for unusable in (b"", b"title,body\n", b"title,body\nA,\xff\n"):
        refused = api.post("/v1/knowledge-items/import/csv", data=unusable, content_type="text/csv", headers=workspace["auth"])
        assert refused.status_code == 422 and refused.get_json()["error"]["field"] == "body", unusable


@pytest.mark.parametrize("query_string", ["tag=%00", "tag=a%01b", "tag=a%7Fb", "tag=", "tag=" + "x" * 101])
def test_listing_by_tag_refuses_a_tag_no_item_could_hold_naming_it(api, workspace, query_string):
    response = call(api, workspace, "GET", f"/v1/knowledge-items?{query_string}")
    assert response.status_code == 422, response.get_json()
    assert response.get_json()["error"]["field"] == "tag"
