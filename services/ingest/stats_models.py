"""The response bodies of ``GET /v1/messages/upcoming`` and ``GET /v1/stats``, as pydantic models
(the contract, invariant 17). Both take only query parameters, checked by their views."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Lane = Literal["urgent", "normal", "bulk", "premium", "pro", "basic"]  # the AI stage's lanes are the plans


class UpcomingMessage(BaseModel):
    """A scheduled message: stored, not yet handed to processing."""

    id: int
    channel: str
    to: str
    priority: str
    tags: list[str] | dict[str, str]
    send_at: str = Field(description="When it is due (UTC).")
    status: str = Field(description="`scheduled` (for a later send_at, or held by quiet hours).")


class UpcomingCounts(BaseModel):
    """Over the whole window, not only this page."""

    total: int
    by_channel: dict[str, int]
    by_tag: dict[str, int] = Field(description=(
        "Messages per tag: `name=value` for tags given as names and values, the label itself for a list; "
        "the most frequent tags only (see `by_tag_truncated`)."))
    by_tag_truncated: bool = Field(description="`true` when the window holds more distinct tags than `by_tag` lists.")


class Upcoming(BaseModel):
    """Scheduled messages due before ``until``, soonest first, a page at a time."""

    until: str = Field(description="The window's end: now plus `within` (UTC).")
    messages: list[UpcomingMessage]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")
    counts: UpcomingCounts


class StageFigures(BaseModel):
    """One stage and lane, counted in this workspace's messages (webhooks: its deliveries)."""

    stage: str = Field(description="processing, routing, a sender per channel (sms, http, widget), webhooks, ai (lanes premium, pro, basic).")
    lane: Lane
    waiting: int = Field(description="Ready for the stage and not yet taken.")
    active: int = Field(description="Being worked on: claimed for sending (senders), being delivered (webhooks).")
    scheduled: int = Field(description="Due later: scheduled sends (processing), retries and throttled sends waiting for their time.")
    completed_last_hour: int
    failed_last_hour: int
    oldest_waiting_seconds: float = Field(description="How long the oldest waiting one has waited; 0 when none waits.")


class QueueLength(BaseModel):
    """One broker queue, counted in broker messages (each carries a batch of ids)."""

    stage: str
    lane: Lane
    queue: str
    ready: int = Field(description="In the queue for any worker to fetch.")
    taken: int = Field(description="Prefetched or in progress at a worker.")
    delayed: int = Field(description="Short retries and throttled sends waiting for their time.")


class Stats(BaseModel):
    """The pipeline's backlog: this workspace's figures, and the deployment's broker queues."""

    at: str = Field(description="When these figures were read (UTC).")
    stages: list[StageFigures]
    queues: list[QueueLength] | None = Field(description=(
        "Deployment-wide (the broker holds no workspace): every workspace's work together. "
        "Null while the broker cannot be reached."))
