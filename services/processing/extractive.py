"""The offline chatbot: the best knowledge-base answer verbatim, or a handoff.

No model is called. Retrieval (``common.knowledge.retrieve``) scores the top passages; the best
one is sent as written when its score clears the chatbot's ``min_score`` and leads the runner-up
by ``min_margin`` (two items that answer the question about equally well mean the question is
ambiguous: a person should answer it). Passages with the same body count once, so an answer
filed under two titles does not compete with itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def distinct(passages: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """``passages`` (best first) with each body kept once, at its best score."""
    seen: set[str] = set()
    kept = []
    for passage in passages:
        key = " ".join(str(passage["body"]).split()).casefold()
        if key not in seen:
            seen.add(key)
            kept.append(passage)
    return kept


def answer(passages: Sequence[Mapping[str, Any]], min_score: float, min_margin: float) -> str | None:
    """The body to send, or None to hand off (``low_confidence``).

    Parameters:
      passages: retrieved rows with ``body`` and ``score``, best first.
    """
    ranked = distinct(passages)
    if not ranked:
        return None
    top = float(ranked[0]["score"] or 0)
    second = float(ranked[1]["score"] or 0) if len(ranked) > 1 else 0.0
    if top >= min_score and top - second >= min_margin:
        return str(ranked[0]["body"])
    return None
