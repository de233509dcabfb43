-- What a message with an API idempotency key was asked to be: a hash of its request's fields,
-- compared when the key comes again. The row's own columns cannot serve: processing rewrites the
-- body (templates, short links) and a fallback moves channel and address.
ALTER TABLE message ADD COLUMN request_hash text;
