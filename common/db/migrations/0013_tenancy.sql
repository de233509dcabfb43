-- One provider account belongs to one workspace: a webhook that names an account (a Twilio
-- AccountSid, a WhatsApp phone-number id, a WAHA gateway and session) is checked against that
-- workspace's secret only, and can move only that workspace's messages.
DROP INDEX channel_config_account;
CREATE UNIQUE INDEX channel_config_account ON channel_config (provider, account_ref);

-- A provider id is unique within a workspace: an outbound id is the provider's own (unique
-- anyway), but an inbound one may be chosen by the sender (an email's Message-ID) and reach two
-- workspaces. Look-ups by (provider, provider_message_id) still use the index's first columns.
DROP INDEX message_provider_id;
CREATE UNIQUE INDEX message_provider_id ON message (provider, provider_message_id, workspace_id)
    WHERE provider_message_id IS NOT NULL;

-- Conversations are listed newest first by id, a workspace at a time.
CREATE INDEX conversation_workspace_id ON conversation (workspace_id, id);
