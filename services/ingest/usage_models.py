"""Response body of ``GET /v1/usage``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class UsageRow(BaseModel):
    key: str | None = Field(description=(
        "The day (YYYY-MM-DD in the workspace's time zone), the channel or the model; null for what has none (under "
        "`model`: messages, and extractive decisions)."))
    inbound: int = Field(description="Customer messages stored.")
    outbound: int = Field(description="Messages accepted for sending: conversation replies, and under day and channel API and campaign sends too.")
    ai_calls: int = Field(description="Model calls and extractive decisions.")
    answered: int
    handoffs: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    estimated_tokens: int = Field(description="Of total_tokens, those estimated (the server sent no usage).")


class Usage(BaseModel):
    from_: str = Field(alias="from")
    to: str
    group_by: Literal["day", "channel", "model"]
    rows: list[UsageRow]
