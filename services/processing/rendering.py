"""Content processing: turn accepted messages into sendable content.

A message sent with a template (``template_id``) is stored with its variables and an empty body;
here, for a batch, its templates are read in one query, each message rendered in the sandbox
(``common.templates``), and the bodies (with an email's subject and HTML, a WhatsApp template's
parameters, an SMS body's encoding) written in one UPDATE. A message whose template is gone or
fails to render fails with ``error_code`` ``template``. Other content is sent as written. The
claim from ``accepted`` to ``queued`` is what makes this stage safe to run twice: only messages
still waiting and due are rendered, and their rows stay locked until the claim commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg2.extras import Json

from common import lifecycle, segments
from common import templates as engine
from common.db.connection import fetch, fetch_dicts

WAITING = ["accepted", "scheduled"]

# The batch's templated messages still waiting and due, with their templates; locked, so that a
# second run of the same batch waits and then finds them claimed.
_TEMPLATED = """
SELECT m.id, m.channel, m.variables, t.id AS found, t.subject, t.text, t.html, t.whatsapp
FROM message m LEFT JOIN template t ON t.id = m.template_id AND t.workspace_id = m.workspace_id
WHERE m.id = ANY(%s) AND m.template_id IS NOT NULL AND (m.status || '') = ANY(%s) AND (m.due_at IS NULL OR m.due_at <= now())
FOR UPDATE OF m
"""

_WRITE = """
UPDATE message m SET body = v.body, content = m.content || v.content, encoding = coalesce(v.encoding, m.encoding), updated_at = now()
FROM jsonb_to_recordset(%s::jsonb) AS v(id bigint, body text, content jsonb, encoding text)
WHERE m.id = v.id
"""


def render_batch(ids: Sequence[int]) -> list[dict[str, Any]]:
    """Render the templated messages among ``ids``, then claim accepted messages, and scheduled
    ones that are due, and mark them queued for routing (a scheduled message handed on early
    waits for its time). Returns the claimed messages."""
    _render_templates(ids)
    return lifecycle.advance(ids, WAITING, "queued", due_only=True)


def _render_templates(ids: Sequence[int]) -> None:
    if not ids:
        return
    rendered: list[dict[str, Any]] = []
    for row in fetch_dicts(_TEMPLATED, (list(ids), WAITING)):
        if row["found"] is None:
            _fail(row["id"], "the message's template was deleted before it was rendered")
            continue
        try:
            out = engine.render(row, row["variables"] or {})
        except engine.TemplateProblem as exc:  # checked at accept; a template can still fail on its values
            _fail(row["id"], str(exc))
            continue
        body = out.pop("body")
        encoding = segments.encoding(body) if row["channel"] == "sms" and body else None
        rendered.append({"id": row["id"], "body": body, "content": out, "encoding": encoding})
    if rendered:
        fetch(_WRITE, (Json(rendered),))


def _fail(message_id: int, error: str) -> None:
    lifecycle.advance([message_id], WAITING, "failed", detail={"error": error, "error_code": "template"}, due_only=True)
