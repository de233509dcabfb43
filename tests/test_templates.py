"""Templates and personalisation: stored and checked by the API, rendered in the sandbox by
processing, and previewed without storing anything."""

from __future__ import annotations

from typing import Any

import pytest

from common import templates as engine
from common.db.connection import fetch, transaction
from tests.support import message, running_workers, status_of, wait_for

TO = "+15005550006"


def create(api, workspace: dict, **fields: Any) -> Any:
    return api.post("/v1/templates", json={"name": "welcome", "channel": "sms", **fields}, headers=workspace["auth"])


def stored_messages() -> int:
    with transaction():
        return fetch("SELECT count(*) FROM message")[0][0]


def test_a_template_is_created_read_and_deleted_with_the_variables_it_needs(api, workspace):
    # Given a template using two variables, one in a loop
    response = create(api, workspace, text="Hi {{ first_name }}, {% for i in items %}{{ i }} {% endfor %}")
    assert response.status_code == 201, response.get_json()
    created = response.get_json()
    assert created["variables"] == ["first_name", "items"] and created["channel"] == "sms"
    # When it is read, then deleted
    read = api.get(f"/v1/templates/{created['id']}", headers=workspace["auth"])
    deleted = api.delete(f"/v1/templates/{created['id']}", headers=workspace["auth"])
    # Then it was there, and is gone
    assert read.status_code == 200 and read.get_json() == created
    assert deleted.status_code == 200 and deleted.get_json()["id"] == created["id"]
    assert api.get(f"/v1/templates/{created['id']}", headers=workspace["auth"]).status_code == 404


def test_a_duplicate_name_is_409_and_a_syntax_error_is_422_naming_the_part(api, workspace):
    assert create(api, workspace, text="Hi {{ name }}").status_code == 201
    duplicate = create(api, workspace, text="Hello")
    broken = api.post("/v1/templates", json={"name": "other", "channel": "email", "subject": "Hi {{ name",
                                             "text": "fine"}, headers=workspace["auth"])
    assert duplicate.status_code == 409 and duplicate.get_json()["error"]["field"] == "name"
    assert broken.status_code == 422
    assert broken.get_json()["error"]["field"] == "subject" and "syntax error" in broken.get_json()["error"]["message"]


def test_preview_renders_and_counts_ucs2_segments_for_an_emoji(api, workspace):
    template_id = create(api, workspace, text="Hi {{ first_name }} 🎉 your code is {{ code }}").get_json()["id"]
    response = api.post(f"/v1/templates/{template_id}/preview", json={"variables": {"first_name": "Ada", "code": 4711}},
                        headers=workspace["auth"])
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"body": "Hi Ada 🎉 your code is 4711", "subject": None, "html": None, "template": None,
                                   "encoding": "UCS-2", "segments": 1}
    long = api.post(f"/v1/templates/{template_id}/preview", json={"variables": {"first_name": "A" * 60, "code": 1}},
                    headers=workspace["auth"])
    assert long.get_json()["encoding"] == "UCS-2" and long.get_json()["segments"] == 2  # 84 units > 70
    assert stored_messages() == 0


def test_a_message_with_a_template_is_delivered_with_the_rendered_body(api, workspace, sandbox, broker):
    # Given a template
    template_id = create(api, workspace, text="Hi {{ first_name }}, order {{ order_id }} is on its way").get_json()["id"]
    # When a message names it with its variables, and the workers run
    with running_workers(broker):
        response = api.post("/v1/messages", json={"channel": "sms", "to": TO, "template_id": template_id,
                                                  "variables": {"first_name": "Ada", "order_id": 42}},
                            headers=workspace["auth"])
        assert response.status_code == 202, response.get_json()
        message_id = response.get_json()["id"]
        wait_for(lambda: status_of(message_id) == "delivered", what="templated message delivered")
    # Then the sandbox received the rendered text, and the message keeps it with its template and variables
    assert [m["body"] for m in sandbox.messages(to=TO)] == ["Hi Ada, order 42 is on its way"]
    row = message(message_id)
    assert row["body"] == "Hi Ada, order 42 is on its way" and row["template_id"] == template_id
    assert row["variables"] == {"first_name": "Ada", "order_id": 42} and row["encoding"] == "GSM-7"


def test_a_missing_variable_is_422_naming_it_and_nothing_is_stored(api, workspace):
    template_id = create(api, workspace, text="Hi {{ first_name }}, order {{ order_id }}").get_json()["id"]
    for path in ("/v1/messages", "/v1/messages/preview"):
        response = api.post(path, json={"channel": "sms", "to": TO, "template_id": template_id,
                                        "variables": {"first_name": "Ada"}}, headers=workspace["auth"])
        assert response.status_code == 422, path
        assert response.get_json()["error"]["field"] == "variables" and "order_id" in response.get_json()["error"]["message"]
    with_body = api.post("/v1/messages", json={"channel": "sms", "to": TO, "template_id": template_id, "body": "x",
                                               "variables": {"first_name": "Ada", "order_id": 1}}, headers=workspace["auth"])
    assert with_body.status_code == 422 and with_body.get_json()["error"]["field"] == "body"
    assert stored_messages() == 0


def test_message_preview_renders_without_storing_anything(api, workspace):
    template_id = create(api, workspace, text="Hi {{ first_name }}").get_json()["id"]
    response = api.post("/v1/messages/preview", json={"channel": "sms", "to": TO, "template_id": template_id,
                                                      "variables": {"first_name": "Ada"}}, headers=workspace["auth"])
    plain = api.post("/v1/messages/preview", json={"channel": "sms", "to": TO, "body": "plain"}, headers=workspace["auth"])
    assert response.status_code == 200 and response.get_json()["body"] == "Hi Ada"
    assert response.get_json()["encoding"] == "GSM-7" and response.get_json()["segments"] == 1
    assert plain.status_code == 200 and plain.get_json()["body"] == "plain"
    assert stored_messages() == 0


@pytest.mark.parametrize("source", ["{{ ''.__class__.__mro__ }}", "{{ name['__class__'] }}"])
def test_a_template_reaching_for_python_internals_is_refused_at_creation(api, workspace, source):
    response = create(api, workspace, text=source)
    assert response.status_code == 422 and response.get_json()["error"]["field"] == "text"
    assert "not allowed" in response.get_json()["error"]["message"]


def test_the_sandbox_refuses_what_creation_cannot_see(api, workspace):
    # Given a template whose unsafe attribute is only named at render time (a filter's argument)
    template_id = create(api, workspace, text='{{ name|attr("__class__") }}').get_json()["id"]
    # When it is previewed, Then the sandbox refuses it: 422 naming the part
    response = api.post(f"/v1/templates/{template_id}/preview", json={"variables": {"name": "x"}}, headers=workspace["auth"])
    assert response.status_code == 422 and response.get_json()["error"]["field"] == "text"
    assert "sandbox" in response.get_json()["error"]["message"]
    # And rendering an unchecked row directly is refused the same way
    with pytest.raises(engine.TemplateProblem, match="unsafe"):
        engine.render({"text": "{{ ''.__class__.__mro__ }}"}, {})


def test_html_is_escaped_in_the_html_part_and_not_in_the_text(api, workspace):
    response = api.post("/v1/templates", json={"name": "receipt", "channel": "email", "subject": "For {{ who }}",
                                               "text": "Hi {{ who }}", "html": "<p>Hi {{ who }}</p>"}, headers=workspace["auth"])
    template_id = response.get_json()["id"]
    preview = api.post(f"/v1/templates/{template_id}/preview", json={"variables": {"who": "<b>Ada & co</b>"}},
                       headers=workspace["auth"]).get_json()
    assert preview["body"] == "Hi <b>Ada & co</b>" and preview["subject"] == "For <b>Ada & co</b>"
    assert preview["html"] == "<p>Hi &lt;b&gt;Ada &amp; co&lt;/b&gt;</p>"
    assert preview["encoding"] is None and preview["segments"] is None  # not sms


def test_a_message_whose_template_was_deleted_fails_with_error_code_template(api, workspace, broker):
    # Given a templated message accepted, whose template is deleted before processing renders it
    template_id = create(api, workspace, text="Hi {{ first_name }}").get_json()["id"]
    from common import intake

    with transaction():
        row = intake.insert(workspace["id"], {"channel": "sms", "to": TO, "template_id": template_id,
                                              "variables": {"first_name": "Ada"}}, None)
    assert row is not None
    api.delete(f"/v1/templates/{template_id}", headers=workspace["auth"])
    # When processing renders the batch
    from services.processing.rendering import render_batch

    with transaction():
        claimed = render_batch([row["id"]])
    # Then it failed instead of being sent with an empty body
    assert claimed == []
    assert status_of(row["id"]) == "failed" and message(row["id"])["error_code"] == "template"
