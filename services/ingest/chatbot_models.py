"""Request and response bodies of the chatbot API (``/v1/chatbots/{channel}``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from common import chatbots
from common.knowledge import REGCONFIG
from services.ingest.channel_models import Secret
from services.ingest.models import MultiLine, SingleLine, Url

Language = Literal["en", "es", "fr", "de", "pt", "it", "nl", "sv", "ru", "simple"]
assert set(Language.__args__) == set(REGCONFIG)  # type: ignore[attr-defined]
Plan = Literal["basic", "pro", "premium"]
Keyword = Annotated[str, Field(min_length=1, max_length=40, pattern=r"\S"), SingleLine]
Message = Annotated[str, Field(min_length=1, max_length=1000, pattern=r"\S"), MultiLine]


class ChatbotSetup(BaseModel):
    """``PUT /v1/chatbots/{channel}``: the channel's chatbot (replaces any earlier one)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    provider: Literal["openai", "extractive"] = Field("extractive", description=(
        "`openai`: any OpenAI-compatible server (`base_url`, `api_key`, `model`); `extractive` (the default): no model, "
        "the best knowledge-base answer verbatim when it is clearly the best, else a handoff."))
    base_url: Url | None = Field(None, description=(
        "`openai`: the server's API base, e.g. https://api.openai.com/v1 (POSTROOM_AI_ALLOWED_NETWORKS may allow private "
        "addresses)."))
    api_key: Secret | None = Field(None, description=(
        "`openai`: stored encrypted, never returned. Left out, the stored key is kept while `base_url` stays the same."))
    model: Annotated[str, Field(min_length=1, max_length=200), SingleLine] | None = Field(None, description="`openai`: the model name.")
    product_name: Annotated[str, Field(min_length=1, max_length=100), SingleLine] | None = None
    guidelines: Annotated[str, Field(max_length=4000), MultiLine] | None = Field(None, description="How the bot should answer.")
    handoff_message: Message = Field(chatbots.HANDOFF_MESSAGE, description="Sent when the bot hands the conversation to a person.")
    fallback_message: Message = Field(chatbots.FALLBACK_MESSAGE, description=(
        "Sent when the model cannot answer (an error, an exhausted provider quota); the conversation is handed off."))
    handoff_keywords: Annotated[list[Keyword], Field(max_length=50)] = Field(
        default_factory=lambda: list(chatbots.HANDOFF_KEYWORDS), description="Words that hand off at once (whole words, any case).")
    temperature: Annotated[float, Field(ge=0, le=2)] = 0.2
    max_tokens: Annotated[int, Field(ge=16, le=4096)] = 300
    timeout_seconds: Annotated[float, Field(ge=1, le=120)] = 30.0
    language: Language = Field("en", description="The knowledge base's language (its stemming and stopwords).")
    min_score: Annotated[float, Field(ge=0, le=1)] = Field(0.30, description="`extractive`: the best item's score must reach this.")
    min_margin: Annotated[float, Field(ge=0, le=1)] = Field(0.05, description="`extractive`: ...and lead the next by this.")
    json_mode: StrictBool = Field(True, description="Ask the server for a JSON object (`response_format`); false if it refuses it.")
    enabled: StrictBool = True
    plan: Plan | None = Field(None, description="The workspace's plan (its AI lane). An `admin` key only.")
    monthly_quota: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = Field(None, description=(
        "The workspace's bot replies per month; null: unlimited. An `admin` key only."))


class ChatbotView(BaseModel):
    """A channel's chatbot as the API shows it: whether a key is set, never the key."""

    channel: str
    provider: str
    base_url: str | None
    api_key_set: bool
    model: str | None
    product_name: str | None
    guidelines: str | None
    handoff_message: str
    fallback_message: str
    handoff_keywords: list[str]
    temperature: float
    max_tokens: int
    timeout_seconds: float
    language: str
    min_score: float
    min_margin: float
    json_mode: bool
    enabled: bool
    plan: Plan = Field(description="The workspace's plan.")
    monthly_quota: int | None = Field(description="The workspace's monthly reply quota; null: unlimited.")
    quota_used: int = Field(description="Bot replies sent this month.")
    quota_reserved: int = Field(description="Bot replies on their way this month.")
    updated_at: str | None


class ChatbotList(BaseModel):
    chatbots: list[ChatbotView]
