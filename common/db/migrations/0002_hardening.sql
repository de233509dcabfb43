-- Hardening: receipts are matched to the account that sent the message, unknown outcomes are
-- looked up at the provider, and a workspace may choose to resend where no lookup exists.

-- The provider account (Twilio AccountSid) a message was sent through: a receipt applies only
-- when that same account signed it, so one tenant's account cannot move another tenant's message.
ALTER TABLE message ADD COLUMN provider_account text;
ALTER TABLE provider_event ADD COLUMN provider_account text;

-- When a send's outcome is unknown and the provider offers no lookup: fail it as
-- outcome_unknown (false, the default) or send it again (true).
ALTER TABLE workspace ADD COLUMN resend_unknown boolean NOT NULL DEFAULT false;

-- Sends whose outcome is unknown wait in 'sending' for their lookup.
ALTER TABLE message ADD COLUMN lookup_at timestamptz;  -- a send with an unknown outcome is looked up then
CREATE INDEX message_sending ON message (status_changed_at) WHERE status = 'sending';
