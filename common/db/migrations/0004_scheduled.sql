-- Scheduled sends: a message due later waits as 'scheduled' with its due time; the scheduler
-- hands it to processing when due (and wakes for the nearest due time, not on a coarse poll).
CREATE INDEX message_scheduled ON message (due_at) WHERE status = 'scheduled';
