-- Compatibility routes (issue 12): the schema they need, all of it here.
--
-- workspace_alias: the identity words old clients send (S0/S2 `workspaceId`, S1 `x-user-id`),
-- registered as the workspace's own (PATCH /v1/workspace/settings `compat_identities`). A compat
-- route accepts an identity field only when it names the API key's workspace: its id, its name or
-- one of these. Aliases need not be unique across workspaces: the check is always "in the key's
-- workspace", never a lookup of another tenant.
CREATE TABLE workspace_alias (
    workspace_id  bigint NOT NULL REFERENCES workspace(id) ON DELETE CASCADE,
    alias         text NOT NULL,
    PRIMARY KEY (workspace_id, alias)
);

-- A contact's id in the caller's own system (S0 `contactId` that is not a postroom id).
ALTER TABLE contact ADD COLUMN external_id text;
CREATE UNIQUE INDEX contact_external_id ON contact (workspace_id, external_id) WHERE external_id IS NOT NULL;

-- A campaign's id in the caller's own system (S0 broadcast id, S1 campaignId; several postroom
-- campaigns may share one, newest first), and the sequence its recipients are enrolled in.
ALTER TABLE campaign ADD COLUMN external_id text,
                     ADD COLUMN sequence_id bigint REFERENCES sequence(id);
CREATE INDEX campaign_external_id ON campaign (workspace_id, external_id, id DESC) WHERE external_id IS NOT NULL;
