-- Contacts' tags, and indexes for listing a workspace's contacts filtered by tag or attribute.
-- The listing walks contacts in id order (contact's UNIQUE (workspace_id, id)); a filter that
-- matches few contacts is answered from these indexes instead.
ALTER TABLE contact ADD COLUMN tags text[] NOT NULL DEFAULT '{}';   -- distinct, in the order given
CREATE INDEX contact_tags ON contact USING gin (tags);               -- tags @> ARRAY['vip', ...]
CREATE INDEX contact_attributes ON contact USING gin (attributes jsonb_path_ops);  -- attributes @> '{"plan": "pro"}'
