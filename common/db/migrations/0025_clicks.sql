-- Click tracking: the links of outgoing content rewritten to short links (GET /r/{code}), and
-- the clicks on them. Processing inserts a batch's links in one statement when it renders the
-- batch; a click is one statement that records it and, the first time for its message, sets the
-- message's clicked_at (compare-and-set) and appends to its campaign's counters.
CREATE TABLE link (
    id            bigserial PRIMARY KEY,
    -- unguessable (12 random letters and digits, 68+ bits); looked up without a workspace, so it alone
    -- must not be enumerable
    code          text NOT NULL UNIQUE,
    workspace_id  bigint NOT NULL REFERENCES workspace (id) ON DELETE CASCADE,
    message_id    bigint NOT NULL REFERENCES message (id) ON DELETE CASCADE,
    url           text NOT NULL,          -- where the short link redirects: the link as written
    created_at    timestamptz NOT NULL DEFAULT now()
);
-- Retention deletes messages; their links (and clicks) go with them.
CREATE INDEX link_message ON link (message_id);

CREATE TABLE link_click (
    id            bigserial PRIMARY KEY,
    link_id       bigint NOT NULL REFERENCES link (id) ON DELETE CASCADE,
    workspace_id  bigint NOT NULL,
    at            timestamptz NOT NULL DEFAULT now(),
    user_agent    text,                   -- bounded by ingest
    ip_hash       text,                   -- keyed hash of the client address, never the address
    counted       boolean NOT NULL        -- this click was its message's first (set clicked_at)
);
CREATE INDEX link_click_link ON link_click (link_id);

-- The first click of a message; later clicks are only rows in link_click.
ALTER TABLE message ADD COLUMN clicked_at timestamptz;
