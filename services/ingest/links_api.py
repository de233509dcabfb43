"""Short links: ``GET /r/{code}`` records a click on a tracked link and redirects to where it goes.

Unauthenticated, as a link in an SMS or an email must be: the code alone names the link, which
is why codes are unguessable (``common.links``). The click is recorded before the redirect is
answered, so a 302 means the click is counted; the answer is not cached, so every click reaches us.
A HEAD (link checkers, previews) is answered the same way but records nothing.
"""

from __future__ import annotations

from flask import Blueprint, redirect, request
from werkzeug.urls import iri_to_uri
from werkzeug.wrappers import Response

from common import links
from common.db.connection import transaction
from services.ingest.contract import Body, operation
from services.ingest.errors import ApiError

links_api = Blueprint("links", __name__)
CODE = {"code": {"maxLength": 64}}
LOCATION = {"Location": {"description": "The link's original address.", "required": True, "schema": {"type": "string"}}}


@operation(links_api, "GET", "/r/{code}", summary="Follow a tracked link (records the click)", errors=(404,), text_params=CODE,
           ok={302: Body(None, "To the link's original address; the click is recorded.", media_type="text/html", headers=LOCATION)})
def follow_link(code: str) -> Response:
    if not links.CODE.fullmatch(code):  # not one of ours: no need to ask the database
        raise ApiError(404, "not_found", "no such link")
    with transaction():
        if request.method == "HEAD":  # a link checker or a preview looking, not a person clicking
            url = links.destination(code)
        else:
            url = links.record_click(code, request.headers.get("User-Agent"), request.remote_addr)
    if url is None:
        raise ApiError(404, "not_found", "no such link")
    response = redirect(_header_safe(url), 302)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"  # the short link's code stays ours
    return response


def _header_safe(url: str) -> str:
    """``url`` as a Location header can carry it: an address written with non-ASCII letters (an
    IDN host, a path in another script) percent- and punycode-encoded, as a browser would."""
    try:
        return iri_to_uri(url)
    except ValueError:  # not an IRI after all (a bad IDN label): nothing to follow
        raise ApiError(404, "not_found", "no such link") from None
