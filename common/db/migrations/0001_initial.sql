-- The walking skeleton's schema: tenants and keys, provider accounts, messages with their
-- history, every provider webhook received, and the event outbox.

CREATE TABLE workspace (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_key (
    id            bigserial PRIMARY KEY,
    workspace_id  bigint NOT NULL REFERENCES workspace(id) ON DELETE CASCADE,
    prefix        text NOT NULL UNIQUE,          -- shown in listings; the lookup key
    key_hash      text NOT NULL,                 -- sha256 of the whole key; the key itself is never stored
    scopes        text[] NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz
);

CREATE TABLE channel_config (
    id                  bigserial PRIMARY KEY,
    workspace_id        bigint NOT NULL REFERENCES workspace(id) ON DELETE CASCADE,
    channel             text NOT NULL,
    provider            text NOT NULL,
    account_ref         text NOT NULL,           -- public account id (Twilio AccountSid), for webhook lookup
    credentials         bytea NOT NULL,          -- Fernet-encrypted JSON
    sender_identity     text NOT NULL,           -- From number, address or phone-number id
    rate_limit_per_second double precision NOT NULL DEFAULT 0,
    created_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace_id, channel)
);
CREATE INDEX channel_config_account ON channel_config (provider, account_ref);

CREATE TABLE message (
    id                  bigserial PRIMARY KEY,
    workspace_id        bigint NOT NULL REFERENCES workspace(id) ON DELETE CASCADE,
    direction           text NOT NULL DEFAULT 'outbound',
    channel             text NOT NULL,
    to_addr             text NOT NULL,
    from_addr           text,
    body                text NOT NULL,
    status              text NOT NULL,
    priority            text NOT NULL DEFAULT 'urgent',
    idempotency_key     text,
    tags                text[] NOT NULL DEFAULT '{}',
    due_at              timestamptz,            -- not before this time (scheduled send, retry backoff)
    status_changed_at   timestamptz NOT NULL DEFAULT now(),
    attempts            integer NOT NULL DEFAULT 0,   -- provider calls made
    throttles           integer NOT NULL DEFAULT 0,   -- of which throttled (do not spend the retry budget)
    redrives            integer NOT NULL DEFAULT 0,   -- times the reconciler re-enqueued it
    provider            text,
    provider_message_id text,
    last_error          text,
    error_code          text,
    segments            integer,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    sent_at             timestamptz,
    delivered_at        timestamptz
);
CREATE UNIQUE INDEX message_idempotency ON message (workspace_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE UNIQUE INDEX message_provider_id ON message (provider, provider_message_id) WHERE provider_message_id IS NOT NULL;
-- The reconciler scans only messages that wait on a stage; finished ones drop out of this index.
CREATE INDEX message_waiting ON message (status_changed_at)
    WHERE status IN ('accepted', 'queued', 'routed', 'sending');
-- Retries and throttled sends waiting for their time, for the scheduler to promote when due.
CREATE INDEX message_parked ON message (due_at) WHERE status = 'routed' AND due_at IS NOT NULL;

CREATE TABLE message_event (
    id          bigserial PRIMARY KEY,
    message_id  bigint NOT NULL REFERENCES message(id) ON DELETE CASCADE,
    status      text NOT NULL,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    detail      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX message_event_message ON message_event (message_id, id);

CREATE TABLE provider_event (
    id                  bigserial PRIMARY KEY,
    provider            text NOT NULL,
    kind                text NOT NULL,            -- status | inbound
    provider_message_id text,
    message_id          bigint,                   -- set once matched to a message
    status              text,                     -- our status the receipt reports
    detail              jsonb NOT NULL DEFAULT '{}',  -- error code/message taken from the payload
    payload             jsonb NOT NULL,           -- exactly what the provider sent
    signature_valid     boolean NOT NULL,
    applied_at          timestamptz,              -- handled: applied, or nothing to apply
    received_at         timestamptz NOT NULL DEFAULT now()
);
-- Receipts that arrived before their message's provider id was recorded wait here.
CREATE INDEX provider_event_pending ON provider_event (provider, provider_message_id)
    WHERE applied_at IS NULL AND signature_valid AND status IS NOT NULL;

CREATE TABLE outbox (
    id            bigserial PRIMARY KEY,
    workspace_id  bigint NOT NULL,
    event_type    text NOT NULL,
    message_id    bigint,
    payload       jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    dispatched_at timestamptz
);
CREATE INDEX outbox_pending ON outbox (id) WHERE dispatched_at IS NULL;
