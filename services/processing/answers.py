"""What the model said, validated in code: a reply, a handoff, or malformed.

The model is asked for exactly one JSON object, ``{"reply": "<text>"}`` or ``{"handoff": true,
"reason": "<short>"}``. Anything else — text around it, both keys or neither, an empty or
oversized reply, a completion cut by ``max_tokens``, no content, a tool call — is malformed,
and a malformed answer hands the conversation off (the customer is told a person will reply):
never guess at what a model meant.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from common.providers.openai_chat import Completion

MAX_CONTENT_BYTES = 16 * 1024
_FENCE = re.compile(r"\A\s*```(?:json|JSON)?\s*\n?(.*?)\n?\s*```\s*\Z", re.S)


class ModelAnswer(BaseModel):
    """The one JSON object the model must return."""

    model_config = ConfigDict(extra="ignore", strict=True)

    reply: str | None = Field(default=None, min_length=1, max_length=8000)
    handoff: bool = False
    reason: str | None = Field(default=None, max_length=200)

    @model_validator(mode="after")
    def exactly_one(self) -> ModelAnswer:
        if (self.reply is not None) == self.handoff:
            raise ValueError("exactly one of reply and handoff")
        return self


@dataclass(frozen=True)
class Verdict:
    """``reply`` to send; else a handoff, with the model's ``reason`` or why it was ``malformed``."""

    reply: str | None = None
    reason: str | None = None
    malformed: str | None = None

    @property
    def handoff(self) -> bool:
        return self.reply is None


def clean(text: str) -> str:
    """``text`` without control characters (newlines and tabs kept), trimmed."""
    return "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) != "Cc").strip()


def unfenced(content: str) -> str:
    """``content`` without one surrounding ```json fence (models add one despite being told not to)."""
    match = _FENCE.match(content)
    return match.group(1) if match else content


def judge(completion: Completion) -> Verdict:
    """The verdict on a completion (see the module's docstring)."""
    if completion.tool_calls:
        return Verdict(malformed="tool_calls")
    if completion.finish_reason == "length":
        return Verdict(malformed="cut by max_tokens")
    if completion.content is None:
        return Verdict(malformed="no content")
    return judge_text(completion.content)


def judge_text(content: str) -> Verdict:
    """The verdict on a completion's content."""
    if len(content.encode()) > MAX_CONTENT_BYTES:
        return Verdict(malformed="content too large")
    try:
        parsed = json.loads(unfenced(content))
    except ValueError:
        return Verdict(malformed="not JSON")
    if not isinstance(parsed, dict):
        return Verdict(malformed="not a JSON object")
    try:
        answer = ModelAnswer.model_validate(parsed)
    except ValidationError as exc:
        return Verdict(malformed=f"invalid: {exc.errors()[0]['msg']}"[:200])
    if answer.reply is not None:
        text = clean(answer.reply)
        return Verdict(reply=text) if text else Verdict(malformed="empty reply")
    return Verdict(reason=clean(answer.reason or "") or "model")
