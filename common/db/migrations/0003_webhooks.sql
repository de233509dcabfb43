-- Outbound webhooks: the endpoints a workspace subscribes, one delivery row per (event, endpoint)
-- with its own due time (retries hours away live here, never in the broker), and every attempt.

CREATE TABLE webhook_endpoint (
    id                    bigserial PRIMARY KEY,
    workspace_id          bigint NOT NULL REFERENCES workspace(id) ON DELETE CASCADE,
    url                   text NOT NULL,
    description           text NOT NULL DEFAULT '',
    event_types           text[] NOT NULL,          -- wanted event types, or '*'
    headers               jsonb NOT NULL DEFAULT '{}',  -- custom headers sent with every delivery
    rate_limit_per_second double precision NOT NULL DEFAULT 0,  -- 0: no limit
    enabled               boolean NOT NULL DEFAULT true,
    disabled_reason       text,
    secret                bytea NOT NULL,           -- Fernet-sealed whsec_ secret
    previous_secret       bytea,                    -- still signs until previous_secret_until
    previous_secret_until timestamptz,
    failing_since         timestamptz,              -- first failure since the last success
    paused_until          timestamptz,              -- throttled (429/502/504 with Retry-After)
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);
-- Writing an event asks whether any enabled endpoint of the workspace wants it.
CREATE INDEX webhook_endpoint_subscribed ON webhook_endpoint (workspace_id) WHERE enabled;

CREATE TABLE webhook_delivery (
    id               bigserial PRIMARY KEY,
    endpoint_id      bigint NOT NULL REFERENCES webhook_endpoint(id) ON DELETE CASCADE,
    workspace_id     bigint NOT NULL,
    event_key        text NOT NULL,                 -- the webhook-id header: the same across retries and replays
    event_type       text NOT NULL,
    body             text NOT NULL,                 -- exactly the bytes signed and sent
    rank             smallint NOT NULL DEFAULT 1,   -- 0 urgent, 1 bulk: urgent events go first
    status           text NOT NULL DEFAULT 'pending',  -- pending | delivering | succeeded | failed
    attempts         integer NOT NULL DEFAULT 0,    -- requests made (X-Webhook-Attempt)
    failures         integer NOT NULL DEFAULT 0,    -- failed attempts: the place in the retry schedule
    due_at           timestamptz NOT NULL DEFAULT now(),
    claimed_at       timestamptz,
    last_status_code integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz
);
-- A worker takes an endpoint's due deliveries, urgent first, oldest first.
CREATE INDEX webhook_delivery_pending ON webhook_delivery (endpoint_id, rank, id) WHERE status = 'pending';
-- The scheduler finds endpoints with due work, and deliveries whose worker died.
CREATE INDEX webhook_delivery_due ON webhook_delivery (due_at) WHERE status = 'pending';
CREATE INDEX webhook_delivery_claimed ON webhook_delivery (claimed_at) WHERE status = 'delivering';
CREATE INDEX webhook_delivery_endpoint ON webhook_delivery (endpoint_id, created_at);
CREATE INDEX webhook_delivery_created ON webhook_delivery (created_at);

CREATE TABLE webhook_attempt (
    id              bigserial PRIMARY KEY,
    delivery_id     bigint NOT NULL REFERENCES webhook_delivery(id) ON DELETE CASCADE,
    endpoint_id     bigint NOT NULL,
    attempt         integer NOT NULL,
    at              timestamptz NOT NULL DEFAULT now(),
    status_code     integer,
    latency_ms      double precision,
    response        text,                           -- the first KiB of the answer
    error           text,
    next_attempt_at timestamptz
);
CREATE INDEX webhook_attempt_endpoint ON webhook_attempt (endpoint_id, id);
CREATE INDEX webhook_attempt_delivery ON webhook_attempt (delivery_id);

-- Events of urgent messages are delivered ahead of a campaign's. The fan-out deletes the events
-- it has turned into deliveries, so the outbox holds only what waits for it.
ALTER TABLE outbox ADD COLUMN lane text NOT NULL DEFAULT 'urgent';

-- A committed outbox insert wakes the webhooks stage (LISTEN postroom_outbox) instead of a poll.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM inserted) THEN
        PERFORM pg_notify('postroom_outbox', '');
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
