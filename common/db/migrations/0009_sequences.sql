-- Sequences: steps anchored to an enrolment or to its named times, each becoming a scheduled
-- message when a recipient is enrolled; moving an anchor moves the pending steps.
CREATE TABLE sequence (
    id            bigserial PRIMARY KEY,
    workspace_id  bigint NOT NULL REFERENCES workspace(id) ON DELETE CASCADE,
    name          text NOT NULL,
    steps         jsonb NOT NULL,            -- the validated steps, in order
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace_id, name)
);

CREATE TABLE enrolment (
    id            bigserial PRIMARY KEY,
    sequence_id   bigint NOT NULL REFERENCES sequence(id) ON DELETE CASCADE,
    workspace_id  bigint NOT NULL,
    channel       text NOT NULL,
    to_addr       text NOT NULL,
    anchors       jsonb NOT NULL DEFAULT '{}',   -- name -> RFC 3339 time
    variables     jsonb NOT NULL DEFAULT '{}',
    timezone      text NOT NULL,
    status        text NOT NULL DEFAULT 'active',  -- active | unenrolled
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX enrolment_sequence ON enrolment (sequence_id);

-- Each step's message; its idempotency key is enrol:<id>:<step>, so a step is made once.
ALTER TABLE message ADD COLUMN enrolment_id bigint;
ALTER TABLE message ADD COLUMN step text;
CREATE INDEX message_enrolment ON message (enrolment_id) WHERE enrolment_id IS NOT NULL;
