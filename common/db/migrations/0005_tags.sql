-- Tags become a JSON object of names to values ({"event_id": "41", "message_type": "speaker_alert"})
-- for cancel and reschedule by tag; the older list of strings is kept as a JSON array.
ALTER TABLE message ALTER COLUMN tags DROP DEFAULT;
ALTER TABLE message ALTER COLUMN tags TYPE jsonb USING to_jsonb(tags);
ALTER TABLE message ALTER COLUMN tags SET DEFAULT '[]'::jsonb;
-- Only messages not yet sending can be cancelled or moved: only they need finding by tag.
CREATE INDEX message_pending_tags ON message USING gin (tags jsonb_path_ops)
    WHERE status IN ('scheduled', 'accepted', 'queued', 'routed');

-- A workspace may declare tag names whose values identify a message (its natural key), such as
-- event_id, contractor_id and message_type: a second pending message with the same values is a
-- duplicate (409, or the existing one on request).
ALTER TABLE workspace ADD COLUMN unique_tags text[] NOT NULL DEFAULT '{}';
ALTER TABLE message ADD COLUMN natural_key text;
CREATE UNIQUE INDEX message_natural_key ON message (workspace_id, natural_key)
    WHERE natural_key IS NOT NULL AND status NOT IN ('cancelled', 'failed', 'suppressed', 'undelivered');
