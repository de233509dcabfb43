"""Content processing: turn accepted messages into sendable content.

For now content is sent as written; templates and personalisation render here in later work.
The claim from ``accepted`` to ``queued`` is what makes this stage safe to run twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from common import lifecycle


def render_batch(ids: Sequence[int]) -> list[dict[str, Any]]:
    """Claim accepted messages among ``ids`` and mark them queued for routing."""
    return lifecycle.advance(ids, ["accepted"], "queued")
