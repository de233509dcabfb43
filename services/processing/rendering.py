"""Content processing: turn accepted messages into sendable content.

For now content is sent as written; templates and personalisation render here in later work.
The claim from ``accepted`` to ``queued`` is what makes this stage safe to run twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from common import lifecycle


def render_batch(ids: Sequence[int]) -> list[dict[str, Any]]:
    """Claim accepted messages, and scheduled ones that are due, among ``ids`` and mark them
    queued for routing (a scheduled message handed on early waits for its time)."""
    return lifecycle.advance(ids, ["accepted", "scheduled"], "queued", due_only=True)
