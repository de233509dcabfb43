-- Quiet hours: a workspace's window (local "21:00-08:00"), its time zone, and whether urgent
-- messages wait too; a message may bring its own window ("off" for none).
ALTER TABLE workspace ADD COLUMN quiet_hours text;
ALTER TABLE workspace ADD COLUMN timezone text NOT NULL DEFAULT 'UTC';
ALTER TABLE workspace ADD COLUMN quiet_hours_urgent boolean NOT NULL DEFAULT false;
ALTER TABLE message ADD COLUMN quiet_hours text;
