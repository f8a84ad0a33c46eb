-- Named queries of wallet/topups.py.

-- name: webhook_id_seen
SELECT true FROM bank_webhook_ids WHERE partner_id = $1 AND webhook_id = $2;

-- name: citizen_of_wallet
SELECT id FROM citizens WHERE wallet_account_id = $1;

-- name: record_webhook_id
-- Two copies of one message racing each other: the second changes nothing.
INSERT INTO bank_webhook_ids (partner_id, webhook_id) VALUES ($1, $2)
ON CONFLICT DO NOTHING;

-- name: insert_topup
INSERT INTO topups (id, partner_id, bank_reference, citizen_id, wallet_account_id, amount)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT DO NOTHING;

-- name: topup_by_id
SELECT id, partner_id, bank_reference, citizen_id, wallet_account_id, amount, created_at
FROM topups
WHERE id = $1;

-- name: purge_webhook_ids
-- At most $2 rows per statement.
DELETE FROM bank_webhook_ids
WHERE (partner_id, webhook_id) IN (
    SELECT partner_id, webhook_id FROM bank_webhook_ids
    WHERE received_at < $1
    ORDER BY received_at
    LIMIT $2
);
