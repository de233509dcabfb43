-- The bulk path's compact history: when a message was last routed and last claimed for sending.
-- A campaign message's plain routed and sending steps write no message_event row; the API shows
-- them from these columns (common.lifecycle.COMPACT_STEPS).
ALTER TABLE message ADD COLUMN routed_at timestamptz, ADD COLUMN claimed_at timestamptz;
