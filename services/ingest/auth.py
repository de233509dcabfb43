"""Who is calling: the API key in ``Authorization: Bearer <key>``, its workspace and its scopes.

401 when there is no valid key, 403 naming the scope when the key may not do this; on success
``g.workspace_id`` scopes every query of the request to the key's workspace, and ``g.api_key_id``
(the key's public prefix, never its secret) names the key for its rate limit.
"""

from __future__ import annotations

from flask import g, request

from common import apikeys
from services.ingest.errors import ApiError


def require(scope: str) -> apikeys.Grant:
    """The caller's grant, which allows ``scope``.

    Raises:
      ApiError: 401 without a valid key, 403 when the key lacks ``scope``.
    """
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise ApiError(401, "unauthorized", "send your API key as 'Authorization: Bearer <key>'", "Authorization")
    grant = apikeys.grant_for(key)
    if grant is None:
        raise ApiError(401, "unauthorized", "the API key is not valid", "Authorization")
    if not grant.allows(scope):
        raise ApiError(403, "forbidden", f"this API key lacks the scope {scope!r}", "Authorization")
    g.workspace_id = grant.workspace_id
    g.api_key_id = key.split("_")[1]  # grant_for accepted only pr_<prefix>_<secret>
    return grant
