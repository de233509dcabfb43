"""The sandbox's shared in-process state, reached from any blueprint through the Flask app.

Everything lives in one process (gunicorn's single gevent worker), so the record, the fault
plans (one per channel, keyed like ``ReceivedMessage.channel``), the Twilio accounts, the
callback sender and the customer webhook receivers are plain objects built once by ``create_app``
and stored in ``app.extensions``.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from services.sandbox.accounts import Accounts
from services.sandbox.callbacks import StatusCallbackSender
from services.sandbox.faults import FaultPlan
from services.sandbox.graph_webhooks import GraphState
from services.sandbox.openai_state import OpenAIState
from services.sandbox.receivers import Receivers
from services.sandbox.records import ReceivedMessages
from services.sandbox.waha_gateway import WahaGateway

EXTENSION_KEY = "postroom_sandbox"


@dataclass
class SandboxState:
    records: ReceivedMessages
    faults: dict[str, FaultPlan]  # channel -> its provider's fault plan
    twilio_callbacks: StatusCallbackSender
    twilio_accounts: Accounts
    receivers: Receivers  # the customer endpoints postroom's webhooks and http channel POST to
    whatsapp: GraphState  # WhatsApp Cloud numbers, unreachable recipients, received bodies, webhooks
    waha: WahaGateway  # WAHA sessions and their states, numbers not on WhatsApp, sent bodies, webhooks
    openai: OpenAIState  # the OpenAI-compatible server's keys, recorded requests and faults


def current_sandbox() -> SandboxState:
    """The state of the app serving the current request."""
    state: SandboxState = current_app.extensions[EXTENSION_KEY]
    return state
