-- Contacts: the people a workspace sends to, with their own time zone, locale, quiet hours
-- ("21:00-08:00", or "off" for none) and free attributes, found by any of their addresses.
CREATE TABLE contact (
    id            bigserial PRIMARY KEY,
    workspace_id  bigint NOT NULL REFERENCES workspace(id) ON DELETE CASCADE,
    name          text,
    timezone      text,                      -- IANA zone; null: the number's, else the workspace's
    locale        text,                      -- BCP 47, e.g. en-GB
    quiet_hours   text,                      -- null: the workspace's
    attributes    jsonb NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    -- An address can only point at a contact of its own workspace (the key below); this index
    -- also serves a workspace's contacts page by page in id order.
    UNIQUE (workspace_id, id)
);

-- One row per address; an address belongs to at most one contact of a workspace per channel.
-- The primary key is the look-up routing and upserts make: (workspace, channel, address).
CREATE TABLE contact_address (
    workspace_id  bigint NOT NULL,
    channel       text NOT NULL,             -- the channel messages to it are sent on: sms, http
    address       text NOT NULL,             -- as messages store to_addr (E.164 for sms)
    contact_id    bigint NOT NULL,
    PRIMARY KEY (workspace_id, channel, address),
    FOREIGN KEY (workspace_id, contact_id) REFERENCES contact (workspace_id, id) ON DELETE CASCADE
);
CREATE INDEX contact_address_contact ON contact_address (contact_id);
