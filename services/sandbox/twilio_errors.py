"""Twilio's error vocabulary as the sandbox speaks it: code → HTTP status, message, JSON body.

Bodies have Twilio's legacy shape ``{"code", "message", "more_info", "status"}``, which the
official SDK turns into ``TwilioRestException`` (a body that also had ``type`` and ``title``
would become the newer ``TwilioServiceException``, so those keys are deliberately absent).
Message texts follow Twilio's; ``{to}``/``{from_}`` are filled from the request when known.
"""

from __future__ import annotations

import json

from flask import Response

ERRORS: dict[int, tuple[int, str]] = {
    20001: (400, "Invalid value {value!r} for parameter {param}"),
    20003: (401, "Authenticate"),
    20404: (404, "The requested resource {path} was not found"),
    20429: (429, "Too Many Requests"),
    20500: (500, "An internal server error has occurred"),
    20503: (503, "Service is unavailable. Please try again"),
    21211: (400, "The 'To' number {to} is not a valid phone number."),
    21212: (400, "The 'From' number {from_} is not a valid phone number, shortcode, or alphanumeric sender ID."),
    21408: (
        400,
        "Permission to send an SMS has not been enabled for the region indicated by the 'To' number: {to}.",
    ),
    21602: (400, "Message body is required."),
    21603: (400, "A 'From' phone number is required."),
    21604: (400, "A 'To' phone number is required."),
    21606: (
        400,
        "The 'From' phone number provided ({from_}) is not a valid message-capable Twilio phone number for this destination.",
    ),
    21610: (400, "Attempt to send to unsubscribed recipient"),
    21611: (400, "This 'From' number {from_} has exceeded the maximum number of queued messages"),
    21612: (
        400,
        "The 'To' phone number: {to}, is not currently reachable using the 'From' phone number: {from_} via SMS.",
    ),
    21614: (400, "'To' number {to} is not a valid mobile number"),
    21617: (400, "The concatenated message body exceeds the 1600 character limit."),
    21623: (400, "Number of media files exceeds allowed limit"),
    21705: (400, "The Messaging Service Sid {value} is invalid."),
}

# What a status callback says in ErrorMessage next to an asynchronous ErrorCode.
DELIVERY_ERRORS: dict[int, str] = {
    30001: "Queue overflow",
    30002: "Account suspended",
    30003: "Unreachable destination handset",
    30004: "Message blocked",
    30005: "Unknown destination handset",
    30006: "Landline or unreachable carrier",
    30007: "Message filtered",
    30008: "Unknown error",
}

AUTH_FAILED_DETAIL = "Your AccountSid or AuthToken was incorrect."


def http_status_for_code(code: int) -> int:
    """The HTTP status Twilio answers an error code with (400 for codes not in the table)."""
    return ERRORS.get(code, (400, ""))[0]


def error_code_for_http_status(status: int) -> int:
    """The error code Twilio puts in a body of that HTTP status when nothing more specific fits."""
    return {401: 20003, 404: 20404, 429: 20429, 503: 20503}.get(
        status, 20500 if status >= 500 else 21211
    )


def delivery_error_message(code: int) -> str:
    return DELIVERY_ERRORS.get(code, "Unknown error")


def twilio_error(
    code: int,
    http_status: int | None = None,
    retry_after: int | None = None,
    **context: str | None,
) -> Response:
    """A Twilio-shaped error response for ``code``; ``context`` fills the message's placeholders."""
    default_status, template = ERRORS.get(code, (400, "Error {code}"))
    status = http_status or default_status
    values = {"to": "", "from_": "", "path": "", "code": str(code)}
    values.update({k: v or "" for k, v in context.items()})
    body: dict[str, object] = {
        "code": code,
        "message": template.format(**values),
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    if code == 20003:
        body["detail"] = AUTH_FAILED_DETAIL
    response = Response(json.dumps(body), status=status, mimetype="application/json")
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Basic realm="Twilio API"'
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response
