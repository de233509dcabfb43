"""Request bodies checked against their models, and pydantic's findings said in the API's error shape.

The models decide what is valid; this module only picks the first thing wrong and names its
field in a sentence a client developer can act on (422, or 400 when the body is not an object).
"""

from __future__ import annotations

from typing import Any, TypeVar, get_args, overload

from flask import request
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import ErrorDetails

from services.ingest.errors import ApiError
from services.ingest.models import (
    CHANNELS,
    LANES,
    MAX_BODY,
    MAX_SMS_BODY,
    MAX_TAG,
    MAX_TAGS,
    PLANNED_CHANNELS,
)

Model = TypeVar("Model", bound=BaseModel)

# What each field must be, for errors whose pydantic wording says less than this.
EXPECTED = {
    "to": "a phone number in E.164 form, such as +15005550006",
    "from": "a phone number in E.164 form",
    "body": "a non-empty string",
    "priority": f"one of: {', '.join(LANES)}, or a number 1–10 (1–2 urgent, 3–7 normal, 8–10 bulk)",
    "tags": (f"an object of at most {MAX_TAGS} names (letters, digits, _ . : -) to strings of up to {MAX_TAG} "
             f"characters, or a list of at most {MAX_TAGS} non-empty strings"),
}


def validate(model: type[Model], payload: Any) -> Model:
    """``payload`` as a ``model``.

    Raises:
      ApiError: 400 when the body is not a JSON object, otherwise 422 naming the first field at fault.
    """
    if not isinstance(payload, dict):
        raise ApiError(400, "invalid_request", "the request body must be a JSON object", "body")
    try:
        return model.model_validate(payload)
    except PydanticValidationError as exc:
        errors = exc.errors(include_url=False)
        # An unknown field is reported first: it is usually a typo that explains the rest.
        first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        field, message = describe(model, first)
        raise ApiError(422, "invalid_request", message, field) from None


def describe(model: type[BaseModel], err: ErrorDetails) -> tuple[str, str]:
    """The field an error is about (its top-level name, or its path inside an embedded object such
    as ``message.to``) and a sentence saying what is wrong."""
    loc = err["loc"]
    item = _item_model(model, loc)
    if item is not None:  # one item of a list of objects: said as its model says it, under items[i]
        where = f"{loc[0]}[{loc[1]}]"
        if len(loc) == 2:  # the item itself is not an object
            return where, f"{where}: {err['msg']}"
        field, message = describe(item, {**err, "loc": loc[2:]})
        return f"{where}.{field}", f"{where}: {message}"
    embedded = _embedded_model(model, loc)
    if embedded is not None:  # a schedule's message: said as that model says it, under its path
        field, message = describe(embedded, {**err, "loc": loc[1:]})
        return f"{loc[0]}.{field}", f"{loc[0]}: {message}"
    field = str(err["loc"][0])[:100] if err["loc"] else "body"  # a key can be any size
    kind, value = err["type"], err.get("input")
    if kind == "extra_forbidden":
        accepted = sorted(f.alias or name for name, f in model.model_fields.items())
        return field, f"unknown field {_short(field)}; accepted fields: {', '.join(accepted)}"
    if kind == "missing":
        return field, f"{field} is required"
    if kind == "control_character":
        return field, f"{field} {err['msg']}"
    if field == "channel":
        planned = " (not available yet)" if value in PLANNED_CHANNELS else ""
        return field, f"unknown channel {_short(value)}{planned}; supported: {', '.join(CHANNELS)}"
    if field == "body" and kind == "string_too_long":
        return field, f"body is {len(value)} characters; at most {MAX_BODY['email']} (email), 4,096 (WhatsApp), {MAX_SMS_BODY} (sms, http)"
    if field in EXPECTED:
        return field, f"{field} must be {EXPECTED[field]}"
    return field, f"{field}: {err['msg']}"


def _embedded_model(model: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model of the object field an error inside it (``loc`` deeper than the field) is about."""
    if len(loc) < 2 or not isinstance(loc[0], str):
        return None
    for name, info in model.model_fields.items():
        if loc[0] in (name, info.alias):
            for kind in (info.annotation, *get_args(info.annotation)):
                if isinstance(kind, type) and issubclass(kind, BaseModel):
                    return kind
    return None


def _item_model(model: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model of a list's items when an error is about one of them (``loc``: the list field,
    the item's index, then the item's field, if any)."""
    if len(loc) < 2 or not isinstance(loc[0], str) or not isinstance(loc[1], int):
        return None
    for name, info in model.model_fields.items():
        if loc[0] in (name, info.alias):
            return _list_item(info.annotation)
    return None


def _list_item(annotation: Any) -> type[BaseModel] | None:
    """``Model`` of ``list[Model]``, also inside ``Annotated`` or ``| None``."""
    if getattr(annotation, "__origin__", None) is list:
        (kind,) = get_args(annotation) or (None,)
        return kind if isinstance(kind, type) and issubclass(kind, BaseModel) else None
    for inner in get_args(annotation):
        found = _list_item(inner)
        if found is not None:
            return found
    return None


def _short(value: Any) -> str:
    """A value quoted in a message, cut so that a huge input does not come back whole."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@overload
def query_int(name: str, default: int, low: int, high: int) -> int: ...
@overload
def query_int(name: str, default: None, low: int, high: int) -> int | None: ...
def query_int(name: str, default: int | None, low: int, high: int) -> int | None:
    """A whole-number query parameter from ``low`` to ``high`` (``default`` when absent); 422 naming it otherwise."""
    raw = request.args.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise ApiError(422, "invalid_request", f"{name} must be a whole number from {low} to {high}", name)
    return int(raw)
