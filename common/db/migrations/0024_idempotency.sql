-- Idempotency for every POST of the API: a request carrying an Idempotency-Key claims the key
-- (state 'running', committed at once), runs, and stores its answer (state 'done') so that the
-- same request repeated gets the same answer. fingerprint is the SHA-256 of method, path and body:
-- the same key with another request is refused. A claim still 'running' past lease_until belonged
-- to a process that died; it may be taken over. Rows older than POSTROOM_IDEMPOTENCY_TTL_SECONDS
-- count as absent and are deleted by the scheduler.
CREATE TABLE idempotent_request (
    workspace_id  bigint NOT NULL REFERENCES workspace(id) ON DELETE CASCADE,
    key           text NOT NULL,
    fingerprint   text NOT NULL,
    state         text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'done')),
    claim         uuid NOT NULL,                -- who holds a running claim: only it may store or release
    lease_until   timestamptz NOT NULL,
    status        integer,                      -- the stored answer, once done
    body          bytea,
    headers       jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, key)
);
-- The scheduler's purge of expired keys, oldest first.
CREATE INDEX idempotent_request_created ON idempotent_request (created_at);
