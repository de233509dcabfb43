-- Receipts in batches: ingest keeps a signed status callback as a pending provider_event (one
-- INSERT) and a receipts worker applies many at a time. scope: the workspaces whose credentials
-- vouched for the callback (null: the deployment's own account, any workspace), so a receipt
-- applied later is held to the same rule as one applied at once.
ALTER TABLE provider_event ADD COLUMN scope bigint[];
