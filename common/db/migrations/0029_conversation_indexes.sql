-- A widget visitor found by its conversation: deleting a conversation (a workspace's erasure,
-- retention) cascades to its visitor, which without this index scans every visitor.
CREATE INDEX widget_visitor_conversation ON widget_visitor (conversation_id);
