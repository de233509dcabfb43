"""Twilio's message list on its real wire format: one account's messages, filtered and paged.

``GET /2010-04-01/Accounts/{AccountSid}/Messages.json`` is how a client learns whether a send
whose answer it lost reached Twilio (DESIGN.md invariant 14): list the account's messages to a
number from a sender since a day, and match the body. Filters ``To``, ``From``, ``DateSent``,
``DateSent>`` (on or after) and ``DateSent<`` (on or before) take a day, ``YYYY-MM-DD``; the SDK
sends a full timestamp, of which only the day counts, as Twilio filters by day. A message not yet
sent matches on the day it was created, so a just-accepted message is never missed. Newest first;
``PageSize`` (default 50, at most 1000) with ``Page`` and ``PageToken`` pages the way Twilio's
``next_page_uri`` does (the token names the last message of the previous page, so messages
arriving meanwhile do not shift the pages).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from urllib.parse import urlencode

import gevent
from flask import Blueprint, Response, jsonify, request

from services.sandbox.records import ReceivedMessage
from services.sandbox.state import current_sandbox
from services.sandbox.twilio_api import API_VERSION, CHANNEL, authenticated, message_resource
from services.sandbox.twilio_errors import twilio_error

DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 50, 1000
FILTERS = ("To", "From", "DateSent", "DateSent>", "DateSent<")

blueprint = Blueprint("twilio_list", __name__, url_prefix=f"/{API_VERSION}")


class BadParameter(ValueError):
    def __init__(self, param: str, value: str) -> None:
        super().__init__(param)
        self.param, self.value = param, value


def _phone(value: str) -> str:
    return "+" + value[1:] if value.startswith(" ") else value  # an unencoded '+' arrives as ' '


def _day(param: str, value: str) -> date:
    try:
        return date.fromisoformat(value.lstrip("<>=")[:10])
    except ValueError:
        raise BadParameter(param, value) from None


def _day_filter(args: dict[str, str]) -> Callable[[date], bool]:
    """Which days the DateSent filters let through; ``DateSent=<=D`` is read as ``DateSent<=D``."""
    low = high = None
    if "DateSent" in args:
        value = args["DateSent"]
        day = _day("DateSent", value)
        low = None if value.startswith("<") else day
        high = None if value.startswith(">") else day
    if "DateSent>" in args:
        low = _day("DateSent>", args["DateSent>"])
    if "DateSent<" in args:
        high = _day("DateSent<", args["DateSent<"])
    return lambda d: (low is None or d >= low) and (high is None or d <= high)


def matching(messages: list[ReceivedMessage], args: dict[str, str]) -> list[ReceivedMessage]:
    """The messages (newest first) that pass every filter in ``args``."""
    to, from_ = _phone(args.get("To", "")), _phone(args.get("From", ""))
    on_day = _day_filter(args)
    return [
        m
        for m in messages
        if (not to or m.to == to)
        and (not from_ or m.from_ == from_)
        and on_day((m.sent_at or m.received_at).date())
    ]


def _page_bounds(found: list[ReceivedMessage], args: dict[str, str], size: int) -> tuple[int, int]:
    """(page number, index of the page's first message) from ``Page`` and ``PageToken``."""
    try:
        page = int(args.get("Page", "0"))
    except ValueError:
        raise BadParameter("Page", args["Page"]) from None
    if page < 0:
        raise BadParameter("Page", args["Page"])
    token = args.get("PageToken", "")
    position = {m.sid: i for i, m in enumerate(found)}
    if token[:2] == "PA" and token[2:] in position:  # after the last message of the page before
        return page, position[token[2:]] + 1
    if token[:2] == "PB" and token[2:] in position:  # before the first message of the page after
        return page, max(0, position[token[2:]] - size)
    return page, page * size


def _uri(account_sid: str, args: dict[str, str], **paging: object) -> str:
    query = {k: args[k] for k in FILTERS if k in args} | {k: str(v) for k, v in paging.items()}
    return f"/{API_VERSION}/Accounts/{account_sid}/Messages.json?{urlencode(query)}"


@blueprint.get("/Accounts/<account_sid>/Messages.json")
def list_messages(account_sid: str) -> Response | tuple[Response, int]:
    sandbox = current_sandbox()
    gevent.sleep(sandbox.faults[CHANNEL].latency_seconds())
    if not authenticated(sandbox, account_sid):
        return twilio_error(20003)
    args = request.args.to_dict()
    try:
        size = int(args.get("PageSize", DEFAULT_PAGE_SIZE))
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise ValueError
    except ValueError:
        return twilio_error(20001, param="PageSize", value=args.get("PageSize", ""))
    try:
        found = matching(sandbox.records.newest_first(CHANNEL, account_sid), args)
        page, start = _page_bounds(found, args, size)
    except BadParameter as exc:
        return twilio_error(20001, param=exc.param, value=exc.value)
    sandbox.records.count("lookups")
    shown = found[start : start + size]
    more = start + size < len(found)
    return jsonify(
        {
            "messages": [message_resource(m, account_sid) for m in shown],
            # Twilio numbers records by page, whatever arrived since the token was made.
            "start": page * size,
            "end": page * size + max(len(shown) - 1, 0),
            "page": page,
            "page_size": size,
            "uri": _uri(account_sid, args, PageSize=size, Page=page, **(
                {"PageToken": args["PageToken"]} if "PageToken" in args else {})),
            "first_page_uri": _uri(account_sid, args, PageSize=size, Page=0),
            "next_page_uri": _uri(account_sid, args, PageSize=size, Page=page + 1,
                                  PageToken="PA" + shown[-1].sid) if more and shown else None,
            "previous_page_uri": _uri(account_sid, args, PageSize=size, Page=page - 1,
                                      PageToken="PB" + shown[0].sid) if start > 0 and shown else None,
        }
    ), 200
