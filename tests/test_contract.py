"""The API contract (invariant 17): /openapi.json is generated from the declared operations, and
schemathesis fuzzes every operation in it against a running ingest over real HTTP.

No response may be a 5xx, and every response must have a documented status, content type and
body. Negative cases (invalid bodies, headers, path parameters) are generated too, so every
refusal must be documented as well.
"""

from __future__ import annotations

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import (
    FailureGroup,  # a BaseExceptionGroup: not caught as an Exception
)
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
OPERATIONS = {
    ("post", "/v1/messages"), ("post", "/v1/messages/batch"), ("get", "/v1/messages/{message_id}"), ("post", "/v1/messages/{message_id}/cancel"),
    ("post", "/v1/messages/{message_id}/reschedule"), ("post", "/v1/messages/cancel"), ("post", "/v1/messages/reschedule"),
    ("get", "/v1/messages/upcoming"), ("get", "/v1/stats"),
    ("get", "/healthz"), ("get", "/readyz"), ("get", "/metrics"), ("get", "/openapi.json"),
    ("post", "/webhooks/twilio/status"),
    ("post", "/v1/webhook-endpoints"), ("get", "/v1/webhook-endpoints"), ("get", "/v1/webhook-endpoints/{endpoint_id}"),
    ("patch", "/v1/webhook-endpoints/{endpoint_id}"), ("delete", "/v1/webhook-endpoints/{endpoint_id}"),
    ("post", "/v1/webhook-endpoints/{endpoint_id}/rotate-secret"), ("post", "/v1/webhook-endpoints/{endpoint_id}/test"),
    ("get", "/v1/webhook-endpoints/{endpoint_id}/deliveries"), ("post", "/v1/webhook-endpoints/{endpoint_id}/replay"),
    ("post", "/v1/webhook-deliveries/{delivery_id}/replay"),
    ("post", "/v1/schedules"), ("get", "/v1/schedules"), ("get", "/v1/schedules/{schedule_id}"),
    ("patch", "/v1/schedules/{schedule_id}"), ("delete", "/v1/schedules/{schedule_id}"),
    ("post", "/v1/schedules/{schedule_id}/pause"), ("post", "/v1/schedules/{schedule_id}/resume"),
    ("post", "/v1/sequences"), ("get", "/v1/sequences/{sequence_id}"), ("post", "/v1/sequences/{sequence_id}/enrolments"),
    ("get", "/v1/enrolments/{enrolment_id}"), ("patch", "/v1/enrolments/{enrolment_id}"), ("delete", "/v1/enrolments/{enrolment_id}"),
    ("post", "/v1/contacts"), ("get", "/v1/contacts/{contact_id}"), ("patch", "/v1/contacts/{contact_id}"),
    ("delete", "/v1/contacts/{contact_id}"),
    ("put", "/v1/channels/{channel}"), ("get", "/v1/channels/{channel}"), ("delete", "/v1/channels/{channel}"),
    ("get", "/v1/channels"),
    ("get", "/v1/conversations"), ("get", "/v1/conversations/{conversation_id}"),
    ("get", "/v1/conversations/{conversation_id}/messages"),
    ("get", "/v1/channels/whatsapp_qr/sessions/{name}"), ("get", "/v1/channels/whatsapp_qr/sessions/{name}/qr"),
    ("post", "/webhooks/twilio/inbound"), ("post", "/webhooks/email/events"), ("post", "/webhooks/email/inbound"),
    ("get", "/u/{token}"), ("post", "/u/{token}"), ("get", "/webhooks/whatsapp_cloud"), ("post", "/webhooks/whatsapp_cloud"),
    ("post", "/webhooks/waha"),
    ("post", "/v1/messages/preview"), ("post", "/v1/templates"), ("get", "/v1/templates/{template_id}"),
    ("delete", "/v1/templates/{template_id}"), ("post", "/v1/templates/{template_id}/preview"),
    ("post", "/v1/campaigns"), ("get", "/v1/campaigns"), ("get", "/v1/campaigns/{campaign_id}"),
    ("post", "/v1/campaigns/{campaign_id}/recipients"), ("post", "/v1/campaigns/{campaign_id}/recipients/csv"),
    ("post", "/v1/campaigns/{campaign_id}/start"), ("post", "/v1/campaigns/{campaign_id}/pause"),
    ("post", "/v1/campaigns/{campaign_id}/resume"), ("post", "/v1/campaigns/{campaign_id}/cancel"),
    ("get", "/v1/contacts"), ("post", "/v1/contacts/import"), ("post", "/v1/contacts/import/csv"),
    ("get", "/v1/suppressions"), ("post", "/v1/suppressions"), ("delete", "/v1/suppressions"),
    ("get", "/v1/workspace/settings"), ("patch", "/v1/workspace/settings"),
    # the compatibility routes of the five systems postroom replaces
    ("post", "/api/schedule-sms"), ("post", "/api/schedule-email"), ("post", "/api/broadcasts/{broadcast_id}/queue"),
    ("get", "/api/broadcasts/{broadcast_id}/status"),
    ("post", "/api/campaigns/send"), ("get", "/api/queue/status"), ("post", "/api/queue/worker"), ("get", "/api/queue/worker"),
    ("get", "/api/webhooks/whatsapp/status"), ("post", "/api/webhooks/whatsapp/status"),
    ("post", "/api/trigger/send-sms"), ("post", "/api/trigger/schedule-delay"), ("post", "/api/trigger/schedule-until"),
    ("post", "/api/trigger/cancel-job"), ("get", "/api/trigger/job-status"),
    ("post", "/api/event-messages"), ("post", "/api/event-messages/bulk"), ("post", "/api/event-messages/{message_id}/cancel"),
    ("post", "/api/event-messages/{message_id}/reschedule"), ("post", "/api/events/{event_id}/messages/clear"),
    ("post", "/api/events/{event_id}/contractors/{contractor_id}/messages/clear"),
    ("post", "/api/events/{event_id}/messages/reschedule"), ("get", "/api/event-messages/stats"),
    ("get", "/api/event-messages/upcoming"),
    # conversations, chatbots, the knowledge base and usage (the AI stage's API)
    ("post", "/v1/conversations/{conversation_id}/messages"), ("post", "/v1/conversations/{conversation_id}/handoff"),
    ("post", "/v1/conversations/{conversation_id}/resolve"), ("post", "/v1/conversations/{conversation_id}/reopen"),
    ("get", "/v1/conversations/{conversation_id}/events"),
    ("put", "/v1/chatbots/{channel}"), ("get", "/v1/chatbots/{channel}"), ("delete", "/v1/chatbots/{channel}"), ("get", "/v1/chatbots"),
    ("post", "/v1/knowledge-items"), ("get", "/v1/knowledge-items"), ("get", "/v1/knowledge-items/search"),
    ("get", "/v1/knowledge-items/{item_id}"), ("patch", "/v1/knowledge-items/{item_id}"), ("delete", "/v1/knowledge-items/{item_id}"),
    ("post", "/v1/knowledge-items/import"), ("post", "/v1/knowledge-items/import/csv"),
    ("get", "/v1/usage"),
    ("get", "/r/{code}"),
}


MAX_EXAMPLES = 30  # per operation and mode: 19 operations x 2 modes x 30 keeps the run under a minute


def test_every_operation_keeps_the_contract_under_fuzzing(ingest_url, workspace):
    # Given the document a running ingest serves, and a valid key for the operations that need one
    schema = schemathesis.openapi.from_url(f"{ingest_url}/openapi.json", timeout=10)
    document = requests.get(f"{ingest_url}/openapi.json", timeout=10).json()
    operations = [result.ok() for result in schema.get_all_operations()]
    # (schemathesis leaves out the document's own path; the test below reads it)
    assert {(op.method.lower(), op.path) for op in operations} == OPERATIONS - {("get", "/openapi.json")}
    broken: list[str] = []
    # When each operation is called over HTTP with generated valid and invalid requests
    for operation in operations:
        declared = document["paths"][operation.path][operation.method.lower()]
        takes_input = "parameters" in declared or "requestBody" in declared  # else no request is invalid
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if takes_input else (GenerationMode.POSITIVE,):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
            def call(case: schemathesis.Case) -> None:
                case.call_and_validate(headers=workspace["auth"], checks=CHECKS, timeout=10)

            try:
                call()
            except (Exception, FailureGroup) as exc:  # keep going: report every operation that breaks the contract
                broken.append(f"{operation.label} ({mode.value}): {exc}")
    # Then no response was a server error or undocumented
    assert not broken, "\n\n".join(broken)


def test_openapi_document_is_public_and_declares_every_operation(ingest_url):
    # Given no API key at all, the contract is readable
    response = requests.get(f"{ingest_url}/openapi.json", timeout=10)
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/json"
    document = response.json()
    assert document["openapi"].startswith("3.1")
    declared = {(method, path) for path, ops in document["paths"].items() for method in ops}
    assert declared == OPERATIONS
    ops = document["paths"]
    # Then each operation documents the refusals that follow from what it declares
    assert set(ops["/v1/messages"]["post"]["responses"]) == {"200", "202", "400", "401", "403", "409", "413", "422", "429", "500", "503"}
    assert set(ops["/v1/messages/{message_id}"]["get"]["responses"]) == {"200", "401", "403", "404", "429", "503"}
    assert set(ops["/v1/messages/{message_id}/cancel"]["post"]["responses"]) == {"200", "400", "401", "403", "404", "409", "413", "429", "500", "503"}
    assert set(ops["/webhooks/twilio/status"]["post"]["responses"]) == {"200", "403", "413", "422", "503"}
    assert set(ops["/healthz"]["get"]["responses"]) == {"200"}
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    assert ops["/v1/messages"]["post"]["responses"]["503"]["content"]["application/json"]["schema"] == error_ref
    assert ops["/v1/messages"]["post"]["responses"]["503"]["headers"]["Retry-After"]["required"] is True
    # Request models are pydantic's schemas, with the bounds the API enforces
    new_message = document["components"]["schemas"]["NewMessage"]
    body = next(s for s in new_message["properties"]["body"]["anyOf"] if s.get("type") == "string")
    assert new_message["additionalProperties"] is False and body["maxLength"] == 100_000  # an email's; per channel at accept


def test_a_declared_operation_is_routed_and_documented_by_the_declaration_alone(broker):
    from flask import Blueprint, jsonify

    from services.ingest import contract
    from services.ingest.models import Health

    # Given a new endpoint declared on a blueprint, and nothing else
    extra = Blueprint("extra", __name__, url_prefix="/v9")

    @contract.operation(extra, "GET", "/ping/{n}", summary="Ping", scope="messages:read",
                        ok={200: contract.Body(Health, "Pong.")})
    def ping(n: int):
        return jsonify({"ok": True})

    try:
        # Then it is in the document with the statuses its declaration implies
        entry = contract.openapi_document()["paths"]["/v9/ping/{n}"]["get"]
        assert set(entry["responses"]) == {"200", "401", "403", "429", "503"}
        assert entry["parameters"][0]["name"] == "n" and entry["security"] == [{"apiKey": []}]
        # And it is routed, with the declared scope enforced
        from flask import Flask

        app = Flask("t")
        app.register_blueprint(extra)
        assert [r.rule for r in app.url_map.iter_rules() if r.endpoint == "extra.ping"] == ["/v9/ping/<int:n>"]
    finally:
        contract.REGISTRY.pop(("GET", "/v9/ping/{n}"))
