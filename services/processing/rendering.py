"""Content processing: turn accepted messages into sendable content.

A message sent with a template (``template_id``) is stored with its variables and an empty body;
here, for a batch, its templates are read in one query, each message rendered in the sandbox
(``common.templates``), and the bodies (with an email's subject and HTML, a WhatsApp template's
parameters, an SMS body's encoding and segments) written in one UPDATE. A message whose template
is gone or fails to render fails with ``error_code`` ``template``.

Links are rewritten to short links here too (``common.links``), on the rendered content and on
content sent as written, so an SMS's encoding and segments are those of the body as sent. The
same query finds the batch's templated messages and those whose text may hold a link; the
batch's links are inserted by the statement that writes the bodies. A message with neither is
not read at all. The claim from ``accepted`` to ``queued`` is what makes this stage safe to run
twice: only messages still waiting and due are rendered, and their rows stay locked until the
claim commits.

A message accepted with checks deferred to this stage (``content.deferred_checks``: the S2
compatibility routes take a ``to`` or ``from`` that does not validate, as the system they replace
did, see ``services.ingest.outgoing.resolve_deferring``) is found by the same query and fails
here with the refusal's code (``invalid_number``, ``bad_sender``), before routing or any provider.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg2.extras import Json

from common import lifecycle, links, segments
from common import templates as engine
from common.db.connection import fetch, fetch_dicts

WAITING = ["accepted", "scheduled"]

# The batch's messages still waiting and due that are templated or may have links, with their
# templates; locked, so that a second run of the same batch waits and then finds them claimed.
_TO_RENDER = f"""
SELECT m.id, m.workspace_id, m.channel, m.variables, m.template_id, m.body, m.content,
       t.id AS found, t.subject, t.text, t.html, t.whatsapp
FROM message m LEFT JOIN template t ON t.id = m.template_id AND t.workspace_id = m.workspace_id
WHERE m.id = ANY(%s) AND (m.status || '') = ANY(%s) AND (m.due_at IS NULL OR m.due_at <= now())
  AND (m.template_id IS NOT NULL OR {links.MAY_REWRITE_SQL} OR m.content ? 'deferred_checks')
FOR UPDATE OF m
"""

# The batch's links and its rendered content, in one statement.
_WRITE = """
WITH new_links AS (
    INSERT INTO link (code, workspace_id, message_id, url)
    SELECT code, workspace_id, message_id, url
    FROM jsonb_to_recordset(%s::jsonb) AS l(code text, workspace_id bigint, message_id bigint, url text)
)
UPDATE message m SET body = v.body, content = m.content || v.content, encoding = coalesce(v.encoding, m.encoding),
       segments = coalesce(v.segments, m.segments), updated_at = now()
FROM jsonb_to_recordset(%s::jsonb) AS v(id bigint, body text, content jsonb, encoding text, segments int)
WHERE m.id = v.id
"""


def render_batch(ids: Sequence[int]) -> list[dict[str, Any]]:
    """Render the templated messages among ``ids`` and rewrite their links, then claim accepted
    messages, and scheduled ones that are due, and mark them queued for routing (a scheduled
    message handed on early waits for its time). Returns the claimed messages."""
    _render(ids)
    return lifecycle.advance(ids, WAITING, "queued", due_only=True)


def _render(ids: Sequence[int]) -> None:
    if not ids:
        return
    batch = links.LinkBatch()
    rendered: list[dict[str, Any]] = []
    for row in fetch_dicts(_TO_RENDER, (list(ids), WAITING)):
        refused = (row["content"] or {}).get("deferred_checks")
        if refused:
            _fail(row["id"], "; ".join(r["error"] for r in refused), refused[0]["error_code"])
            continue
        written = _content(row)
        if written is None:
            continue
        out = _rewritten(written, batch.shortener(row["workspace_id"], row["id"])) if links.tracks(row["channel"], row["content"]) else written
        if row["template_id"] is None and out == written:
            continue  # "http://" without a link: the content stays as written
        body = out.pop("body")
        sms = row["channel"] == "sms" and bool(body)
        rendered.append({"id": row["id"], "body": body, "content": out, "encoding": segments.encoding(body) if sms else None,
                         "segments": segments.count_segments(body) if sms else None})
    if rendered:
        fetch(_WRITE, (Json(batch.rows), Json(rendered)))


def _content(row: dict[str, Any]) -> dict[str, Any] | None:
    """The message's content to send: its template rendered (None when that failed, and the
    message with it), or its own text and HTML."""
    if row["template_id"] is None:
        html = (row["content"] or {}).get("html")
        return {"body": row["body"], **({"html": html} if html is not None else {})}
    if row["found"] is None:
        _fail(row["id"], "the message's template was deleted before it was rendered")
        return None
    try:
        return engine.render(row, row["variables"] or {})
    except engine.TemplateProblem as exc:  # checked at accept; a template can still fail on its values
        _fail(row["id"], str(exc))
        return None


def _rewritten(out: dict[str, Any], shorten: links.Shorten) -> dict[str, Any]:
    """``out`` with the links of its text and of its HTML's anchors made short links."""
    out = {**out, "body": links.rewrite_text(out["body"], shorten)}
    if out.get("html") is not None:
        out["html"] = links.rewrite_html(out["html"], shorten)
    return out


def _fail(message_id: int, error: str, code: str = "template") -> None:
    lifecycle.advance([message_id], WAITING, "failed", detail={"error": error, "error_code": code}, due_only=True)
