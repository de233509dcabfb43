"""Request and response bodies of the conversation actions: an agent's reply, and the moves
between ``bot``, ``open`` and ``resolved`` with their history."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.ingest.models import (
    MAX_BODY,
    ConversationView,
    Media,
    MessageAccepted,
    MultiLine,
    ShortText,
    SingleLine,
)

MAX_REPLY = MAX_BODY["email"]


class AgentReply(BaseModel):
    """``POST /v1/conversations/{id}/messages``: a person's reply, sent on the conversation's channel."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    body: Annotated[str, Field(min_length=1, max_length=MAX_REPLY, pattern=r"\S"), MultiLine] = Field(description=(
        "The text, at most the channel's length: sms 1,600, whatsapp 4,096, widget 4,096, email 100,000 characters."))
    media: Annotated[list[Media], Field(max_length=10)] | None = Field(None, description="sms and whatsapp only: files by link.")
    subject: Annotated[str, Field(min_length=1, max_length=998), SingleLine] | None = Field(
        None, description="email only: the subject (default: `Re:` and the customer's last subject).")


class ConversationReplyAccepted(BaseModel):
    """The reply accepted for sending, and the conversation (a person has it now)."""

    message: MessageAccepted
    conversation: ConversationView


class ConversationMove(BaseModel):
    """``POST …/handoff``, ``…/resolve``, ``…/reopen``: an optional note kept in the conversation's history."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    note: ShortText | None = Field(None, description="Why, in a word or a sentence; shown in `GET …/events`.")


class ConversationEvent(BaseModel):
    """One status change of a conversation."""

    id: int
    status: Literal["bot", "open", "resolved"]
    previous: Literal["bot", "open", "resolved"]
    reason: str | None = Field(description=(
        "api, agent_reply, inbound, keyword, low_confidence, model, malformed, quota, provider_error or stuck."))
    by: str = Field(description="Who moved it: api, agent, bot, inbound or reconciler.")
    message_id: int | None = Field(description="The message that caused it, if one did.")
    note: str | None
    at: str | None


class ConversationEvents(BaseModel):
    events: list[ConversationEvent]
