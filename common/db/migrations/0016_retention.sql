-- Retention: finished messages (with their history) and raw provider events are removed in
-- batches once older than their retention. Both tables are appended in time order, so BRIN
-- indexes on their creation time find the old pages at almost no cost per insert.
CREATE INDEX message_created_brin ON message USING brin (created_at) WITH (pages_per_range = 32, autosummarize = on);
CREATE INDEX provider_event_received_brin ON provider_event USING brin (received_at) WITH (pages_per_range = 32, autosummarize = on);
