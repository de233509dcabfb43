"""The sandbox's Flask app: builds the shared state and mounts one blueprint per provider.

Served by ``gunicorn -k gevent -w 1`` (see ``__main__``): one process, so the in-memory record
and fault plans are shared by every request, and gevent's monkey-patching (done by the worker
before this module is imported) makes the simulated latency and the callback POSTs cooperative.
A later provider (WhatsApp Cloud, WAHA, SMTP) adds its blueprint and fault plan here; the
customer side (the webhook receivers postroom POSTs to) is one more blueprint, and ``inbox``
shows a person in a browser what all of them received.
"""

from __future__ import annotations

import logging

from flask import Flask
from gevent import monkey

from common.config import Settings, settings
from services.sandbox import (
    control,
    email_api,
    graph_api,
    graph_errors,
    inbox,
    openai_api,
    receiver_api,
    twilio_api,
    twilio_errors,
    twilio_inbound,
    twilio_list,
    waha_api,
)
from services.sandbox.accounts import Accounts
from services.sandbox.callbacks import StatusCallbackSender
from services.sandbox.faults import FaultPlan
from services.sandbox.graph_webhooks import GraphState, Number
from services.sandbox.lost_answer import ConnectionCut, answer_nobody
from services.sandbox.openai_state import OpenAIState
from services.sandbox.receivers import Receivers
from services.sandbox.records import ReceivedMessages
from services.sandbox.state import EXTENSION_KEY, SandboxState
from services.sandbox.waha_gateway import WahaGateway

logger = logging.getLogger(__name__)


def create_app(config: Settings = settings) -> Flask:
    """A sandbox app with empty records and no faults beyond the configured latency."""
    if not monkey.is_module_patched("socket"):
        logger.warning(
            "sandbox is not running under gevent: status callbacks will not be sent concurrently"
        )
    app = Flask(__name__)
    records = ReceivedMessages()
    accounts = Accounts(config.twilio_account_sid, config.twilio_auth_token)
    app.extensions[EXTENSION_KEY] = SandboxState(
        records=records,
        faults={
            email_api.CHANNEL: email_api.email_fault_plan(config.postroom_sandbox_latency_ms),
            twilio_api.CHANNEL: FaultPlan(
                config.postroom_sandbox_latency_ms,
                twilio_errors.http_status_for_code,
                twilio_errors.error_code_for_http_status,
            ),
            graph_api.CHANNEL: FaultPlan(
                config.postroom_sandbox_latency_ms,
                graph_errors.http_status_for_code,
                graph_errors.error_code_for_http_status,
            ),
            waha_api.CHANNEL: FaultPlan(
                config.postroom_sandbox_latency_ms,
                waha_api.http_status_for_code,
                waha_api.error_code_for_http_status,
            ),
        },
        twilio_callbacks=StatusCallbackSender(records, accounts, config.twilio_from),
        twilio_accounts=accounts,
        receivers=Receivers(),
        whatsapp=GraphState(records, Number(config.whatsapp_phone_number_id, config.whatsapp_access_token,
                                            config.whatsapp_app_secret, "15550000000"),
                            config.public_url + _path(config.postroom_sandbox_whatsapp_webhook_path)),
        waha=WahaGateway(records, f"{config.public_url}/webhooks/waha", config.waha_webhook_secret),
        openai=OpenAIState(),
    )
    app.register_error_handler(ConnectionCut, answer_nobody)
    app.register_blueprint(control.blueprint)
    app.register_blueprint(email_api.blueprint)
    app.register_blueprint(twilio_api.blueprint)
    app.register_blueprint(graph_api.blueprint)
    app.register_blueprint(waha_api.blueprint)
    app.register_blueprint(twilio_list.blueprint)
    app.register_blueprint(twilio_inbound.blueprint)
    app.register_blueprint(receiver_api.blueprint)
    app.register_blueprint(inbox.blueprint)
    app.register_blueprint(openai_api.blueprint)
    return app


def _path(path: str) -> str:
    """A configured webhook path, with its leading slash whether or not it was written."""
    return "/" + path.lstrip("/")


app = create_app()
