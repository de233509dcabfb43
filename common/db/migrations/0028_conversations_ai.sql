-- Issue 11: the AI stage, its knowledge base, human handoff and the web chat widget.
-- pg_trgm and btree_gin are trusted extensions: the database owner may create them (a managed
-- PostgreSQL without them fails here; see the README).
CREATE EXTENSION IF NOT EXISTS pg_trgm;      -- trusted extensions: the database owner may create them
CREATE EXTENSION IF NOT EXISTS btree_gin;    -- workspace_id inside the GIN indexes (tenancy-scoped search)

-- Conversations: who holds them, since when, and where the bot's context starts.
UPDATE conversation SET status = 'bot' WHERE status NOT IN ('bot','open','resolved');
ALTER TABLE conversation
  ADD CONSTRAINT conversation_status CHECK (status IN ('bot','open','resolved')),
  ADD COLUMN status_changed_at timestamptz NOT NULL DEFAULT now(),
  ADD COLUMN status_reason    text,                      -- api | agent_reply | inbound | keyword | low_confidence | model | malformed | quota | provider_error | stuck
  ADD COLUMN context_after_id bigint NOT NULL DEFAULT 0, -- context = messages with id > this (set to the max id at resolve)
  ADD COLUMN resolved_at      timestamptz,
  ADD COLUMN ai_lease_until   timestamptz,               -- one AI turn per conversation at a time
  ADD COLUMN ai_lease_token   bigint;
CREATE TABLE conversation_event (          -- history of status changes (GET …/events); the outbox carries the webhook
  id bigserial PRIMARY KEY, conversation_id bigint NOT NULL REFERENCES conversation(id) ON DELETE CASCADE,
  workspace_id bigint NOT NULL, status text NOT NULL, previous text NOT NULL, reason text, by text NOT NULL, -- api|agent|bot|inbound|reconciler
  message_id bigint, note text, at timestamptz NOT NULL DEFAULT now());  -- note: the API caller's, if any
CREATE INDEX conversation_event_conversation ON conversation_event (conversation_id, id);

-- Messages: who wrote an outbound one; which inbound ones the AI stage still owes a turn.
ALTER TABLE message ADD COLUMN author text;   -- NULL api/campaign | agent | bot (re-checked at the claim) | bot_handoff (handoff/fallback text: always sent)
ALTER TABLE message ADD COLUMN ai_lane text;  -- inbound waiting for the AI stage: premium|pro|basic; NULL: not for the bot
CREATE INDEX message_ai_waiting ON message (status_changed_at, id)
  WHERE direction = 'inbound' AND status = 'received' AND ai_lane IS NOT NULL;

-- Plan and quota are the workspace's (not per channel), written only by an admin key or the CLI.
ALTER TABLE workspace ADD COLUMN plan text NOT NULL DEFAULT 'basic' CHECK (plan IN ('basic','pro','premium')),
                      ADD COLUMN ai_monthly_quota integer CHECK (ai_monthly_quota >= 0);  -- NULL: unlimited

CREATE TABLE chatbot (
  workspace_id bigint NOT NULL REFERENCES workspace(id) ON DELETE CASCADE, channel text NOT NULL,
  enabled boolean NOT NULL DEFAULT true,
  provider text NOT NULL CHECK (provider IN ('openai','extractive')),
  base_url text, model text, credentials bytea,           -- Fernet seal of {"api_key": …} (common.crypto); never returned
  product_name text, guidelines text,
  handoff_message text NOT NULL, fallback_message text NOT NULL,
  handoff_keywords text[] NOT NULL DEFAULT '{human,agent,person,operator,representative}',
  temperature real NOT NULL DEFAULT 0.2, max_tokens integer NOT NULL DEFAULT 300, timeout_seconds real NOT NULL DEFAULT 30,
  language text NOT NULL DEFAULT 'en',                    -- ISO code -> regconfig in common.knowledge.REGCONFIG
  min_score real NOT NULL DEFAULT 0.30, min_margin real NOT NULL DEFAULT 0.05,
  settings jsonb NOT NULL DEFAULT '{}',                   -- json_mode (default true), score weights
  created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (workspace_id, channel));

CREATE TABLE knowledge_item (
  id bigserial PRIMARY KEY, workspace_id bigint NOT NULL REFERENCES workspace(id) ON DELETE CASCADE,
  title text NOT NULL, body text NOT NULL, source_url text, tags text[] NOT NULL DEFAULT '{}',
  language regconfig NOT NULL DEFAULT 'english',
  search tsvector GENERATED ALWAYS AS
    (setweight(to_tsvector(language, title), 'A') || setweight(to_tsvector(language, body), 'B')) STORED,
  created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX knowledge_item_search     ON knowledge_item USING gin (workspace_id, search);
CREATE INDEX knowledge_item_title_trgm ON knowledge_item USING gin (workspace_id, title gin_trgm_ops);
CREATE UNIQUE INDEX knowledge_item_title_key ON knowledge_item (workspace_id, lower(title));  -- import upserts by title
CREATE INDEX knowledge_item_page ON knowledge_item (workspace_id, id);
-- Later, embeddings: ALTER TABLE knowledge_item ADD COLUMN embedding vector(N) + HNSW index; retrieve() merges.

CREATE TABLE usage_log (
  id bigserial PRIMARY KEY, workspace_id bigint NOT NULL, at timestamptz NOT NULL DEFAULT now(),
  kind text NOT NULL CHECK (kind IN ('inbound','outbound','ai_call')),
  channel text, conversation_id bigint, message_id bigint,
  model text, prompt_tokens integer, completion_tokens integer, total_tokens integer,
  tokens_estimated boolean NOT NULL DEFAULT false, latency_ms integer,
  outcome text);                                          -- ai_call: answered | handoff | error | superseded
CREATE INDEX usage_log_workspace_at ON usage_log (workspace_id, at);
CREATE INDEX usage_log_at ON usage_log (at);  -- retention deletes the oldest rows of every workspace (services.scheduler.retention)

CREATE TABLE ai_quota_month (workspace_id bigint NOT NULL REFERENCES workspace(id) ON DELETE CASCADE, month date NOT NULL,
  reserved integer NOT NULL DEFAULT 0, used integer NOT NULL DEFAULT 0, PRIMARY KEY (workspace_id, month));
CREATE TABLE ai_reservation (id bigserial PRIMARY KEY, workspace_id bigint NOT NULL, month date NOT NULL,
  conversation_id bigint NOT NULL, reply_message_id bigint, created_at timestamptz NOT NULL DEFAULT now());
-- every row is open; settling deletes it (used+1 when its reply is sent, else reserved-1)

CREATE TABLE widget_visitor (
  id bigserial PRIMARY KEY, workspace_id bigint NOT NULL REFERENCES workspace(id) ON DELETE CASCADE,
  inbox_key text NOT NULL, token_hash bytea NOT NULL UNIQUE,    -- sha256 of the visitor token; the token is never stored
  conversation_id bigint REFERENCES conversation(id) ON DELETE CASCADE,
  created_at timestamptz NOT NULL DEFAULT now(), last_seen_at timestamptz NOT NULL DEFAULT now());
