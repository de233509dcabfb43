"""Request and response bodies of the knowledge base API (``/v1/knowledge-items``)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from services.ingest.chatbot_models import Language
from services.ingest.models import ErrorDetail, MultiLine, SingleLine, Tag, Url

MAX_IMPORT = 10_000
MAX_TITLE = 500
MAX_ITEM_BODY = 20_000
Title = Annotated[str, Field(min_length=1, max_length=MAX_TITLE, pattern=r"\S"), SingleLine]
ItemBody = Annotated[str, Field(min_length=1, max_length=MAX_ITEM_BODY, pattern=r"\S"), MultiLine]
ItemTags = Annotated[list[Tag], Field(max_length=20)]


class KnowledgeItemNew(BaseModel):
    """``POST /v1/knowledge-items``: one item the bot may answer from."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    title: Title = Field(description="The question (or topic), unique in the workspace whatever its case.",
                         examples=["How do I get a refund?"])
    body: ItemBody = Field(description="The answer or text, as the bot may send it.")
    source_url: Url | None = Field(None, description="Where the answer comes from.")
    tags: ItemTags = Field(default_factory=list)
    language: Language | None = Field(None, description=(
        "The item's language (its stemming and stopwords). Left out: the workspace's first chatbot's, else `en`."))


class KnowledgeItemChange(BaseModel):
    """``PATCH /v1/knowledge-items/{id}``: the fields given change; `source_url: null` removes it."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    title: Title | None = None
    body: ItemBody | None = None
    source_url: Url | None = None
    tags: ItemTags | None = None
    language: Language | None = None


class KnowledgeItemView(BaseModel):
    id: int
    title: str
    body: str
    source_url: str | None
    tags: list[str]
    language: str
    created_at: str | None
    updated_at: str | None


class KnowledgeItemList(BaseModel):
    items: list[KnowledgeItemView]
    next_after: int | None = Field(description="Pass as `after` for the next page; null on the last page.")


class KnowledgeHit(BaseModel):
    """An item as retrieval found it, with its scores (what the bot's thresholds compare)."""

    id: int
    title: str
    body: str
    source_url: str | None
    fts: float = Field(description="Full-text rank, 0 to 1 (title words weigh more than body words).")
    trgm: float = Field(description="Trigram similarity of the title to the question, 0 to 1.")
    score: float = Field(description="The weighted sum the bot ranks by.")


class KnowledgeSearch(BaseModel):
    items: list[KnowledgeHit] = Field(description="The top 5, best first.")


ImportItems = Annotated[list[Any], Field(min_length=1, max_length=MAX_IMPORT),
                        WithJsonSchema({"type": "array", "minItems": 1, "maxItems": MAX_IMPORT,
                                        "items": {"$ref": "#/components/schemas/KnowledgeItemNew"}})]


class KnowledgeImport(BaseModel):
    """``POST /v1/knowledge-items/import``: many items at once, each as for ``POST /v1/knowledge-items``."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    items: ImportItems = Field(description=(
        f"Up to {MAX_IMPORT:,} items: an item whose title (any case) the workspace has updates that item, else one is "
        "created. An invalid item, or one repeating an earlier item's title, is reported in `errors` and skipped."))


class KnowledgeCsv(BaseModel):
    """A CSV of knowledge items: the document's description of the ``text/csv`` body."""

    model_config = ConfigDict(json_schema_extra={
        "type": "string",
        "description": ("A header row `title,body,source_url,tags` (source_url and tags optional, a `language` column "
                        "too), then an item per row; tags separated by `|`. Up to 10,000 rows, imported as the JSON "
                        "import does."),
        "examples": ["title,body,source_url,tags\nHow do I get a refund?,Within 30 days from your account page.,,billing\n"]})


class KnowledgeItemFailure(BaseModel):
    index: int = Field(description="The item's position in `items`, from 0.")
    error: ErrorDetail


class KnowledgeLineFailure(BaseModel):
    line: int = Field(description="The row's line in the CSV, the header being line 1.")
    error: ErrorDetail


class KnowledgeImported(BaseModel):
    created: int
    updated: int = Field(description="Items of the workspace with the same title, replaced.")
    failed: int = Field(description="Items refused: each is in `errors`.")
    errors: list[KnowledgeItemFailure]


class KnowledgeCsvImported(BaseModel):
    created: int
    updated: int
    failed: int
    errors: list[KnowledgeLineFailure]
