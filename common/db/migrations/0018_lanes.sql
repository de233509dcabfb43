-- Three lanes: single API sends default to normal; a webhook delivery's rank is its lane's
-- (0 urgent, 1 normal, 2 bulk), so the bulk deliveries already waiting keep going last.
ALTER TABLE message ALTER COLUMN priority SET DEFAULT 'normal';
UPDATE webhook_delivery SET rank = 2 WHERE rank = 1;
ALTER TABLE webhook_delivery ALTER COLUMN rank SET DEFAULT 2;
