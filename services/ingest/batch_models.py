"""Request and response bodies of ``POST /v1/messages/batch`` (``services.ingest.batch``).

The request is checked as a whole only for its shape (an object with 1 to MAX_BATCH messages);
each message is validated on its own, so one bad item is that item's error and not the request's.
The document still shows each item's full schema (``SkipValidation`` keeps it).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, SkipValidation

from services.ingest.models import ErrorDetail, NewMessage, SingleLine

MAX_BATCH = 1000
MAX_ITEM_KEY = 255


class BatchItem(NewMessage):
    """One message of a batch: as for ``POST /v1/messages``, with its own idempotency key if wanted."""

    idempotency_key: Annotated[str, Field(min_length=1, max_length=MAX_ITEM_KEY), SingleLine] | None = Field(None, description=(
        "This message's own idempotency key, as `Idempotency-Key` is for `POST /v1/messages`: a later item or message "
        "with the same key (within POSTROOM_IDEMPOTENCY_TTL_SECONDS) answers this message's id instead of sending again."))


class NewBatch(BaseModel):
    """``POST /v1/messages/batch``: up to 1,000 messages, each accepted or refused on its own."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    messages: Annotated[list[SkipValidation[BatchItem]], Field(min_length=1, max_length=MAX_BATCH)] = Field(description=(
        "The messages, each as for `POST /v1/messages` (plus `idempotency_key`). Each is validated on its own: "
        "an invalid one is refused in `results` while the others are accepted."))

    def items(self) -> list[Any]:
        """The messages as sent (validated one by one by the view)."""
        return list(self.messages)


class BatchItemResult(BaseModel):
    """One message's outcome, by its position in the request: an id and status, or an error."""

    index: int = Field(description="The message's position in `messages`, from 0.")
    id: int | None = Field(None, description="The message's id, when accepted (or found by its idempotency key).")
    status: str | None = Field(None, description="`accepted` or `scheduled`; for a message found by its key, its status now.")
    replayed: bool | None = Field(None, description="`true`: an earlier message with this item's idempotency key (or, with "
                                                    "`on_conflict: return`, the same unique tags), not a new one.")
    error: ErrorDetail | None = Field(None, description="Why this message was refused; `field` is its path, e.g. `messages[3].to`.")


class BatchAccepted(BaseModel):
    """The answer to a batch: every message's outcome in request order, and the counts."""

    results: list[BatchItemResult]
    accepted: int = Field(description="Messages with an id (new, or found by their key).")
    failed: int = Field(description="Messages refused; each has its `error` in `results`.")
