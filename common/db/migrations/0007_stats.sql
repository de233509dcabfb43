-- GET /v1/stats counts what each stage finished in the last hour without reading older history.
-- Events are appended in time order, so a BRIN index on their time finds the last hour's pages
-- at almost no cost per insert (a btree here would be one more write on the busiest table).
CREATE INDEX message_event_at ON message_event USING brin (at) WITH (pages_per_range = 32, autosummarize = on);
-- Webhook deliveries finish out of creation order (retries run for hours): a small btree over
-- the finished ones.
CREATE INDEX webhook_delivery_finished ON webhook_delivery (finished_at) WHERE finished_at IS NOT NULL;
-- GET /v1/messages/upcoming pages through one workspace's scheduled messages by due time; the
-- scheduler's message_scheduled index is ordered by due time across every workspace.
CREATE INDEX message_scheduled_workspace ON message (workspace_id, due_at, id) WHERE status = 'scheduled';
