"""REST API v1 for channel configuration: ``PUT``, ``GET`` and ``DELETE /v1/channels/{channel}``.

A workspace sets its own provider account per channel: provider, credentials, sender identities,
settings, rate limit and webhook secret. Credentials and the webhook secret are sealed with the
deployment's key before they reach PostgreSQL (``common.providers.config``) and are never
returned: a view names the credentials that are set. Without a configuration a channel uses the
deployment's default account from the environment.

The web chat widget is configured here too (``PUT /v1/channels/widget``): an inbox, whose public
``inbox_key`` is generated once and kept by later PUTs (pages embed it), with a display name
(``sender``) and the settings ``title``, ``greeting`` and ``allowed_origins`` (the sites that may
frame the page); its view carries the ``<iframe>`` snippet to embed.
"""

from __future__ import annotations

import html
import re
import secrets
from typing import Any

from flask import Blueprint, Response, g, jsonify
from peewee import IntegrityError

from common import signing
from common.config import settings
from common.db.connection import fetch, transaction
from common.netguard import BlockedAddress, parse_networks, vet_url
from common.providers import config as channel_config
from services.ingest import outgoing
from services.ingest.channel_models import ChannelList, ChannelSetup, ChannelView
from services.ingest.contract import Body, operation
from services.ingest.errors import ApiError
from services.ingest.models import CHANNELS

channels_api = Blueprint("channels", __name__, url_prefix="/v1")
# The channels a workspace configures: those messages are sent on, and the widget's inbox (whose
# messages are conversation replies only).
CONFIGURABLE = (*CHANNELS, "widget")
CHANNEL_PARAM = {"channel": {"enum": list(CONFIGURABLE)}}

# Per channel: its provider, the credentials it needs, and the settings it knows (name -> required).
PROVIDER = {"sms": "twilio", "email": "smtp", "whatsapp_cloud": "meta", "whatsapp_qr": "waha", "http": "http", "widget": "widget"}
REQUIRED_CREDENTIALS = {"twilio": ("account_sid", "auth_token"), "smtp": (), "meta": ("access_token", "app_secret", "verify_token"),
                        "waha": ("api_key",), "http": (), "widget": ()}
KNOWN_CREDENTIALS = {"twilio": ("account_sid", "auth_token"), "smtp": ("username", "password"),
                     "meta": ("access_token", "app_secret", "verify_token"), "waha": ("api_key",), "http": ("secret",),
                     "widget": ()}
KNOWN_SETTINGS: dict[str, dict[str, bool]] = {
    "twilio": {"api_base": False}, "smtp": {"host": True, "port": True, "security": False},
    "meta": {"api_base": False, "api_version": False},
    "waha": {"api_base": True, "pace_seconds": False, "jitter_seconds": False}, "http": {},
    "widget": {"title": False, "greeting": False, "allowed_origins": False},
}
# A site allowed to frame the widget: scheme://host[:port], nothing a CSP could read as more.
ORIGIN = re.compile(r"^https?://(\*\.)?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*(:[0-9]{1,5})?$")
DEFAULT_RATE = {"twilio": 1.0, "meta": 80.0}  # a US long code; Meta's default per business number
ACCOUNT_SID = re.compile(r"^AC[0-9a-fA-F]{32}$")
PHONE_NUMBER_ID = re.compile(r"^[0-9]{5,20}$")
SESSION = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _refuse(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid_request", message, field)


def _unknown_channel(channel: str) -> ApiError:
    return ApiError(404, "not_found", f"no channel {channel[:40]!r}; channels: {', '.join(CONFIGURABLE)}")


@operation(channels_api, "PUT", "/channels/{channel}", summary="Set the workspace's provider account for a channel",
           scope="channels:write", request=ChannelSetup, text_params=CHANNEL_PARAM,
           ok={200: Body(ChannelView, "Stored; credentials are encrypted and not shown.")}, errors=(404, 409))
def put_channel(channel: str, body: ChannelSetup) -> tuple[Response, int]:
    if channel not in CONFIGURABLE:
        raise _unknown_channel(channel)
    provider = body.provider or PROVIDER[channel]
    if provider != PROVIDER[channel]:
        raise _refuse("provider", f"{channel} is sent through {PROVIDER[channel]}")
    credentials, generated = _credentials(provider, body)
    options = _settings(provider, body)
    sender, account = _identity(channel, provider, body, credentials)
    senders = [s for s in body.senders if s != sender]
    if provider == "widget" and senders:
        raise _refuse("senders", "a widget inbox has one display name, `sender`")
    if provider == "waha":
        for name in senders:
            if not SESSION.match(name):
                raise _refuse("senders", f"{name[:64]!r} is not a session name (letters, digits, _ . -)")
        options["sessions"] = [sender, *senders]
    elif senders:
        options["senders"] = [outgoing.normalized_identity(channel, s, "senders") for s in senders]
    rate = body.rate_limit_per_second
    if rate is None:
        pace = float(options.get("pace_seconds", settings.waha_pace_seconds))
        rate = 1 / pace if provider == "waha" and pace > 0 else DEFAULT_RATE.get(provider, 0.0)
    with transaction():
        if fetch("SELECT 1 FROM channel_config WHERE provider = %s AND account_ref = %s AND workspace_id <> %s",
                 (provider, account, g.workspace_id)):
            raise _taken(provider, account)
        try:
            channel_config.save(g.workspace_id, channel, provider, account, credentials, sender, rate, options)
        except IntegrityError:  # another workspace took it meanwhile
            raise _taken(provider, account) from None
        view = _view(channel_config.load(g.workspace_id, channel))
    if generated:
        view["secret"] = generated
    return jsonify(view), 200


def _taken(provider: str, account: str) -> ApiError:
    return ApiError(409, "account_taken", f"this {provider} account ({account[:100]}) is configured by another workspace; "
                    "an account belongs to one workspace, whose secret alone vouches for its webhooks", "sender")


def _vet(url: str, field: str) -> None:
    """A provider address a workspace sets is checked like a webhook URL: public addresses only
    (unless POSTROOM_WEBHOOK_ALLOWED_NETWORKS allows more), so it cannot reach cloud metadata or
    the deployment's own services."""
    try:
        vet_url(url, parse_networks(settings.postroom_webhook_allowed_networks))
    except (BlockedAddress, ValueError) as exc:
        raise _refuse(field, f"{field} is refused: {exc}") from None


def _credentials(provider: str, body: ChannelSetup) -> tuple[dict[str, Any], str | None]:
    unknown = sorted(set(body.credentials) - set(KNOWN_CREDENTIALS[provider]))
    if unknown:
        raise _refuse("credentials", f"{provider} takes no credential {unknown[0]!r}; it takes: "
                      f"{', '.join(KNOWN_CREDENTIALS[provider]) or 'none'}")
    missing = [name for name in REQUIRED_CREDENTIALS[provider] if name not in body.credentials]
    if missing:
        raise _refuse("credentials", f"{provider} needs the credentials {', '.join(missing)}")
    credentials: dict[str, Any] = dict(body.credentials)
    if provider == "twilio" and not ACCOUNT_SID.match(credentials["account_sid"]):
        raise _refuse("credentials", "credentials.account_sid must be AC followed by 32 hex digits")
    generated = None
    if provider == "http" and "secret" not in credentials:
        generated = credentials["secret"] = signing.new_secret()
    if body.webhook_secret is not None:
        if provider in ("twilio", "meta", "http"):
            raise _refuse("webhook_secret", {"twilio": "Twilio signs webhooks with the auth token",
                                             "meta": "Meta signs webhooks with credentials.app_secret",
                                             "http": "the http channel signs with credentials.secret"}[provider])
        credentials["webhook_secret"] = body.webhook_secret
    return credentials, generated


def _settings(provider: str, body: ChannelSetup) -> dict[str, Any]:
    known = KNOWN_SETTINGS[provider]
    unknown = sorted(set(body.settings) - set(known))
    if unknown:
        raise _refuse("settings", f"{provider} has no setting {unknown[0]!r}; it has: {', '.join(known) or 'none'}")
    missing = [name for name, required in known.items() if required and name not in body.settings]
    if missing:
        raise _refuse("settings", f"{provider} needs the settings {', '.join(missing)}")
    options = dict(body.settings)
    api_base = options.get("api_base", "http://x")
    if not isinstance(api_base, str) or not re.match(r"^https?://[^\s/]+", api_base):
        raise _refuse("settings", "settings.api_base must be an http(s) URL")
    port = options.get("port", 25)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise _refuse("settings", "settings.port must be a whole number from 1 to 65535")
    if "security" in options and options["security"] not in ("none", "starttls", "tls"):
        raise _refuse("settings", "settings.security must be none, starttls or tls")
    for name in ("pace_seconds", "jitter_seconds"):
        value = options.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 3600:
            raise _refuse("settings", f"settings.{name} must be a number of seconds from 0 to 3600")
    host, version = options.get("host", "x"), options.get("api_version", "v1.0")
    if not isinstance(host, str) or not re.match(r"^[A-Za-z0-9.:\[\]-]{1,253}$", host):
        raise _refuse("settings", "settings.host must be a host name or address")
    if not isinstance(version, str) or not re.match(r"^v\d+\.\d+$", version):
        raise _refuse("settings", "settings.api_version must look like v25.0")
    if "api_base" in options:
        _vet(str(api_base), "settings")
    if "host" in options:
        _vet(f"http://{host}:{port}/", "settings")
    if provider == "widget":
        _widget_settings(options)
    return options


def _widget_settings(options: dict[str, Any]) -> None:
    for name in ("title", "greeting"):
        if name in options and not isinstance(options[name], str):
            raise _refuse("settings", f"settings.{name} must be text")
    origins = options.get("allowed_origins", [])
    if not isinstance(origins, list) or not all(isinstance(o, str) and ORIGIN.match(o) for o in origins):
        raise _refuse("settings", "settings.allowed_origins must be a list of origins such as https://www.example.com "
                      "(scheme, host and port only): the sites that may frame the widget")


def _identity(channel: str, provider: str, body: ChannelSetup, credentials: dict[str, Any]) -> tuple[str, str]:
    """The sender identity, checked for the channel, and the account's public id."""
    if provider == "widget":  # the display name; the public inbox key is generated once and kept
        with transaction(single_statement=True):
            kept = fetch("SELECT account_ref FROM channel_config WHERE workspace_id = %s AND channel = 'widget'"
                         " AND provider = 'widget'", (g.workspace_id,))
        return body.sender, kept[0][0] if kept else secrets.token_urlsafe(16)
    if provider == "http":
        try:
            vet_url(body.sender, parse_networks(settings.postroom_webhook_allowed_networks))
        except (BlockedAddress, ValueError) as exc:
            raise _refuse("sender", f"sender (the URL) is refused: {exc}") from None
        return body.sender, f"ws{g.workspace_id}"
    if provider == "meta":
        if not PHONE_NUMBER_ID.match(body.sender):
            raise _refuse("sender", "sender must be the WhatsApp phone-number id (digits)")
        return body.sender, body.sender
    if provider == "waha":
        if not SESSION.match(body.sender):
            raise _refuse("sender", "sender must be a WAHA session name (letters, digits, _ . -)")
        return body.sender, f"{body.settings['api_base']}|{body.sender}"
    sender = outgoing.normalized_identity(channel, body.sender, "sender")
    return sender, credentials["account_sid"] if provider == "twilio" else sender


def _view(config: channel_config.ChannelConfig | None) -> dict[str, Any]:
    assert config is not None
    options = dict(config.settings)
    senders = options.pop("senders", None) or [s for s in options.get("sessions", []) if s != config.sender_identity]
    return {"channel": config.channel, "provider": config.provider, "account": config.account_ref,
            "sender": config.sender_identity, "senders": senders, "settings": options,
            "rate_limit_per_second": config.rate_limit_per_second,
            "credentials_set": sorted(k for k in config.credentials if k != "webhook_secret"),
            "webhook_secret_set": "webhook_secret" in config.credentials, "updated_at": config.updated_at,
            **({"embed_html": embed_html(config)} if config.provider == "widget" else {})}


def widget_url() -> str:
    """Where browsers reach the widget service."""
    return (settings.postroom_widget_public_url
            or f"http://{settings.postroom_widget_host}:{settings.postroom_widget_port}").rstrip("/")


def embed_html(config: channel_config.ChannelConfig) -> str:
    """The snippet a site pastes to show the inbox's chat: an iframe of the widget's page."""
    title = html.escape(str(config.settings.get("title") or config.sender_identity), quote=True)
    src = html.escape(f"{widget_url()}/widget/{config.account_ref}", quote=True)
    return (f'<iframe src="{src}" title="{title}" style="width:360px;height:520px;border:0" '
            'loading="lazy" referrerpolicy="no-referrer"></iframe>')


@operation(channels_api, "GET", "/channels/{channel}", summary="Read the workspace's configuration of a channel",
           scope="channels:read", text_params=CHANNEL_PARAM,
           ok={200: Body(ChannelView, "The configuration; secrets are named, never shown.")}, errors=(404,))
def get_channel(channel: str) -> tuple[Response, int]:
    if channel not in CONFIGURABLE:
        raise _unknown_channel(channel)
    with transaction():
        channel_config.forget()  # read what is stored now, not this process's cache
        config = channel_config.load(g.workspace_id, channel)
    if config is None:
        raise ApiError(404, "not_found", f"this workspace has no {channel} configuration: the deployment's default account sends")
    return jsonify(_view(config)), 200


@operation(channels_api, "GET", "/channels", summary="List the workspace's channel configurations", scope="channels:read",
           ok={200: Body(ChannelList, "Every configured channel; the others use the deployment's default accounts.")})
def list_channels() -> tuple[Response, int]:
    with transaction():
        channel_config.forget()
        found = [channel_config.load(g.workspace_id, channel) for channel in CONFIGURABLE]
    return jsonify({"channels": [_view(c) for c in found if c is not None]}), 200


@operation(channels_api, "DELETE", "/channels/{channel}", summary="Remove the workspace's configuration of a channel",
           scope="channels:write", text_params=CHANNEL_PARAM,
           ok={200: Body(ChannelView, "The configuration as it was; the deployment's default account sends again.")},
           errors=(404,))
def delete_channel(channel: str) -> tuple[Response, int]:
    if channel not in CONFIGURABLE:
        raise _unknown_channel(channel)
    with transaction():
        channel_config.forget()
        config = channel_config.load(g.workspace_id, channel)
        if config is None or not channel_config.delete(g.workspace_id, channel):
            raise ApiError(404, "not_found", f"this workspace has no {channel} configuration")
    return jsonify(_view(config)), 200
