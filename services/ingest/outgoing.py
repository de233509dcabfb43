"""A new outgoing message made ready to store: its route, addresses and channel content checked.

``POST /v1/messages`` and a schedule's message both go through ``resolve``. It decides the
route (``channel``, or the fallback list ``channels``), the address on each channel (``to``: one
for all, one per channel, or a contact's), checks that each channel of the route can carry what
the message holds (a body, media, a template, an email's subject and HTML), that the sender is
the workspace's own, that a template (``template_id``) is the workspace's, for the route's channel,
and given every variable it needs, and counts an SMS body's segments and encoding, so a caller learns at once
that an emoji made the message UCS-2. Links are tracked unless ``track_clicks`` is false (kept as
``content.track_clicks``, which processing reads when it rewrites them, ``common.links``); the
segments are counted on the body as it will be sent, its links already short links (their length
is fixed). Every refusal is a 422 naming the field.

What resolving reads (a contact's addresses, a template, a channel's configuration) goes through
``Lookups``: a batch of messages shares one, which reads the contacts of the whole batch in one
query and each template and channel configuration once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from common import links, phones, segments
from common import templates as engine
from common.config import settings
from common.db.connection import fetch
from common.providers import config as channel_config
from common.quiet_hours import QuietHours
from services.ingest import templates
from services.ingest.errors import ApiError
from services.ingest.models import MAX_BODY, NewMessage
from services.ingest.validation import EXPECTED

EMAIL = re.compile(r"^[^@\s<>(),;:\"\[\]\\]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")
PHONE_CHANNELS = ("sms", "whatsapp_cloud", "whatsapp_qr")
# Which channels carry each optional field; a field no channel of the route carries is refused.
CARRIED_BY: dict[str, tuple[str, ...]] = {
    "subject": ("email",), "html": ("email",), "reply_to": ("email",), "attachments": ("email",),
    "media": ("sms", "whatsapp_cloud", "whatsapp_qr"), "template": ("whatsapp_cloud",),
    "fallback_template": ("whatsapp_cloud",), "context_message_id": ("whatsapp_cloud", "whatsapp_qr"),
    "messaging_service_sid": ("sms",),
}
CONTENT_FIELDS = tuple(CARRIED_BY)


def _refuse(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid_request", message, field)


class Lookups:
    """What resolving the messages of one request reads, read once per request (call inside its
    transaction): contacts' addresses, templates and channel configurations of ``workspace_id``."""

    def __init__(self, workspace_id: int):
        self.workspace_id = workspace_id
        self._contacts: dict[int, dict[str, str]] = {}
        self._templates: dict[int, dict[str, Any] | None] = {}
        self._configs: dict[str, Any] = {}

    def load_contacts(self, contact_ids: Iterable[int]) -> None:
        """Read the addresses of every one of ``contact_ids`` not read yet, in one query."""
        wanted = sorted({c for c in contact_ids if c not in self._contacts})
        if not wanted:
            return
        for contact_id in wanted:
            self._contacts[contact_id] = {}
        for contact_id, channel, address in fetch(
                "SELECT contact_id, channel, address FROM contact_address WHERE workspace_id = %s AND contact_id = ANY(%s)",
                (self.workspace_id, wanted)):
            self._contacts[contact_id][channel] = address

    def contact(self, contact_id: int) -> dict[str, str]:
        """The contact's addresses by channel (empty: no such contact, or none)."""
        self.load_contacts((contact_id,))
        return self._contacts[contact_id]

    def template(self, template_id: int) -> dict[str, Any] | None:
        if template_id not in self._templates:
            self._templates[template_id] = templates.get(self.workspace_id, template_id)
        return self._templates[template_id]

    def config(self, channel: str) -> Any:
        if channel not in self._configs:
            self._configs[channel] = channel_config.load(self.workspace_id, channel)
        return self._configs[channel]


def resolve(workspace_id: int, body: NewMessage, lookups: Lookups | None = None) -> dict[str, Any]:
    """The message as ``common.intake.insert`` stores it: the request's fields plus ``channel`` and
    ``to`` (the route's first), ``routes`` (when there is more than one channel), ``content``,
    and for SMS ``segments`` and ``encoding``. Reads the workspace's channel configurations and,
    for ``contact_id``, the contact's addresses (call inside a transaction).

    Raises:
      ApiError: 422 naming the field at fault.
    """
    lookups = lookups or Lookups(workspace_id)
    route = _route(body)
    addresses = _addresses(lookups, body, route)
    template = _check_template(lookups, body, route)
    if template is not None:
        check_variables(template, body.variables or {}, "variables")
    fields = resolve_content(workspace_id, body, route, template, lookups)
    fields.update(to=addresses[0])
    if len(route) > 1:
        fields["routes"] = [{"channel": c, "to": a} for c, a in zip(route, addresses, strict=True)]
    if template is not None:
        fields["variables"] = body.variables or {}  # the body is rendered by processing, before routing
    if body.unique_tags:
        fields["unique_tags"] = _unique_tags(body.unique_tags, body.tags)
    return fields


def _unique_tags(names: list[str], tags: Any) -> list[str]:
    """The message's own unique tag names; each must be one of its tags (else no key would be made)."""
    missing = [n for n in names if not isinstance(tags, dict) or n not in tags]
    if missing:
        raise _refuse("unique_tags", f"unique_tags names {', '.join(missing)}, which tags (an object of names and values) lacks")
    return list(names)


def resolve_content(workspace_id: int, body: Any, route: list[str], template: dict[str, Any] | None,
                    lookups: Lookups | None = None) -> dict[str, Any]:
    """What a message (or every message of a campaign) sends, whoever it goes to: ``body``'s
    fields with ``channel`` (the route's first), ``content``, ``from`` and an SMS body's
    ``segments`` and ``encoding``; quiet hours, content and sender checked.

    Raises:
      ApiError: 422 naming the field at fault.
    """
    lookups = lookups or Lookups(workspace_id)
    _check_quiet_hours(body)
    _check_content(body, route, template is not None)
    if "http" in route and lookups.config("http") is None:
        raise _refuse("channel", "this workspace has no http channel configured (postroom channel http --workspace NAME --url URL)")
    sender = _check_sender(lookups, body, route)
    fields = body.model_dump(by_alias=True, exclude={"channels", "contact_id", "recipients", "track_clicks", "unique_tags",
                                                     *CONTENT_FIELDS})
    fields.update(channel=route[0], body=body.body or "", **{"from": sender})
    fields["content"] = {name: value for name, value in body.model_dump(include=set(CONTENT_FIELDS)).items() if value is not None}
    if getattr(body, "track_clicks", True) is False:
        fields["content"]["track_clicks"] = False  # only an opt-out is stored: the default path's content is unchanged
    sent = body.body
    if sent and links.tracks(route[0], fields["content"]):
        sent = links.projected(sent)
        _check_length(sent, route)
    if "sms" in route and sent:
        fields["encoding"] = segments.encoding(sent)
        fields["segments"] = segments.count_segments(sent)
    return fields


def _check_length(sent: str, route: list[str]) -> None:
    """The body as sent, its links made short links, still fits each channel of the route (a
    short link can be longer than the link it replaces)."""
    for channel in route:
        if len(sent) > MAX_BODY[channel]:
            raise _refuse("body", f"body with its links as short links is {len(sent)} characters; a {channel} body holds at most "
                          f"{MAX_BODY[channel]} (shorten it, or send track_clicks false)")


def check_variables(template: dict[str, Any], variables: dict[str, Any], field: str, who: str = "") -> None:
    """Every variable ``template`` needs is among ``variables``; else 422 naming ``field`` (and ``who``)."""
    absent = engine.missing(template["variables"], variables)
    if absent:
        raise _refuse(field, f"template {template['id']} needs the variable {absent[0]}"
                      + (f" (and {', '.join(absent[1:])})" if absent[1:] else "") + (f", which {who} lacks" if who else ""))


def route_of(body: Any) -> list[str]:
    """The channels a message goes on, in order (``channel``, or the fallback list ``channels``)."""
    return _route(body)


def _route(body: NewMessage) -> list[str]:
    if (body.channel is None) == (body.channels is None):
        raise _refuse("channel", "give channel (one channel) or channels (a fallback route), not both")
    route = [str(c) for c in body.channels] if body.channels is not None else [str(body.channel)]
    if len(set(route)) != len(route):
        raise _refuse("channels", "channels must not repeat a channel")
    return route


def _addresses(lookups: Lookups, body: NewMessage, route: list[str]) -> list[str]:
    """The recipient's address on each channel of the route, normalised."""
    if (body.to is None) == (body.contact_id is None):
        raise _refuse("to", "give to (an address) or contact_id, not both")
    if body.contact_id is not None:
        rows = lookups.contact(body.contact_id)
        if not rows:
            raise _refuse("contact_id", f"no contact {body.contact_id} with an address in this workspace")
        raw: dict[str, str | None] = {channel: rows.get(channel) or (rows.get("sms") if channel in PHONE_CHANNELS else None) for channel in route}
        missing = [c for c, a in raw.items() if a is None]
        if missing:
            raise _refuse("contact_id", f"contact {body.contact_id} has no address for {', '.join(missing)}")
    elif isinstance(body.to, dict):
        extra = sorted(set(body.to) - set(route))
        if extra:
            raise _refuse("to", f"to names {', '.join(extra)}, which is not in the route")
        missing = [c for c in route if c not in body.to]
        if missing:
            raise _refuse("to", f"to has no address for {', '.join(missing)}")
        raw = {str(channel): address for channel, address in body.to.items()}
    else:
        raw = {channel: body.to for channel in route}
    return [_normalized(channel, str(raw[channel]), "contact_id" if body.contact_id else "to") for channel in route]


def normalized_identity(channel: str, address: str, field: str) -> str:
    """An address or sender identity on ``channel`` in the form messages store it; 422 naming ``field``."""
    return _normalized(channel, address, field)


def _normalized(channel: str, address: str, field: str) -> str:
    if channel in PHONE_CHANNELS:
        try:
            return phones.normalize(address)
        except ValueError as exc:
            raise _refuse(field, f"{field} must be {EXPECTED['to']} for {channel}: {exc}") from None
    if channel == "email":
        if not EMAIL.match(address):
            raise _refuse(field, f"{field} must be an email address such as someone@example.com for email")
        local, _, domain = address.rpartition("@")
        return f"{local}@{domain.lower()}"
    return address


def _check_quiet_hours(body: Any) -> None:
    if body.quiet_hours is not None and body.quiet_hours != "off":
        try:
            QuietHours.parse(body.quiet_hours)
        except ValueError as exc:
            raise _refuse("quiet_hours", f"quiet_hours: {exc} (or off)") from None


def template_for(workspace_id: int, body: Any, route: list[str]) -> dict[str, Any] | None:
    """The template ``body`` names, checked as for a message (its variables are not)."""
    return _check_template(Lookups(workspace_id), body, route, variables=False)


def _check_template(lookups: Lookups, body: Any, route: list[str], variables: bool = True) -> dict[str, Any] | None:
    """With ``template_id``: the workspace's template, for the route's one channel, and no content
    of the message's own. Returns the template, or None when there is none."""
    if body.template_id is None:
        if variables and body.variables is not None:
            raise _refuse("variables", "variables apply only with template_id")
        return None
    for name in ("body", "subject", "html", "template"):
        if getattr(body, name) is not None:
            raise _refuse(name, f"{name} comes from the template; leave it out when giving template_id")
    template = lookups.template(body.template_id)
    if template is None:
        raise _refuse("template_id", f"no template {body.template_id} in this workspace")
    if route != [template["channel"]]:
        raise _refuse("channel", f"template {body.template_id} is for {template['channel']}; send it on that channel alone")
    return template


def _check_content(body: Any, route: list[str], templated: bool = False) -> None:
    """Each channel of the route can carry the message, and every field given is carried by one."""
    for name, channels in CARRIED_BY.items():
        if getattr(body, name) is not None and not set(channels) & set(route):
            raise _refuse(name, f"{name} applies to {' and '.join(channels)} only")
    for channel in route:
        if body.body is not None and len(body.body) > MAX_BODY[channel]:
            raise _refuse("body", f"body is {len(body.body)} characters; a {channel} body holds at most {MAX_BODY[channel]}")
        if body.body is None and not templated and not _has_alternative(body, channel):
            raise _refuse("body", f"body is required for {channel}" + {
                "sms": " (or media)", "email": " (or html)", "whatsapp_cloud": " (or template or media)",
                "whatsapp_qr": " (or media)"}.get(channel, ""))
    if body.media is not None and any(c.startswith("whatsapp") for c in route) and len(body.media) > 1:
        raise _refuse("media", "a WhatsApp message carries one media file")
    if body.template is not None and body.media is not None:
        raise _refuse("template", "send a template or media, not both (a template's media goes in template.header_media)")
    if body.messaging_service_sid is not None and body.from_ is not None:
        raise _refuse("messaging_service_sid", "give from or messaging_service_sid, not both")


def _has_alternative(body: Any, channel: str) -> bool:
    if channel == "email":
        return body.html is not None
    if channel == "whatsapp_cloud":
        return body.template is not None or body.media is not None
    if channel in ("sms", "whatsapp_qr"):
        return body.media is not None
    return False


def _check_sender(lookups: Lookups, body: Any, route: list[str]) -> str | None:
    """``from`` is one of the workspace's identities on the route's first channel (its channel
    configuration's, or the deployment's default); returns it normalised."""
    if body.from_ is None:
        return None
    channel = route[0]
    if channel == "http":
        raise _refuse("from", "from does not apply to http; leave it out")
    sender = _normalized(channel, body.from_, "from") if channel in ("sms", "email") else body.from_
    own = identities(lookups.workspace_id, channel, lookups.config(channel), read=True)
    if sender not in own:
        raise _refuse("from", f"from must be one of this workspace's {channel} identities: {', '.join(own)} (or left out)")
    return sender


def identities(workspace_id: int, channel: str, config: Any = None, *, read: bool = False) -> list[str]:
    """The sender identities the workspace may use on ``channel`` (``read``: ``config`` is its
    channel configuration, already read, None when it has none)."""
    if not read:
        config = channel_config.load(workspace_id, channel)
    if config is not None:
        return [config.sender_identity, *[s for s in config.settings.get("senders", []) if s != config.sender_identity],
                *config.settings.get("sessions", [])]
    return {
        "sms": [settings.twilio_from], "email": [settings.email_from],
        "whatsapp_cloud": [settings.whatsapp_phone_number_id],
        "whatsapp_qr": [s.strip() for s in settings.waha_sessions.split(",") if s.strip()],
    }.get(channel, [])


# Refusals that ``resolve_deferring`` leaves to the processing stage, by field: the error code the
# message then fails with (Twilio's 21211 "invalid To" and 21212 "invalid From", by name).
DEFERRED_CODES = {"to": "invalid_number", "from": "bad_sender"}
_STAND_IN = "+15005550006"  # a valid number that the other checks run with in place of a deferred `to`


def resolve_deferring(workspace_id: int, body: NewMessage) -> dict[str, Any]:
    """As ``resolve``, except that a phone number ``to`` (one channel) that does not validate and a ``from`` that
    is not the workspace's own are not refused: the message keeps them as given, and
    ``content.deferred_checks`` records each refusal (field, ``DEFERRED_CODES`` code, message). The
    processing stage fails such a message with that code before any provider sees it
    (``services.processing.rendering``). The S2 compatibility routes resolve with it: the system
    they replace accepted such a job and failed it when it ran. Every other check is ``resolve``'s.
    """
    lookups = Lookups(workspace_id)
    route = _route(body)
    checks: list[tuple[str, str, str | None, Callable[[Lookups, NewMessage, list[str]], object]]] = []
    if isinstance(body.to, str) and body.contact_id is None and len(route) == 1 and route[0] in PHONE_CHANNELS:
        checks.append(("to", "to", _STAND_IN, _addresses))
    if body.from_ is not None and body.messaging_service_sid is None:
        checks.append(("from", "from_", None, _check_sender))
    deferred: list[dict[str, str]] = []
    stand_in: dict[str, Any] = {}
    for field, attribute, replacement, check in checks:
        try:
            check(lookups, body, route)
        except ApiError as exc:
            if exc.field != field:
                raise
            deferred.append({"field": field, "error_code": DEFERRED_CODES[field], "error": exc.message})
            stand_in[attribute] = replacement
    fields = resolve(workspace_id, body.model_copy(update=stand_in), lookups)
    if deferred:
        fields.update(to=body.to if "to" in stand_in else fields["to"],
                      **{"from": body.from_ if "from_" in stand_in else fields["from"]})
        fields["content"]["deferred_checks"] = deferred
    return fields
