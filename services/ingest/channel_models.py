"""Request and response bodies of the channel configuration API (``/v1/channels/{channel}``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from services.ingest.models import SingleLine

Secret = Annotated[str, Field(min_length=1, max_length=4096), SingleLine]
Identity = Annotated[str, Field(min_length=1, max_length=320), SingleLine]
SettingName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z_]+$")]
SettingValue = (Annotated[StrictStr, Field(max_length=2048), SingleLine] | StrictInt | StrictFloat | StrictBool
                | Annotated[list[Annotated[StrictStr, Field(min_length=1, max_length=64), SingleLine]], Field(max_length=50)])
Provider = Literal["twilio", "smtp", "meta", "waha", "http", "widget"]


class ChannelSetup(BaseModel):
    """``PUT /v1/channels/{channel}``: the workspace's provider account for a channel (replaces any earlier one)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    provider: Provider | None = Field(None, description=(
        "`twilio` (sms), `smtp` (email), `meta` (whatsapp_cloud), `waha` (whatsapp_qr), `http` (http), `widget` (widget). "
        "Left out: the channel's."))
    credentials: Annotated[dict[SettingName, Secret], Field(max_length=16)] = Field(default_factory=dict, description=(
        "Secrets, stored encrypted and never returned: twilio `account_sid`, `auth_token`; smtp `username`, `password`; "
        "meta `access_token`, `app_secret`, `verify_token`; waha `api_key`; http `secret` (generated when left out)."))
    sender: Identity = Field(description=(
        "The sender identity: the From number (twilio), From address (smtp), phone-number id (meta), default session "
        "(waha), the URL messages are POSTed to (http), or the name replies are shown under (widget)."))
    senders: Annotated[list[Identity], Field(max_length=50)] = Field(default_factory=list, description=(
        "Further identities a message may name in `from` (numbers, addresses, WAHA sessions)."))
    settings: Annotated[dict[SettingName, SettingValue], Field(max_length=16)] = Field(default_factory=dict, description=(
        "What is not secret: twilio/meta `api_base`; meta `api_version`; smtp `host`, `port`, `security` "
        "(none, starttls, tls); waha `api_base`, `pace_seconds`, `jitter_seconds`; widget `title`, `greeting` and "
        "`allowed_origins` (the sites that may frame the chat, e.g. https://www.example.com; none: any)."))
    rate_limit_per_second: Annotated[float, Field(ge=0, le=100_000)] | None = Field(None, description=(
        "Most sends per second through this account. Left out: a Twilio long code's 1/s, WhatsApp Cloud's 80/s per "
        "number, one message per `pace_seconds` for a WAHA session, no limit for smtp and http."))
    webhook_secret: Secret | None = Field(None, description=(
        "The key the provider signs its webhooks with, stored encrypted: the WAHA HMAC key, the mail relay's "
        "Standard Webhooks secret. (Twilio signs with the auth token and Meta with the app secret.)"))


class ChannelView(BaseModel):
    """A workspace's channel configuration as the API shows it: which secrets are set, never their values."""

    channel: str
    provider: str
    account: str = Field(description="The provider's public id of the account (AccountSid, phone-number id, ...).")
    sender: str
    senders: list[str]
    settings: dict[str, object]
    rate_limit_per_second: float
    credentials_set: list[str] = Field(description="The names of the credentials that are set (their values are never shown).")
    webhook_secret_set: bool
    updated_at: str | None
    secret: str | None = Field(None, description="`http` only, once: the signing secret generated for this configuration.")
    embed_html: str | None = Field(None, description=(
        "`widget` only: the `<iframe>` to paste into a site; `account` is the inbox key the page is served under."))


class ChannelList(BaseModel):
    channels: list[ChannelView]
