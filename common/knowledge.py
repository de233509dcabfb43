"""A workspace's knowledge base: the items the bot answers from, and the one query that finds them.

Each item stores its own ``tsvector`` (title weighted A above body B, in the item's language).
``retrieve`` finds the top 5 with no model, in one query scoped to the workspace: full-text rank
with the question's terms OR-joined (stemmed, stopwords gone) plus trigram similarity of the
title (a typo still finds "refund policy"), each side served by its GIN index, which holds
``workspace_id`` too (btree_gin), so one tenant's search never reads another's items (a small
knowledge base is read through its tenant's btree, which is quicker there). Room is
left for embeddings: a vector column and index later, merged into the same ranking.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg2.extras import Json

from common.db.connection import fetch, fetch_dicts

# ISO code (the API's) -> PostgreSQL text search configuration.
REGCONFIG = {"en": "english", "es": "spanish", "fr": "french", "de": "german", "pt": "portuguese", "it": "italian",
             "nl": "dutch", "sv": "swedish", "ru": "russian", "simple": "simple"}
LANGUAGE_OF = {config: code for code, config in REGCONFIG.items()}
TOP = 5
WEIGHTS = (0.6, 0.4)  # full-text rank, title trigram similarity (a chatbot's settings may change them)
TRIGRAM_THRESHOLD = 0.2
RANDOM_PAGE_COST = 1.1  # cached pages (see retrieve)
MAX_QUERY = 500

RETRIEVE = """
WITH q AS (
  SELECT nullif(replace(plainto_tsquery(%(cfg)s::regconfig, %(q)s)::text, ' & ', ' | '), '')::tsquery AS tsq,
         left(%(q)s, """ + str(MAX_QUERY) + """) AS raw)
SELECT k.id, k.title, k.body, k.source_url,
       coalesce(ts_rank_cd(k.search, q.tsq, 32), 0)::float8 AS fts,
       similarity(k.title, q.raw)::float8 AS trgm,
       (%(wf)s * coalesce(ts_rank_cd(k.search, q.tsq, 32), 0) + %(wt)s * similarity(k.title, q.raw))::float8 AS score
FROM knowledge_item k, q
WHERE k.workspace_id = %(ws)s
  AND (k.search @@ q.tsq OR k.title %% q.raw)
ORDER BY score DESC, k.id LIMIT %(top)s
"""


def retrieve(workspace_id: int, regconfig: str, text: str, weights: Sequence[float] = WEIGHTS,
             top: int = TOP) -> list[dict[str, Any]]:
    """The workspace's ``top`` items best matching ``text`` (inside the caller's transaction),
    best first, each with ``fts`` (0..1), ``trgm`` (0..1) and their weighted ``score``.

    Parameters:
      regconfig: the text search configuration of the question (``REGCONFIG`` values).
    """
    if regconfig not in LANGUAGE_OF:
        raise ValueError(f"unknown text search configuration {regconfig!r}")
    fetch(f"SET LOCAL pg_trgm.similarity_threshold = {TRIGRAM_THRESHOLD}")
    # The knowledge base is read often and stays cached: with the default random_page_cost (4,
    # a spinning disk's) the planner scans a 20,000-item tenant sequentially (40 ms) rather than
    # take the two GIN indexes (5 ms). A small tenant's items are read by its btree either way.
    fetch(f"SET LOCAL random_page_cost = {RANDOM_PAGE_COST}")
    return fetch_dicts(RETRIEVE, {"cfg": regconfig, "q": text[:MAX_QUERY], "ws": workspace_id,
                                  "wf": float(weights[0]), "wt": float(weights[1]), "top": top})


# --- the items ---------------------------------------------------------------------------------

COLUMNS = "id, title, body, source_url, tags, language::text AS language, created_at, updated_at"


class TitleTaken(Exception):
    """Another item of the workspace has this title (titles are unique, case-insensitively)."""


def create(workspace_id: int, item: dict[str, Any]) -> dict[str, Any] | None:
    """Add an item (``title``, ``body``, ``source_url``, ``tags``, ``language`` as a regconfig);
    None when its title is taken."""
    rows = fetch_dicts(f"""INSERT INTO knowledge_item (workspace_id, title, body, source_url, tags, language)
        VALUES (%(ws)s, %(title)s, %(body)s, %(source_url)s, %(tags)s, %(language)s::regconfig)
        ON CONFLICT (workspace_id, lower(title)) DO NOTHING RETURNING {COLUMNS}""", {**item, "ws": workspace_id})
    return rows[0] if rows else None


def get(workspace_id: int, item_id: int) -> dict[str, Any] | None:
    rows = fetch_dicts(f"SELECT {COLUMNS} FROM knowledge_item WHERE id = %s AND workspace_id = %s", (item_id, workspace_id))
    return rows[0] if rows else None


def page(workspace_id: int, after: int, limit: int, tag: str | None) -> list[dict[str, Any]]:
    """Items in id order after ``after``; only those with ``tag`` if given."""
    return fetch_dicts(f"SELECT {COLUMNS} FROM knowledge_item WHERE workspace_id = %s AND id > %s"
                       " AND (%s::text IS NULL OR tags @> ARRAY[%s::text]) ORDER BY id LIMIT %s",
                       (workspace_id, after, tag, tag, limit))


def change(workspace_id: int, item_id: int, changes: dict[str, Any]) -> dict[str, Any] | None:
    """Change the given fields of an item; None when there is no such item.

    Raises:
      TitleTaken: the new title is another item's.
    """
    if not changes:
        return get(workspace_id, item_id)
    if "title" in changes and fetch("SELECT 1 FROM knowledge_item WHERE workspace_id = %s AND lower(title) = lower(%s)"
                                    " AND id <> %s", (workspace_id, changes["title"], item_id)):
        raise TitleTaken(changes["title"])
    assigned = ", ".join(f"{name} = %({name})s" + ("::regconfig" if name == "language" else "") for name in changes)
    rows = fetch_dicts(f"UPDATE knowledge_item SET {assigned}, updated_at = now() WHERE id = %(id)s AND workspace_id = %(ws)s"
                       f" RETURNING {COLUMNS}", {**changes, "id": item_id, "ws": workspace_id})
    return rows[0] if rows else None


def delete(workspace_id: int, item_id: int) -> dict[str, Any] | None:
    rows = fetch_dicts(f"DELETE FROM knowledge_item WHERE id = %s AND workspace_id = %s RETURNING {COLUMNS}",
                       (item_id, workspace_id))
    return rows[0] if rows else None


_IMPORT = """
INSERT INTO knowledge_item (workspace_id, title, body, source_url, tags, language)
SELECT %(ws)s, i.title, i.body, i.source_url, coalesce(i.tags, '{}'), i.language::regconfig
FROM jsonb_to_recordset(%(items)s::jsonb) AS i(n int, title text, body text, source_url text, tags text[], language text)
ORDER BY i.n
ON CONFLICT (workspace_id, lower(title)) DO UPDATE SET
    title = excluded.title, body = excluded.body, source_url = excluded.source_url, tags = excluded.tags,
    language = excluded.language, updated_at = now()
RETURNING (xmax = 0) AS created
"""


def upsert_many(workspace_id: int, items: Sequence[dict[str, Any]]) -> tuple[int, int]:
    """Create or update (by title, case-insensitively) many items in one statement; titles must
    be distinct among ``items`` (the caller refuses later twins). Returns (created, updated)."""
    if not items:
        return 0, 0
    rows = fetch(_IMPORT, {"ws": workspace_id, "items": Json([{**item, "n": n} for n, item in enumerate(items)])})
    created = sum(1 for (was_new,) in rows if was_new)
    return created, len(rows) - created
