"""S1's WhatsApp webhook under its old path, ``/api/webhooks/whatsapp/status`` (seed ``001_*.txt``):
the Meta app's webhook URL can stay as it is.

The same two operations as ``/webhooks/whatsapp_cloud`` (``services.ingest.whatsapp_hooks``), run by
the same views: the verification handshake (``hub.challenge`` echoed for a known verify token, 403
otherwise) and the signed POST of statuses and inbound messages (``X-Hub-Signature-256``; a bad
signature is kept in bounded form and answered 403). Meta is the caller, so the answers are Meta's
(plain text, the webhooks' error shape), not the compatibility routes' ``{"success": false}``; and
there is no API key: the signature is the authentication. The body limit is the webhooks' own
(``bounds.body_limit``).
"""

from __future__ import annotations

from flask import Response

from services.ingest import whatsapp_hooks
from services.ingest.compat import framework
from services.ingest.contract import Body, header, operation, query
from services.ingest.whatsapp_hooks import MAX_CHALLENGE, WhatsAppWebhook

blueprint = framework.blueprint("compat_s1_hooks", __name__, url_prefix="/api/webhooks", style=False)


@operation(blueprint, "GET", "/whatsapp/status", summary="S1: WhatsApp Cloud webhook verification on the old path",
           tags=framework.TAGS, errors=(403,),
           headers=[query("hub.mode", "`subscribe`."), query("hub.verify_token", "The verify token configured at Meta."),
                    query("hub.challenge", "Echoed back when the token is right.", maxLength=MAX_CHALLENGE)],
           ok={200: Body(None, "The challenge, as the body.", media_type="text/plain")})
def s1_whatsapp_status_verify() -> Response:
    return whatsapp_hooks.whatsapp_verify.__wrapped__()  # type: ignore[attr-defined, no-any-return]


@operation(blueprint, "POST", "/whatsapp/status", summary="S1: WhatsApp Cloud webhook (statuses, inbound) on the old path",
           tags=framework.TAGS, request=WhatsAppWebhook, errors=(403,),
           headers=[header("X-Hub-Signature-256", "sha256= and the hex HMAC-SHA256 of the raw body with the app secret.")],
           ok={200: Body(None, "Recorded and applied.", media_type="text/plain")})
def s1_whatsapp_status_webhook(body: WhatsAppWebhook) -> Response:
    return whatsapp_hooks.whatsapp_webhook.__wrapped__(body)  # type: ignore[attr-defined, no-any-return]
