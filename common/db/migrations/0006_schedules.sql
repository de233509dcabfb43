-- Recurring schedules: a cron expression read in an IANA time zone, and the message each
-- occurrence sends (the validated fields of POST /v1/messages). next_run_at is the next occurrence
-- not yet materialised (NULL once the schedule has finished: past its end, or max_count sent). A
-- few seconds before it, the scheduler takes the row (FOR UPDATE SKIP LOCKED), inserts the
-- occurrence as a 'scheduled' message whose idempotency key is the occurrence's dedupe key
-- (sched:<id>:<UTC minute>), and moves next_run_at on, in one transaction.
CREATE TABLE schedule (
    id           bigserial PRIMARY KEY,
    workspace_id bigint NOT NULL REFERENCES workspace(id) ON DELETE CASCADE,
    cron         text NOT NULL,
    timezone     text NOT NULL,
    message      jsonb NOT NULL,
    start_at     timestamptz,                       -- no occurrence before it
    end_at       timestamptz,                       -- none at or after it
    max_count    integer CHECK (max_count > 0),     -- at most this many occurrences sent
    sent_count   integer NOT NULL DEFAULT 0,        -- occurrences materialised as messages
    paused       boolean NOT NULL DEFAULT false,
    next_run_at  timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
-- The scheduler's look-up of schedules due soon (and of the nearest one, to sleep until then).
CREATE INDEX schedule_due ON schedule (next_run_at) WHERE NOT paused AND next_run_at IS NOT NULL;
-- A workspace's schedules, a page at a time.
CREATE INDEX schedule_workspace ON schedule (workspace_id, id);
