"""The sandbox's own control API: what it received, its counts, and the faults to inject.

``/sandbox/messages`` lists (``?to=``, ``?channel=``) or clears the accepted messages and the
counters; ``/sandbox/stats`` gives the counters; ``/sandbox/faults`` shows, adds to or resets a
channel's fault plan (``?channel=``, default ``sms``); ``/sandbox/accounts`` lists, adds (``{"account_sid",
"auth_token"}``) or removes the extra Twilio accounts — resetting the ``sms`` faults removes them
too, so one reset gives a test a clean provider. ``/healthz`` answers while the process is up.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from services.sandbox.accounts import AccountRequestError
from services.sandbox.faults import FaultPlan, FaultRequestError
from services.sandbox.state import current_sandbox

blueprint = Blueprint("control", __name__)

DEFAULT_FAULT_CHANNEL = "sms"


def _phone_number_argument(name: str) -> str | None:
    """A query argument holding an E.164 number; an unencoded '+' arrives as a space."""
    value = request.args.get(name)
    if value is not None and value.startswith(" "):
        value = "+" + value[1:]
    return value


def _fault_plan() -> tuple[str, FaultPlan | None]:
    channel = request.args.get("channel", DEFAULT_FAULT_CHANNEL)
    return channel, current_sandbox().faults.get(channel)


def _unknown_channel(channel: str) -> tuple[Response, int]:
    known = sorted(current_sandbox().faults)
    return jsonify({"error": f"no fault plan for channel {channel!r}; known: {known}"}), 404


@blueprint.get("/healthz")
def healthz() -> Response:
    return jsonify({"ok": True})


@blueprint.get("/sandbox/messages")
def list_messages() -> Response:
    records = current_sandbox().records
    return jsonify(
        {
            "messages": records.listing(
                to=_phone_number_argument("to"), channel=request.args.get("channel")
            )
        }
    )


@blueprint.delete("/sandbox/messages")
def clear_messages() -> Response:
    current_sandbox().records.clear()
    return jsonify({"messages": []})


@blueprint.get("/sandbox/stats")
def stats() -> Response:
    return jsonify(current_sandbox().records.stats())


@blueprint.get("/sandbox/faults")
def show_faults() -> Response | tuple[Response, int]:
    channel, plan = _fault_plan()
    if plan is None:
        return _unknown_channel(channel)
    return jsonify(plan.as_json())


@blueprint.post("/sandbox/faults")
def add_faults() -> Response | tuple[Response, int]:
    channel, plan = _fault_plan()
    if plan is None:
        return _unknown_channel(channel)
    try:
        plan.apply(request.get_json(force=True, silent=True))
    except FaultRequestError as exc:
        return jsonify({"error": str(exc)}), 400
    return jsonify(plan.as_json())


@blueprint.delete("/sandbox/faults")
def reset_faults() -> Response | tuple[Response, int]:
    channel, plan = _fault_plan()
    if plan is None:
        return _unknown_channel(channel)
    plan.reset()
    if channel == DEFAULT_FAULT_CHANNEL:
        current_sandbox().twilio_accounts.reset()
    return jsonify(plan.as_json())


@blueprint.get("/sandbox/accounts")
def show_accounts() -> Response:
    return jsonify({"accounts": current_sandbox().twilio_accounts.sids()})


@blueprint.post("/sandbox/accounts")
def add_account() -> Response | tuple[Response, int]:
    accounts = current_sandbox().twilio_accounts
    try:
        accounts.add(request.get_json(force=True, silent=True))
    except AccountRequestError as exc:
        return jsonify({"error": str(exc)}), 400
    return jsonify({"accounts": accounts.sids()}), 201


@blueprint.delete("/sandbox/accounts")
def reset_accounts() -> Response:
    accounts = current_sandbox().twilio_accounts
    accounts.reset()
    return jsonify({"accounts": accounts.sids()})
