-- A natural key (the workspace's unique tags) holds only while its message is pending: once it is
-- sent (or ended) a new message with the same tags is allowed, as the API promises. 'sending' stays
-- in: a send that is retried goes back to 'routed'.
DROP INDEX message_natural_key;
CREATE UNIQUE INDEX message_natural_key ON message (workspace_id, natural_key)
    WHERE natural_key IS NOT NULL AND status IN ('accepted', 'scheduled', 'queued', 'routed', 'sending');
