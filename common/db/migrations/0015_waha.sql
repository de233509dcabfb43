-- WhatsApp QR (WAHA): the messages a session held while it was not WORKING, found when its
-- webhook says WORKING again without reading every waiting message. A release reads those sent
-- through the session's account, and a workspace's not yet claimed (no account) that are due
-- within the session's pause.
CREATE INDEX message_routed_account ON message (provider_account, workspace_id, due_at)
    WHERE status = 'routed' AND channel = 'whatsapp_qr';
