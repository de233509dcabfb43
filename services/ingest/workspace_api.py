"""REST API v1 for the workspace's own settings: its consent settings (``common.consent``) and the
identity words its compatibility routes accept (``compat_identities``, ``compat.framework``).

``help_text`` answers an inbound HELP or INFO on SMS and WhatsApp; ``urgent_bypasses_opt_out``
lets the workspace's urgent messages reach an address that opted out. They are configuration of
how the workspace sends, so they take the channel configuration scopes.
"""

from __future__ import annotations

from flask import Blueprint, Response, g, jsonify

from common import consent
from common.db.connection import transaction
from services.ingest.compat import framework
from services.ingest.contract import Body, operation
from services.ingest.errors import ApiError
from services.ingest.workspace_models import WorkspaceSettings, WorkspaceSettingsChange

workspace_api = Blueprint("workspace", __name__, url_prefix="/v1")


@operation(workspace_api, "GET", "/workspace/settings", summary="Read the workspace's consent settings and compatibility identities", scope="channels:read",
           ok={200: Body(WorkspaceSettings, "The settings.")})
def get_workspace_settings() -> tuple[Response, int]:
    with transaction():
        current = consent.settings_of(g.workspace_id) | {"compat_identities": framework.aliases(g.workspace_id)}
    return jsonify(current), 200


@operation(workspace_api, "PATCH", "/workspace/settings", summary="Change the workspace's consent settings or compatibility identities",
           scope="channels:write", request=WorkspaceSettingsChange, ok={200: Body(WorkspaceSettings, "The settings as now set.")})
def change_workspace_settings(body: WorkspaceSettingsChange) -> tuple[Response, int]:
    changes = {name: getattr(body, name) for name in body.model_fields_set}
    if "urgent_bypasses_opt_out" in changes and changes["urgent_bypasses_opt_out"] is None:
        raise ApiError(422, "invalid_request", "urgent_bypasses_opt_out must be true or false", "urgent_bypasses_opt_out")
    identities = changes.pop("compat_identities", None)
    if "compat_identities" in body.model_fields_set and identities is None:
        raise ApiError(422, "invalid_request", "compat_identities must be a list ([] removes them all)", "compat_identities")
    with transaction():
        current = consent.change_settings(g.workspace_id, changes)
        if identities is not None:
            current["compat_identities"] = framework.set_aliases(g.workspace_id, identities)
        else:
            current["compat_identities"] = framework.aliases(g.workspace_id)
    return jsonify(current), 200
