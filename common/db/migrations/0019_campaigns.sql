-- Campaigns: one message content sent to many recipients, on the bulk lane by default.
-- A campaign's recipients are staged in campaign_recipient until it starts; starting moves them,
-- set-wise, into message rows (fan-out), each carrying campaign_id.
CREATE TABLE campaign (
    id                    bigserial PRIMARY KEY,
    workspace_id          bigint NOT NULL REFERENCES workspace (id) ON DELETE CASCADE,
    name                  text NOT NULL,
    -- draft → scheduled → running ⇄ paused → completed; cancelled from any of the first four
    status                text NOT NULL DEFAULT 'draft',
    -- what every recipient is sent: the message's fields (channel, routes' channels, from, body,
    -- content, encoding, template_id, tags, quiet_hours), checked when the campaign was created
    message               jsonb NOT NULL,
    priority              text NOT NULL DEFAULT 'bulk',
    rate_limit_per_second double precision,      -- null: the provider account's limit only
    send_at               timestamptz,
    total                 integer NOT NULL DEFAULT 0,   -- recipients added
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    started_at            timestamptz,
    completed_at          timestamptz,
    UNIQUE (workspace_id, id)
);
-- The scheduler looks at the campaigns that may need it: due to start, or running to completion.
CREATE INDEX campaign_active ON campaign (id) WHERE status IN ('scheduled', 'running');

CREATE TABLE campaign_recipient (
    campaign_id  bigint NOT NULL REFERENCES campaign (id) ON DELETE CASCADE,
    position     integer NOT NULL,
    to_addr      text NOT NULL,          -- the address on the route's first channel
    routes       jsonb,                  -- each channel with its address, for a fallback route
    variables    jsonb,
    PRIMARY KEY (campaign_id, position)
);

ALTER TABLE message ADD COLUMN campaign_id bigint;
-- A campaign's waiting messages, for resume and cancel (entries for sent messages are not made).
CREATE INDEX message_campaign_waiting ON message (campaign_id)
    WHERE campaign_id IS NOT NULL AND status IN ('accepted', 'scheduled', 'queued', 'routed');

-- Live counters: every statement that inserts or changes campaign messages appends, per campaign
-- and status, how many messages entered (+) or left (-) it, in the same transaction. The sums are
-- the counts by status, so they always add up; the positive entries of the last minute are the
-- send rate. The scheduler folds old entries into one row per status. Retention deletes messages
-- without touching these rows: counters outlive their messages.
CREATE TABLE campaign_tally (
    campaign_id  bigint NOT NULL,
    status       text NOT NULL,
    n            integer NOT NULL,
    at           timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX campaign_tally_campaign ON campaign_tally (campaign_id, at);

CREATE FUNCTION campaign_tally_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO campaign_tally (campaign_id, status, n)
    SELECT campaign_id, status, count(*) FROM new_rows WHERE campaign_id IS NOT NULL GROUP BY 1, 2;
    RETURN NULL;
END $$;

CREATE FUNCTION campaign_tally_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO campaign_tally (campaign_id, status, n)
    SELECT campaign_id, status, sum(d) FROM (
        SELECT campaign_id, status, -1 AS d FROM old_rows WHERE campaign_id IS NOT NULL
        UNION ALL
        SELECT campaign_id, status, 1 FROM new_rows WHERE campaign_id IS NOT NULL
    ) moved
    GROUP BY 1, 2 HAVING sum(d) <> 0;
    RETURN NULL;
END $$;

CREATE TRIGGER message_campaign_tally_insert AFTER INSERT ON message
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION campaign_tally_insert();
CREATE TRIGGER message_campaign_tally_update AFTER UPDATE ON message
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION campaign_tally_update();
