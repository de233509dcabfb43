-- Every channel: what a message carries beyond its text, its fallback route, inbound
-- conversations, the suppression list, channel settings, and QR-gateway session states.

-- Channel-specific content: subject, html, reply_to, attachments (email); media (MMS, WhatsApp);
-- template and fallback_template (WhatsApp Cloud); context (a WhatsApp reply);
-- messaging_service_sid (SMS); for inbound messages the sender's name, profile and media.
ALTER TABLE message ADD COLUMN content jsonb NOT NULL DEFAULT '{}';
-- Fallback: the ordered channels to try, [{"channel": ..., "to": ...}, ...]; route_step is the
-- one being tried. Null: the message's own channel only.
ALTER TABLE message ADD COLUMN routes jsonb;
ALTER TABLE message ADD COLUMN route_step integer NOT NULL DEFAULT 0;
ALTER TABLE message ADD COLUMN encoding text;                 -- SMS: GSM-7 or UCS-2
ALTER TABLE message ADD COLUMN conversation_id bigint;

-- One conversation per (workspace, channel, the customer's address). last_inbound_at opens the
-- WhatsApp 24-hour customer-service window.
CREATE TABLE conversation (
    id               bigserial PRIMARY KEY,
    workspace_id     bigint NOT NULL REFERENCES workspace(id) ON DELETE CASCADE,
    channel          text NOT NULL,
    address          text NOT NULL,             -- the customer's: E.164, email, WhatsApp id
    contact_id       bigint,
    name             text,                      -- as the provider reported the sender
    profile          jsonb NOT NULL DEFAULT '{}',
    status           text NOT NULL DEFAULT 'bot',
    last_inbound_at  timestamptz,
    last_message_at  timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace_id, channel, address)
);
CREATE INDEX conversation_recent ON conversation (workspace_id, last_message_at DESC, id DESC);
CREATE INDEX message_conversation ON message (conversation_id, id) WHERE conversation_id IS NOT NULL;

-- Addresses that must not be sent to on a channel (opt-out, bounce, provider 21610, ...).
CREATE TABLE suppression (
    workspace_id  bigint NOT NULL REFERENCES workspace(id) ON DELETE CASCADE,
    channel       text NOT NULL,
    address       text NOT NULL,
    reason        text NOT NULL,             -- opt_out | bounce | complaint | manual | provider_21610
    source        text,                      -- what said so: a provider code, a webhook, the API
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, channel, address)
);

-- Settings that are not secret (API base, version, sessions, pace); the secrets stay in credentials.
ALTER TABLE channel_config ADD COLUMN settings jsonb NOT NULL DEFAULT '{}';
ALTER TABLE channel_config ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();

-- A QR gateway's sessions as its webhooks last reported them (WORKING, SCAN_QR_CODE, ...).
CREATE TABLE channel_session (
    provider      text NOT NULL,
    name          text NOT NULL,
    workspace_id  bigint REFERENCES workspace(id) ON DELETE CASCADE,
    status        text NOT NULL,
    me            jsonb,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, name)
);
