"""How every provider imitation loses an answer after it recorded the message, as the fault plan
says: the connection cut with no HTTP answer at all, or the answer held past any client timeout.

Either way the provider took the message and the client cannot know: the case a sender must look
up rather than retry blindly. ``create_app`` registers ``answer_nobody`` for ``ConnectionCut``.
"""

from __future__ import annotations

import socket

import gevent
from flask import Response, request

from services.sandbox.faults import DROP, HANG, FaultPlan
from services.sandbox.records import ReceivedMessages


class ConnectionCut(Exception):
    """Raised after the client's socket was shut down: there is no one left to answer."""


def lose_answer(records: ReceivedMessages, faults: FaultPlan) -> None:
    """Cut the connection (raises ``ConnectionCut``) or hang, if the plan says so; else nothing."""
    lost = faults.take_lost_answer()
    if lost == DROP:
        records.count("answers_dropped")
        cut_connection()
    if lost == HANG:
        records.count("answers_delayed")
        gevent.sleep(faults.hang_seconds())  # the client gave up long ago; the message stays sent


def cut_connection() -> None:
    """Close the client's connection with no HTTP answer at all ("connection aborted").

    ``shutdown`` rather than ``close``: the server still owns the file descriptor and closes it
    itself, so a descriptor number reused by another connection is never closed by mistake.
    """
    sock = request.environ.get("gunicorn.socket") or request.environ.get("werkzeug.socket")
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # the client left already: the effect is the same
    raise ConnectionCut("injected: connection cut after the message was recorded")


def answer_nobody(exc: ConnectionCut) -> Response:
    # Whatever the server writes now goes nowhere; an empty body keeps its failed write short.
    return Response(b"", status=500)
