"""Who is calling: the API key in ``Authorization: Bearer <key>`` (or, on the operations that
name it, in another header such as the compatibility routes' ``x-api-key``), its workspace and
its scopes.

401 when there is no valid key, 403 naming the scope when the key may not do this; on success
``g.workspace_id`` scopes every query of the request to the key's workspace, and ``g.api_key_id``
(the key's public prefix, never its secret) names the key for its rate limit.
"""

from __future__ import annotations

from flask import g, request

from common import apikeys
from services.ingest.errors import ApiError


def require(scope: str, key_headers: tuple[str, ...] = ()) -> apikeys.Grant:
    """The caller's grant, which allows ``scope``. The key is read from ``Authorization: Bearer``
    first, else from the first of ``key_headers`` the request has (old clients send ``x-api-key``).

    Raises:
      ApiError: 401 without a valid key, 403 when the key lacks ``scope``.
    """
    key = presented_key(key_headers)
    if not key:
        where = " or ".join(["'Authorization: Bearer <key>'", *(f"'{h}: <key>'" for h in key_headers)])
        raise ApiError(401, "unauthorized", f"send your API key as {where}", "Authorization")
    grant = apikeys.grant_for(key)
    if grant is None:
        raise ApiError(401, "unauthorized", "the API key is not valid", "Authorization")
    if not grant.allows(scope):
        raise ApiError(403, "forbidden", f"this API key lacks the scope {scope!r}", "Authorization")
    g.workspace_id = grant.workspace_id
    g.api_key_id = key.split("_")[1]  # grant_for accepted only pr_<prefix>_<secret>
    return grant


def presented_key(key_headers: tuple[str, ...] = ()) -> str:
    """The key the request presents ("" for none): a Bearer credential wins over ``key_headers``."""
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and key.strip():
        return key.strip()
    for name in key_headers:
        value = request.headers.get(name, "").strip()
        if value:
            return value
    return ""
