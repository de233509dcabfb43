"""Request and response bodies of the workspace's settings API (``services.ingest.workspace_api``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from services.ingest.models import MAX_SMS_BODY, MultiLine, SingleLine

HelpText = Annotated[str, Field(min_length=1, max_length=MAX_SMS_BODY,
                                examples=["Acme alerts: help at acme.example/help. Reply STOP to opt out."]), MultiLine]
_HELP = ("The answer to an inbound HELP or INFO on SMS and WhatsApp, sent as an urgent message from the number or "
         "session written to; null: HELP is not answered.")
CompatIdentity = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^\S(.*\S)?$", examples=["ws_123"]), SingleLine]
MAX_COMPAT_IDENTITIES = 50
_IDENTITIES = ("Identity words the compatibility routes (`/api/...`) accept as naming this workspace, besides its id and "
               "name: the old systems' `workspaceId` (S0, S2) and `x-user-id` (S1). Any other value there is refused with 403.")
_BYPASS = ("Whether an `urgent` message (codes, alerts) goes to an address that opted out (reason `opt_out`); "
           "any other suppression reason always holds. Default false.")


class WorkspaceSettings(BaseModel):
    """The workspace's consent settings."""

    help_text: str | None = Field(description=_HELP)
    urgent_bypasses_opt_out: bool = Field(description=_BYPASS)
    compat_identities: list[str] = Field(description=_IDENTITIES)


class WorkspaceSettingsChange(BaseModel):
    """``PATCH /v1/workspace/settings``: the settings to change; the others stay as they are."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    help_text: HelpText | None = Field(None, description=_HELP)
    urgent_bypasses_opt_out: StrictBool | None = Field(None, description=_BYPASS + " Not null.")
    compat_identities: Annotated[list[CompatIdentity], Field(max_length=MAX_COMPAT_IDENTITIES)] | None = Field(
        None, description=_IDENTITIES + f" Replaces the list (at most {MAX_COMPAT_IDENTITIES}); `[]` removes them all. Not null.")
