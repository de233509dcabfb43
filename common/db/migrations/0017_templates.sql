-- Templates: a workspace's named, reusable message content with {{ variables }}. A message sent
-- with a template stores only its template_id and variables at accept; processing renders the
-- body (and an email's subject and HTML) in batches before routing. template_id has no foreign
-- key: deleting a template must not touch messages already stored (one not yet rendered fails).
CREATE TABLE template (
    id           bigserial PRIMARY KEY,
    workspace_id bigint NOT NULL REFERENCES workspace (id) ON DELETE CASCADE,
    name         text NOT NULL,
    channel      text NOT NULL,
    subject      text,
    text         text,
    html         text,
    -- whatsapp_cloud: the approved template and which variable fills each body parameter, in order:
    -- {"name": "order_update", "language": "en_US", "body_parameters": ["first_name", "order_id"]}
    whatsapp     jsonb,
    variables    text[] NOT NULL,      -- every variable the template needs
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace_id, name)
);

ALTER TABLE message ADD COLUMN template_id bigint, ADD COLUMN variables jsonb;
