-- Consent: the workspace's answer to HELP/INFO keywords and whether its urgent messages may reach an
-- address that opted out (common.consent); the suppression list read newest first, a page at a time.

ALTER TABLE workspace ADD COLUMN help_text text;                       -- null: HELP is not answered
ALTER TABLE workspace ADD COLUMN urgent_bypasses_opt_out boolean NOT NULL DEFAULT false;

-- GET /v1/suppressions pages by (created_at, channel, address) descending (keyset).
CREATE INDEX suppression_recent ON suppression (workspace_id, created_at DESC, channel DESC, address DESC);
