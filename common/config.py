"""Every environment variable postroom reads, typed, with its default, in one place.

Services never call ``os.environ`` themselves: they read ``settings`` (or call ``load()`` for a
fresh copy, as tests do after changing the environment). The README's configuration table is
checked against ``SETTINGS`` by a test, so a setting added here must be documented there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Setting:
    """One environment variable: its name, type, default and what it does."""

    env: str
    kind: type
    default: object
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting("DATABASE_URL", str, "", "PostgreSQL URL. Empty: `make run`/`make test` start a private server under POSTROOM_VAR_DIR."),
    Setting("REDIS_URL", str, "", "Redis URL for the broker and rate limits. Empty: a private server is started under POSTROOM_VAR_DIR."),
    Setting("POSTROOM_VAR_DIR", str, str(ROOT / "var"), "Where local runs keep PostgreSQL and Redis data, logs, metrics files and the dev API key."),
    Setting("POSTROOM_API_HOST", str, "127.0.0.1", "Address the ingest API (gunicorn) binds to."),
    Setting("POSTROOM_API_PORT", int, 8000, "Port of the ingest API."),
    Setting("POSTROOM_API_WORKERS", int, 2, "gunicorn worker processes for ingest."),
    Setting("POSTROOM_PUBLIC_URL", str, "", "Public base URL providers call back (status callbacks, signature checks). Empty: http://API_HOST:API_PORT."),
    Setting("POSTROOM_SANDBOX_HOST", str, "127.0.0.1", "Address the provider sandbox binds to."),
    Setting("POSTROOM_SANDBOX_PORT", int, 8100, "Port of the provider sandbox."),
    Setting("POSTROOM_SANDBOX_LATENCY_MS", int, 0, "Latency the sandbox adds to every provider call (real providers answer in 100-300 ms)."),
    Setting("POSTROOM_SANDBOX_WHATSAPP_WEBHOOK_PATH", str, "/webhooks/whatsapp_cloud", "Path on POSTROOM_PUBLIC_URL the sandbox posts its signed WhatsApp Cloud webhooks to (what a Meta app's webhook URL says); `/api/webhooks/whatsapp/status` is the S1 compatibility path."),
    Setting("POSTROOM_METRICS_HOST", str, "127.0.0.1", "Address worker services and the scheduler serve /metrics on (0.0.0.0 in containers)."),
    Setting("POSTROOM_METRICS_PORT_BASE", int, 9191, "Worker services expose /metrics on consecutive ports from this one in local runs."),
    Setting("POSTROOM_SECRET_KEY", str, "dev-only-secret-change-me", "Key that encrypts provider credentials at rest. Set a long random value in production."),
    Setting("POSTROOM_ENV", str, "production", "`development` allows the built-in development secret key; any other value refuses to start with it. `make run` and the tests set `development`."),
    Setting("POSTROOM_DB_CONNECT_TIMEOUT_SECONDS", float, 2.0, "Longest wait for a new PostgreSQL connection."),
    Setting("POSTROOM_DB_TIMEOUT_SECONDS", float, 10.0, "Longest wait for one PostgreSQL statement in workers and the scheduler (client-side deadline plus server statement_timeout): a frozen server fails the statement instead of hanging the process."),
    Setting("POSTROOM_API_DB_TIMEOUT_SECONDS", float, 1.5, "The same deadline for ingest, so an API request answers 503 within about two seconds while PostgreSQL is unavailable."),
    Setting("POSTROOM_REDIS_TIMEOUT_SECONDS", float, 5.0, "Socket (and connect) timeout of every Redis client: broker, rate limiter."),
    Setting("POSTROOM_REDIS_MAX_CONNECTIONS", int, 1000, "Redis connections one process may hold open (redis-py 8 caps a pool at 100 unless told, fewer than a worker needs with a consumer per queue and hundreds of greenlets; past the cap a call fails at once)."),
    Setting("POSTROOM_MAX_REQUEST_BYTES", int, 1048576, "Largest API request body; a larger one gets 413."),
    Setting("POSTROOM_CAMPAIGN_DB_TIMEOUT_SECONDS", float, 60.0, "How long one statement of a campaign request (staging, fan-out or cancel of up to 100,000 messages) may take; its first statement keeps the API's deadline, so an unavailable database still answers 503 at once."),
    Setting("POSTROOM_MAX_CAMPAIGN_BYTES", int, 16 * 1048576, "Largest body of a campaign or a page of its recipients, of a contact import (up to 100,000 each), and of a batch of up to 1,000 messages; a larger one gets 413."),
    Setting("POSTROOM_MAX_WEBHOOK_BYTES", int, 65536, "Largest provider webhook body; a larger one gets 413."),
    Setting("POSTROOM_MAX_JSON_DEPTH", int, 32, "Deepest JSON nesting accepted in a request body; deeper gets 400."),
    Setting("POSTROOM_IDEMPOTENCY_TTL_SECONDS", float, 86400.0, "How long an API request's `Idempotency-Key` is remembered (its answer replayed, its message found again); after it the same key is a new request."),
    Setting("POSTROOM_IDEMPOTENCY_LEASE_SECONDS", float, 60.0, "How long a request holds its `Idempotency-Key` before another request with the key may take it over (its process died mid-request); a repeat meanwhile gets 409 `idempotency_in_progress`. Keep it above the longest request; bulk routes (campaigns, imports, batches) hold at least three times POSTROOM_CAMPAIGN_DB_TIMEOUT_SECONDS."),
    Setting("POSTROOM_API_KEY_RATE_PER_SECOND", float, 1000.0, "API requests per second one API key may make (refilled continuously); over it the API answers 429 with Retry-After. 0: no limit per key."),
    Setting("POSTROOM_API_KEY_BURST", int, 2000, "API requests one key may make at once after being idle (the bucket's size)."),
    Setting("POSTROOM_API_WORKSPACE_RATE_PER_SECOND", float, 2000.0, "API requests per second all keys of one workspace may make together. 0: no limit per workspace."),
    Setting("POSTROOM_API_WORKSPACE_BURST", int, 4000, "API requests one workspace may make at once after being idle."),
    Setting("POSTROOM_UNKNOWN_LOOKUP_DELAY_SECONDS", float, 5.0, "How long after a send with an unknown outcome the reconciler looks the message up at the provider."),
    Setting("POSTROOM_DB_POOL_SIZE", int, 32, "Most PostgreSQL connections one process opens, lazily; threads or greenlets beyond it wait their turn (16 held a sender's campaign to 1,590/s, 32 let it reach 1,860/s here)."),
    Setting("POSTROOM_DB_PREPARE", bool, True, "Prepare hot statements once per connection (less planning). Set false behind a transaction-mode pgbouncer."),
    Setting("POSTROOM_WORKER_THREADS", int, 8, "Threads per lane of a CPU-bound stage's worker process (processing, routing)."),
    Setting("POSTROOM_SENDER_CONCURRENCY", int, 256, "Provider calls a sender process keeps in flight per lane (greenlets), the most its pooled connections to one provider account hold: at 150 ms a call, 256 allow about 1,700 messages/s. The campaign benchmark runs with 512 (1,890 msg/s measured); the local sandbox, one process, is overloaded by that many from every sender at once."),
    Setting("POSTROOM_SENDER_GREENLETS", int, 256, "Greenlets of a sender's bulk lane: bulk batches a sender process works on at once; more than calls in flight."),
    Setting("POSTROOM_SENDER_URGENT_GREENLETS", int, 32, "Greenlets of a sender's urgent lane (its own, so urgent batches never wait for bulk's)."),
    Setting("POSTROOM_PROVIDER_TIMEOUT_SECONDS", float, 15.0, "How long a provider call may take; past it the outcome is unknown and the message fails rather than risk a second send."),
    Setting("POSTROOM_MAX_ATTEMPTS", int, 5, "Provider calls that end in a transient error before a message fails."),
    Setting("POSTROOM_RETRY_BASE_SECONDS", float, 1.0, "First retry delay; doubles per attempt, with jitter."),
    Setting("POSTROOM_RETRY_MAX_SECONDS", float, 300.0, "Upper bound of one retry delay."),
    Setting("POSTROOM_STAGE_DEADLINE_SECONDS", float, 30.0, "A message waiting longer than this in accepted/queued/routed is re-enqueued by the reconciler."),
    Setting("POSTROOM_MAX_REDRIVES", int, 5, "A message re-driven this many times without moving on is failed as stuck (its stage keeps failing on it)."),
    Setting("POSTROOM_SENDING_TIMEOUT_SECONDS", float, 45.0, "A message left in `sending` this long (its sender died mid-call) is looked up at the provider: recorded as sent if found, sent again if not. Keep it above the provider timeout."),
    Setting("POSTROOM_RECONCILE_INTERVAL_SECONDS", float, 1.0, "How often the scheduler looks for due and stuck rows."),
    Setting("POSTROOM_BROKER_POLL_MS", int, 100, "Longest wait of a busy worker between broker polls (it holds messages in progress or delayed). An idle worker does not poll: an enqueue wakes it at once through Redis pub/sub."),
    Setting("POSTROOM_HANDOFF_LINGER_MS", float, 5.0, "Ingest gathers accepted ids this long before enqueueing them as one batch."),
    Setting("POSTROOM_BATCH_SIZE", int, 500, "Most ids one broker message carries between stages."),
    Setting("POSTROOM_SCHEDULE_HORIZON_DAYS", float, 400.0, "How far ahead a message may be scheduled (`send_at`, `delay_seconds`); later gets 422."),
    Setting("POSTROOM_WEBHOOK_ALLOWED_NETWORKS", str, "", "Comma-separated CIDRs that webhook endpoints and the `http` channel may reach although they are loopback or private (for example `127.0.0.0/8` for local runs, `10.0.0.0/8` for in-cluster receivers). Empty: only public addresses. `make run` and the tests allow loopback."),
    Setting("POSTROOM_WEBHOOK_TIMEOUT_SECONDS", float, 15.0, "How long one webhook delivery (and one `http` channel call) may take."),
    Setting("POSTROOM_WEBHOOK_RETRY_SCHEDULE", str, "0,5,300,1800,7200,18000,36000,36000", "Seconds before each webhook attempt: the first is the initial delivery, then one per retry; after the last the delivery fails."),
    Setting("POSTROOM_WEBHOOK_DISABLE_AFTER_HOURS", float, 120.0, "An endpoint failing this long without one success is disabled, and a webhook_endpoint.disabled event says so."),
    Setting("POSTROOM_WEBHOOK_CONCURRENCY", int, 512, "Webhook deliveries one webhooks process keeps in flight."),
    Setting("POSTROOM_WEBHOOK_ENDPOINT_CONCURRENCY", int, 256, "Deliveries in flight to one endpoint per webhooks process, so a slow endpoint cannot hold the others."),
    Setting("POSTROOM_MESSAGE_RETENTION_DAYS", float, 30.0, "A finished message (sent, delivered, read, failed, cancelled, suppressed, received) and its history are deleted this long after it was created, in batches by the scheduler; a message still waiting is kept."),
    Setting("POSTROOM_PROVIDER_EVENT_RETENTION_DAYS", float, 7.0, "Raw provider webhooks (receipts and inbound, as received, with their signature verdict) are kept this long."),
    Setting("POSTROOM_WEBHOOK_RETENTION_HOURS", float, 72.0, "Finished webhook deliveries, their attempts and dispatched outbox events are kept this long (for listing and replay), then deleted in batches."),
    Setting("POSTROOM_USAGE_RETENTION_DAYS", float, 400.0, "Usage log rows (inbound and outbound conversation messages, AI calls: what `GET /v1/usage` counts) are kept this long, then deleted in batches."),
    Setting("POSTROOM_AI_GREENLETS_PREMIUM", int, 64, "Greenlets of the AI stage's premium lane: premium-plan conversations whose model calls one `ai` worker process keeps in flight."),
    Setting("POSTROOM_AI_GREENLETS_PRO", int, 32, "Greenlets of the AI stage's pro lane (its own, so pro turns never wait behind basic ones)."),
    Setting("POSTROOM_AI_GREENLETS_BASIC", int, 16, "Greenlets of the AI stage's basic lane."),
    Setting("POSTROOM_AI_TIMEOUT_SECONDS", float, 30.0, "Longest wait for one model call (a chatbot's own `timeout_seconds` may be shorter); past it the call is retried as transient."),
    Setting("POSTROOM_AI_MAX_ATTEMPTS", int, 4, "Model calls of one turn that end in a transient error (5xx, timeout, connection) before the customer gets the chatbot's fallback message and the conversation is handed off; also how many reconciler re-drives a waiting turn gets before it is handed off as stuck."),
    Setting("POSTROOM_AI_LEASE_SECONDS", float, 120.0, "How long one AI turn holds its conversation (one turn per conversation at a time); a worker that died mid-turn frees it after this. Keep it above POSTROOM_AI_TIMEOUT_SECONDS."),
    Setting("POSTROOM_AI_ALLOWED_NETWORKS", str, "", "Comma-separated CIDRs that a chatbot's model `base_url` may reach although they are loopback or private (an in-cluster vLLM or Ollama: for example `10.0.0.0/8`). Empty: only public addresses. `make run` and the tests allow loopback."),
    Setting("POSTROOM_WIDGET_HOST", str, "127.0.0.1", "Address the web chat widget service (gunicorn, gevent) binds to."),
    Setting("POSTROOM_WIDGET_PORT", int, 8200, "Port of the web chat widget service."),
    Setting("POSTROOM_WIDGET_PUBLIC_URL", str, "", "Public base URL of the widget service, which the embed snippet of `PUT /v1/channels/widget` points at (the page is `<url>/widget/<inbox_key>`). Empty: http://WIDGET_HOST:WIDGET_PORT."),
    Setting("POSTROOM_WIDGET_WORKERS", int, 1, "gunicorn gevent worker processes of the widget service (each holds many event streams)."),
    Setting("POSTROOM_WIDGET_MAX_CHARS", int, 2000, "Longest visitor message the widget accepts, in characters; longer gets 422."),
    Setting("POSTROOM_WIDGET_VISITOR_RATE", float, 1.0, "Messages per second one widget visitor may send (burst 5); over it the widget answers 429."),
    Setting("POSTROOM_WIDGET_STREAM_SECONDS", float, 300.0, "A widget event stream is closed after this long (the browser reconnects at once), so streams rebalance across widget replicas."),
    Setting("POSTROOM_WIDGET_TRUSTED_PROXIES", int, 0, "Proxies in front of the widget service that append the client's address to `X-Forwarded-For` (behind an ingress: 1). Its per-address rate limit then counts the address that many hops back; 0: the peer's address, the header ignored. Set it only when the widget is reachable through those proxies alone."),
    Setting("TWILIO_ACCOUNT_SID", str, "AC00000000000000000000000000000000", "Default Twilio account SID (a workspace's channel config overrides it)."),
    Setting("TWILIO_AUTH_TOKEN", str, "sandbox-auth-token", "Default Twilio auth token: API auth and X-Twilio-Signature key."),
    Setting("TWILIO_FROM", str, "+15005550006", "Default sender number for SMS."),
    Setting("TWILIO_API_BASE", str, "", "Twilio API base URL. Empty: the real https://api.twilio.com; local runs point it at the sandbox."),
    Setting("TWILIO_RATE_LIMIT_PER_SECOND", float, 0.0, "Messages per second per Twilio account; 0 means no limit of our own."),
    Setting("POSTROOM_INBOUND_WORKSPACE", str, "dev", "The workspace that receives inbound messages and receipts arriving at the deployment's default accounts (the environment's Twilio number, SMTP mailbox, WhatsApp number and WAHA sessions); a workspace's own channel configuration takes its own."),
    Setting("POSTROOM_SANDBOX_SMTP_PORT", int, 8125, "Port of the sandbox's SMTP server (local runs and tests send email to it)."),
    Setting("SMTP_HOST", str, "127.0.0.1", "Default SMTP relay host for email (a workspace's channel config overrides it)."),
    Setting("SMTP_PORT", int, 8125, "Default SMTP relay port (587 for STARTTLS, 465 for TLS on real relays; the sandbox's in local runs)."),
    Setting("SMTP_SECURITY", str, "none", "`none`, `starttls` or `tls`: how the default SMTP session is secured."),
    Setting("SMTP_USERNAME", str, "", "Default SMTP login; empty: no AUTH."),
    Setting("SMTP_PASSWORD", str, "", "Default SMTP password."),
    Setting("EMAIL_FROM", str, "postroom@example.com", "Default From address for email."),
    Setting("SMTP_RATE_LIMIT_PER_SECOND", float, 0.0, "Messages per second through the default SMTP login; 0 means no limit of our own."),
    Setting("SMTP_POOL_SIZE", int, 8, "Least number of SMTP sessions one email sender process may keep open and reuse per login; it opens up to three times POSTROOM_SENDER_CONCURRENCY (one per call its three lanes can have in flight) when sends need them, and closes a login's sessions after 10 idle minutes."),
    Setting("EMAIL_WEBHOOK_SECRET", str, "", "Standard Webhooks secret (`whsec_...`) the mail relay signs delivery, bounce and inbound-mail webhooks with, for the default account. Empty: none are accepted for it. Local runs use the sandbox's."),
    Setting("WHATSAPP_API_BASE", str, "", "Graph API base URL. Empty: the real https://graph.facebook.com; local runs point it at the sandbox."),
    Setting("WHATSAPP_API_VERSION", str, "v25.0", "Graph API version in the URL; Meta changes it several times a year."),
    Setting("WHATSAPP_ACCESS_TOKEN", str, "sandbox-whatsapp-token", "Default WhatsApp Cloud access token (a workspace's channel config overrides it)."),
    Setting("WHATSAPP_PHONE_NUMBER_ID", str, "100000000000001", "Default WhatsApp Cloud phone-number id messages are sent from."),
    Setting("WHATSAPP_APP_SECRET", str, "", "App secret that signs the default number's WhatsApp Cloud webhooks (X-Hub-Signature-256). Empty: none are accepted for it. Local runs use the sandbox's."),
    Setting("WHATSAPP_VERIFY_TOKEN", str, "", "Token the WhatsApp webhook verification handshake must present. Empty: only workspaces' own tokens. Local runs use the sandbox's."),
    Setting("WHATSAPP_RATE_LIMIT_PER_SECOND", float, 80.0, "Messages per second per WhatsApp Cloud phone number (Meta's default is 80)."),
    Setting("WAHA_API_BASE", str, "", "Default WAHA gateway base URL. Empty: the sandbox's in local runs (no default in production)."),
    Setting("WAHA_API_KEY", str, "sandbox-waha-key", "Default WAHA X-Api-Key."),
    Setting("WAHA_SESSIONS", str, "default", "Comma-separated WAHA sessions of the default account; the first sends unless a message names another in `from`."),
    Setting("WAHA_WEBHOOK_SECRET", str, "", "HMAC key WAHA signs the default sessions' webhooks with (X-Webhook-Hmac, SHA-512). Empty: none are accepted for them. Local runs use the sandbox's."),
    Setting("WAHA_PACE_SECONDS", float, 3.0, "Seconds between two messages of one WAHA session (QR accounts that blast get banned)."),
    Setting("WAHA_PACE_JITTER_SECONDS", float, 2.0, "Up to this many random seconds added to each WAHA message's pace."),
    Setting("POSTROOM_LOG_LEVEL", str, "INFO", "Log level of every service."),
)


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str
    postroom_var_dir: str
    postroom_api_host: str
    postroom_api_port: int
    postroom_api_workers: int
    postroom_public_url: str
    postroom_sandbox_host: str
    postroom_sandbox_port: int
    postroom_sandbox_latency_ms: int
    postroom_sandbox_whatsapp_webhook_path: str
    postroom_metrics_host: str
    postroom_metrics_port_base: int
    postroom_secret_key: str
    postroom_env: str
    postroom_db_connect_timeout_seconds: float
    postroom_db_timeout_seconds: float
    postroom_api_db_timeout_seconds: float
    postroom_redis_timeout_seconds: float
    postroom_redis_max_connections: int
    postroom_max_request_bytes: int
    postroom_campaign_db_timeout_seconds: float
    postroom_max_campaign_bytes: int
    postroom_max_webhook_bytes: int
    postroom_max_json_depth: int
    postroom_idempotency_ttl_seconds: float
    postroom_idempotency_lease_seconds: float
    postroom_api_key_rate_per_second: float
    postroom_api_key_burst: int
    postroom_api_workspace_rate_per_second: float
    postroom_api_workspace_burst: int
    postroom_unknown_lookup_delay_seconds: float
    postroom_db_pool_size: int
    postroom_db_prepare: bool
    postroom_worker_threads: int
    postroom_sender_concurrency: int
    postroom_sender_greenlets: int
    postroom_sender_urgent_greenlets: int
    postroom_provider_timeout_seconds: float
    postroom_max_attempts: int
    postroom_retry_base_seconds: float
    postroom_retry_max_seconds: float
    postroom_stage_deadline_seconds: float
    postroom_max_redrives: int
    postroom_sending_timeout_seconds: float
    postroom_reconcile_interval_seconds: float
    postroom_broker_poll_ms: int
    postroom_handoff_linger_ms: float
    postroom_batch_size: int
    postroom_schedule_horizon_days: float
    postroom_webhook_allowed_networks: str
    postroom_webhook_timeout_seconds: float
    postroom_webhook_retry_schedule: str
    postroom_webhook_disable_after_hours: float
    postroom_webhook_concurrency: int
    postroom_webhook_endpoint_concurrency: int
    postroom_message_retention_days: float
    postroom_provider_event_retention_days: float
    postroom_webhook_retention_hours: float
    postroom_usage_retention_days: float
    postroom_ai_greenlets_premium: int
    postroom_ai_greenlets_pro: int
    postroom_ai_greenlets_basic: int
    postroom_ai_timeout_seconds: float
    postroom_ai_max_attempts: int
    postroom_ai_lease_seconds: float
    postroom_ai_allowed_networks: str
    postroom_widget_host: str
    postroom_widget_port: int
    postroom_widget_public_url: str
    postroom_widget_workers: int
    postroom_widget_max_chars: int
    postroom_widget_visitor_rate: float
    postroom_widget_stream_seconds: float
    postroom_widget_trusted_proxies: int
    twilio_account_sid: str
    twilio_auth_token: str
    twilio_from: str
    twilio_api_base: str
    twilio_rate_limit_per_second: float
    postroom_inbound_workspace: str
    postroom_sandbox_smtp_port: int
    smtp_host: str
    smtp_port: int
    smtp_security: str
    smtp_username: str
    smtp_password: str
    email_from: str
    smtp_rate_limit_per_second: float
    smtp_pool_size: int
    email_webhook_secret: str
    whatsapp_api_base: str
    whatsapp_api_version: str
    whatsapp_access_token: str
    whatsapp_phone_number_id: str
    whatsapp_app_secret: str
    whatsapp_verify_token: str
    whatsapp_rate_limit_per_second: float
    waha_api_base: str
    waha_api_key: str
    waha_sessions: str
    waha_webhook_secret: str
    waha_pace_seconds: float
    waha_pace_jitter_seconds: float
    postroom_log_level: str

    @property
    def development(self) -> bool:
        return self.postroom_env == "development"

    @property
    def webhook_retry_schedule(self) -> tuple[float, ...]:
        return tuple(float(x) for x in self.postroom_webhook_retry_schedule.split(",") if x.strip())

    @property
    def var_dir(self) -> Path:
        return Path(self.postroom_var_dir)

    @property
    def public_url(self) -> str:
        return (self.postroom_public_url or f"http://{self.postroom_api_host}:{self.postroom_api_port}").rstrip("/")

    @property
    def sandbox_url(self) -> str:
        return f"http://{self.postroom_sandbox_host}:{self.postroom_sandbox_port}"


DEVELOPMENT_SECRET_KEY = "dev-only-secret-change-me"
# The webhook secrets of the sandbox's default accounts: what local runs and the tests set (an
# empty setting accepts no webhook for the default account, so production never trusts these).
SANDBOX_WEBHOOK_SECRETS = {
    "EMAIL_WEBHOOK_SECRET": "whsec_c2FuZGJveC1lbWFpbC13ZWJob29rLXNlY3JldA==",
    "WHATSAPP_APP_SECRET": "sandbox-app-secret",
    "WHATSAPP_VERIFY_TOKEN": "sandbox-verify-token",
    "WAHA_WEBHOOK_SECRET": "sandbox-waha-hmac-key",
}


def require_production_secret(cfg: Settings | None = None) -> None:
    """Refuse to start outside development with the built-in secret key (credentials would be
    encrypted with a key everyone knows)."""
    cfg = cfg or settings
    if not cfg.development and cfg.postroom_secret_key == DEVELOPMENT_SECRET_KEY:
        raise SystemExit("POSTROOM_SECRET_KEY is the development default; set a long random value "
                         "(or POSTROOM_ENV=development for a local run)")


def _parse(setting: Setting, raw: str) -> object:
    if setting.kind is bool:
        if raw.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise ValueError(f"{setting.env}={raw!r} is not true or false")
        return raw.lower() in ("1", "true", "yes", "on")
    try:
        return setting.kind(raw)
    except ValueError as exc:
        raise ValueError(f"{setting.env}={raw!r} is not a valid {setting.kind.__name__}") from exc


def load(environ: dict[str, str] | None = None) -> Settings:
    """Read every setting from ``environ`` (default: the process environment)."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = env.get(setting.env)
        values[setting.env.lower()] = setting.default if raw in (None, "") else _parse(setting, raw)
    return Settings(**values)


assert [f.name for f in fields(Settings)] == [s.env.lower() for s in SETTINGS]

settings = load()


def markdown_table() -> str:
    """The README's configuration table, generated from SETTINGS (a test keeps them equal)."""
    rows = ["| variable | default | what it does |", "|---|---|---|"]
    for s in SETTINGS:
        default = "./var" if s.env == "POSTROOM_VAR_DIR" else s.default
        shown = "(empty)" if default == "" else f"`{default}`"
        rows.append(f"| `{s.env}` | {shown} | {s.help} |")
    return "\n".join(rows)
